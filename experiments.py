"""Experiments as data: every tuning round and sweep is a plan file, runs/<folder>/plan.json, and this
one runner trains what a plan names and its folder lacks (resumable: done runs are kept).

A plan holds:
  title       what the experiment asks
  device      "cpu", "cuda" or "any": where it is meant to run (`make tune` runs the "cpu" plans)
  data        {"holdout": n}: train on all but the last n training images and evaluate on those n
              (a validation split; the test set is never touched), or {"n_train": n}: train on the
              first n training images and evaluate on the whole test set (a reduced budget)
  epochs      training epochs of every run (a variant may change it; above 20 only with max_epochs)
  baseline    changes to lib.RECIPE shared by every run (the recipe as the experiment began)
  variants    name -> one change on top of the baseline (a recipe key, or batch_size / groups)
  parts       [{"seeds": [...], "runs": [[norm, variant], ...]}, ...], trained seed by seed, part by part
  bn_batch_stats  optional: also evaluate BN with the statistics of test batches of its training size
  max_epochs  optional: allow runs longer than the exercise's 20 epochs (a measurement outside its budget)
  precision   optional: "bf16" or "fp32" for every run, so that one plan's runs stay comparable on CPUs
              that differ (a plan pinned to bf16 is refused on a CPU without bf16 arithmetic, where it
              would be emulated and about ten times slower)

A new round is a new plan file:  python experiments.py run runs/<folder>
"""
from __future__ import annotations

import argparse
import math
import shutil
import statistics
import sys
from pathlib import Path

import torch

import lib

PLAN_KEYS = {"title", "device", "data", "epochs", "baseline", "variants", "parts"}
OPTIONAL_KEYS = {"note", "precision", "max_epochs", "bn_batch_stats"}
RUN_KEYS = {"batch_size", "groups", "epochs"}             # a variant may change these besides the recipe
TARGETS = {"bn": 85.0, "gn": 83.0, "ln": 82.0}            # engineering goals: final test accuracy (%), mean of seeds


def plan_dirs() -> list[Path]:
    return sorted(p.parent for p in (lib.ROOT / "runs").glob("*/plan.json"))


def load_plan(folder: str | Path) -> dict:
    """A plan, checked: known keys, every run names a norm and a variant, every variant a known setting."""
    folder = lib.run_dir(folder)
    plan = lib.read_json(folder / "plan.json")
    where = folder / "plan.json"
    if not PLAN_KEYS <= set(plan):
        raise lib.NormbookError(f"{where} lacks {', '.join(sorted(PLAN_KEYS - set(plan)))}")
    lib.choose(f"device in {where}", plan["device"], ("cpu", "cuda", "any"))
    if not isinstance(plan["data"], dict) or set(plan["data"]) not in ({"holdout"}, {"n_train"}):
        raise lib.NormbookError(f"{where}: data must be {{\"holdout\": n}} or {{\"n_train\": n}}, not {plan['data']!r}")
    for name, change in {"baseline": plan["baseline"], **plan["variants"]}.items():
        unknown = set(change) - set(lib.RECIPE) - (RUN_KEYS if name != "baseline" else set()) \
            if isinstance(change, dict) else {repr(change)}
        if unknown:
            raise lib.NormbookError(f"{where}: {name!r} changes unknown settings {sorted(unknown)}")
    for part in plan["parts"]:
        if not (isinstance(part, dict) and set(part) == {"seeds", "runs"}
                and all(isinstance(r, list) and len(r) == 2 for r in part["runs"])):
            raise lib.NormbookError(f"{where}: each part is {{\"seeds\": [...], \"runs\": [[norm, variant], ...]}}, "
                                    f"not {part!r}")
        for norm, name in part["runs"]:
            lib.choose(f"norm in {where}", norm, lib.NORMS)
            lib.choose(f"variant in {where}", name, plan["variants"])
    unknown = set(plan) - PLAN_KEYS - OPTIONAL_KEYS
    if unknown:
        raise lib.NormbookError(f"{where}: unknown keys {sorted(unknown)}: a plan has {', '.join(sorted(PLAN_KEYS | OPTIONAL_KEYS))}")
    files = {}
    for name in plan["variants"]:
        if not isinstance(name, str) or not name or "/" in name or "\\" in name or name.startswith("."):
            raise lib.NormbookError(f"{where}: variant name {name!r} must be a plain name (no path separators)")
        if files.setdefault(name.replace(" ", "_"), name) != name:
            raise lib.NormbookError(f"{where}: variants {files[name.replace(' ', '_')]!r} and {name!r} would share one file")
    n_train = plan["data"].get("n_train") or lib.FULL_TRAIN - plan["data"]["holdout"]
    runs = [(norm, name, seed) for part in plan["parts"] for seed in part["seeds"] for norm, name in part["runs"]]
    if len(set(runs)) < len(runs):
        raise lib.NormbookError(f"{where} names a run twice: {sorted({r for r in runs if runs.count(r) > 1})[0]}")
    for norm, name, seed in runs:                  # every run's settings, checked before any data is loaded
        try:
            lib.check_params(run_spec(plan, norm, name, seed), n_train=n_train)
        except lib.NormbookError as e:
            raise lib.NormbookError(f"{where}: {norm} {name!r}: {e}") from None
    return plan


def run_path(folder: Path, norm: str, name: str, seed: int) -> Path:
    return folder / f"{norm}-{name.replace(' ', '_')}-s{seed}.json"


def settings(plan: dict, name: str) -> dict:
    """A variant's settings, lib.RunSpec's fields: recipe, batch_size, groups, epochs, max_epochs."""
    change = dict(plan["variants"][name])
    return dict(batch_size=change.pop("batch_size", lib.MAIN_BATCH), groups=change.pop("groups", None),
                epochs=change.pop("epochs", plan["epochs"]), max_epochs=plan.get("max_epochs", lib.MAX_EPOCHS),
                recipe={**lib.RECIPE, **plan["baseline"], **change})


def run_spec(plan: dict, norm: str, name: str, seed: int) -> lib.RunSpec:
    return lib.RunSpec(norm, seed=seed, precision=plan.get("precision", "auto"), **settings(plan, name))


def planned(folder: str | Path) -> list[tuple[Path, str, str, int]]:
    """Every run of a plan, in training order: (artifact path, norm, variant, seed)."""
    folder = lib.run_dir(folder)
    plan = load_plan(folder)
    return [(run_path(folder, norm, name, seed), norm, name, seed)
            for part in plan["parts"] for seed in part["seeds"] for norm, name in part["runs"]]


def missing(folder: str | Path) -> list[tuple[Path, str, str, int]]:
    return [r for r in planned(folder) if not r[0].exists()]


def check_machine(folder: Path, plan: dict, device: str | None = None) -> None:
    """Refuse a machine that cannot run the plan as planned."""
    if plan["device"] == "cuda" and (device or lib.pick_device().type) != "cuda":
        raise lib.NormbookError(f"{folder.name} runs on a CUDA GPU; none is visible to PyTorch")
    precision = plan.get("precision", "auto")
    lib.choose(f"precision in {folder / 'plan.json'}", precision, lib.PRECISIONS)
    if precision == "bf16" and not lib.bf16_supported(torch.device(device) if device else lib.pick_device()):
        raise lib.NormbookError(f"{folder.name} is pinned to bf16, which this machine lacks (it would be emulated, "
                                f"about ten times slower); its runs are left for a machine with bf16")


def plan_data(plan: dict, data: lib.Cifar10) -> lib.Cifar10:
    """The plan's data: a validation split of the training images, or the first n of them and the test set."""
    split = plan["data"]
    return data.holdout(split["holdout"]) if "holdout" in split else data.subset(split["n_train"], n_test=lib.FULL_TEST)


def train_run(folder: Path, plan: dict, norm: str, name: str, seed: int, data: lib.Cifar10,
              device: str | None = None) -> dict:
    """Train one run of a plan on plan_data's data; return its record, as the plan's folder stores it."""
    check_machine(folder, plan, device)
    spec, split = run_spec(plan, norm, name, seed), plan["data"]
    model, m, predictions = lib.train(spec, data, device=device, progress=False)
    if "holdout" in split:
        m.update(tuning=name, change=plan["variants"][name], tuning_baseline=plan["baseline"],
                 evaluated_on="validation", final_val_acc=m["final_test_acc"],
                 final_val_acc_tta=m["final_test_acc_tta"])
    else:
        m.update(sweep=folder.name.removeprefix("sweep-"), groups=spec.groups if norm == "gn" else None,
                 budget=dict(n_train=split["n_train"], epochs=spec.epochs))
    if plan.get("bn_batch_stats") and norm == "bn":   # the same model, with the statistics of test batches
        probs = lib.predict(model, data.test_x, m["mean"], m["std"], m["precision"],
                            batch_size=spec.batch_size, batch_stats=True)
        m["final_test_acc_batch_stats"] = lib.accuracy(probs, data.test_y)
    return m


def diverged_record(plan: dict, norm: str, name: str, seed: int, error: Exception) -> dict:
    """The record of a run whose loss became non-finite: how it was trained and what happened."""
    args = settings(plan, name)
    return dict(norm=norm, seed=seed, batch_size=args["batch_size"], epochs=args["epochs"], recipe=args["recipe"],
                precision=plan.get("precision", "auto"), diverged=str(error))


def land(folder: Path, plan: dict, path: Path, norm: str, name: str, seed: int, m: dict | None = None,
         error: Exception | None = None) -> int:
    """What one run gave, written or said: its record; a diverged run's record (a result too, not trained
    again); or a one-line failure, after which the other runs go on. Returns 1 if a finished run was written."""
    if isinstance(error, lib.TrainingDiverged):
        lib.write_json(diverged_record(plan, norm, name, seed, error), path)
        print(f"{folder.name}: {path.name} diverged: {error}", flush=True)
    elif error is not None:
        print(f"{folder.name}: {path.name} failed: {type(error).__name__}: {str(error).splitlines()[0]}", flush=True)
    else:
        lib.write_json(m, path)
        print(f"{folder.name}: {path.name}: {m['final_test_acc']:.2f} % in {m['seconds'] / 60:.1f} min", flush=True)
    return int(error is None)


def run_plan(folder: str | Path, data: lib.Cifar10 | None = None, data_dir: str | Path = "data",
             device: str | None = None, seeds: list[int] | None = None) -> int:
    """Train the runs of a plan that its folder lacks (only those of `seeds`, if given), one after another;
    each is written atomically when done, a failed one is reported in one line and the others go on.
    Returns how many were written."""
    folder = lib.run_dir(folder)
    plan, todo = load_plan(folder), [r for r in missing(folder) if seeds is None or r[3] in seeds]
    if not todo:
        return 0
    check_machine(folder, plan, device)
    data = plan_data(plan, data or lib.load_cifar10(data_dir))
    written = 0
    for path, norm, name, seed in todo:
        try:
            written += land(folder, plan, path, norm, name, seed, train_run(folder, plan, norm, name, seed, data, device))
        except (lib.TrainingDiverged, lib.NormbookError) as e:
            land(folder, plan, path, norm, name, seed, error=e)
    return written


def _train_on_worker(folder: Path, plan: dict, norm: str, name: str, seed: int, data: lib.Cifar10,
                     threads: int, device: str | None) -> dict:
    """A Ray task: one run, with as many threads as the CPUs it reserved (so its numbers equal the serial
    runner's with that many threads)."""
    torch.set_num_threads(threads)
    return train_run(folder, plan, norm, name, seed, data, device)


def run_plan_ray(folder: str | Path, address: str | None = None, cpus_per_run: int = 1, gpus_per_run: float = 0.0,
                 data: lib.Cifar10 | None = None, data_dir: str | Path = "data", seeds: list[int] | None = None) -> int:
    """Train what a plan lacks as Ray tasks, one per run, each reserving cpus_per_run CPUs and gpus_per_run
    of a GPU (0.25 packs four runs on one), on a local Ray cluster (address None) or the one at `address`.
    The data travel through Ray's object store and the results back to this process, which writes each
    atomically into the plan's folder as it returns; a failed run is reported in one line and the others
    go on. Returns how many were written."""
    import ray
    folder = lib.run_dir(folder)
    plan, todo = load_plan(folder), [r for r in missing(folder) if seeds is None or r[3] in seeds]
    if not todo:
        return 0
    lib.check_int("cpus_per_run", cpus_per_run, 1)
    data = plan_data(plan, data or lib.load_cifar10(data_dir))
    started = not ray.is_initialized()
    if started:
        # On a cluster the workers get this repository's code (not its data or runs) from the driver.
        env = None if address is None else {"working_dir": str(lib.ROOT), "excludes": [
            "/data/", "/_build/", "/.git/", "/runs/", "/book/", "*.pt"]}
        ray.init(address=address, include_dashboard=False, runtime_env=env, log_to_driver=False)
    try:
        return _run_tasks(folder, plan, todo, data, cpus_per_run, gpus_per_run)
    finally:
        if started:
            ray.shutdown()


def _run_tasks(folder: Path, plan: dict, todo: list, data: lib.Cifar10, cpus_per_run: int, gpus_per_run: float) -> int:
    import ray
    device = "cuda" if gpus_per_run > 0 else None
    task = ray.remote(num_cpus=cpus_per_run, num_gpus=gpus_per_run, max_retries=0)(_train_on_worker)
    data_ref = ray.put(data)
    pending = {task.remote(folder, plan, norm, name, seed, data_ref, cpus_per_run, device): (path, norm, name, seed)
               for path, norm, name, seed in todo}
    written = 0
    while pending:
        (done,), _ = ray.wait(list(pending), num_returns=1)
        path, norm, name, seed = pending.pop(done)
        try:
            written += land(folder, plan, path, norm, name, seed, ray.get(done))
        except ray.exceptions.RayTaskError as e:
            land(folder, plan, path, norm, name, seed, error=getattr(e, "cause", None) or e)
    return written


def load_results(folder: str | Path) -> list[dict]:
    """Every finished run of a plan (not those that diverged: diverged_runs), with `variant`, its name in the
    plan; tuning runs get `delta`: validation accuracy minus that of the
    baseline run ("recipe") of the same norm and seed (None where that baseline has not run yet)."""
    runs = [dict(lib.read_json(path), variant=name) for path, _, name, _ in planned(folder) if path.exists()]
    runs = [r for r in runs if "diverged" not in r]
    for t in runs:                     # a run copied from another plan (adopt_runs) takes its name in this one
        if "tuning" in t:
            t["tuning"] = t["variant"]
    base = {(t["norm"], t["seed"]): t["final_val_acc"] for t in runs if t.get("tuning") == "recipe"}
    for t in runs:
        if "tuning" in t:
            b = base.get((t["norm"], t["seed"]))
            t["delta"] = None if b is None else t["final_val_acc"] - b
    return runs


def diverged_runs(folder: str | Path) -> list[dict]:
    """The records of a plan's runs whose loss became non-finite, with `variant`."""
    runs = [dict(lib.read_json(path), variant=name) for path, _, name, _ in planned(folder) if path.exists()]
    return [r for r in runs if "diverged" in r]


def noise_threshold(folder: str | Path = "runs/tune") -> tuple[float, float]:
    """(sigma, threshold): the seed-to-seed standard deviation of one baseline run on the validation
    split, pooled over norms, and two standard deviations of a difference of two single runs."""
    base = {}
    for t in load_results(folder):
        if t.get("tuning") == "recipe":
            base.setdefault(t["norm"], []).append(t["final_val_acc"])
    repeated = [statistics.variance(v) for v in base.values() if len(v) > 1]
    if not repeated:
        raise lib.NormbookError(f"{folder}: no norm has its baseline at two or more seeds, so no noise estimate")
    sigma = math.sqrt(statistics.mean(repeated))
    return sigma, 2 * math.sqrt(2) * sigma


# =============================================================================================
# The lever stages: screen, confirm, decide
# =============================================================================================
# runs/levers-screen/ is a plan file like any other: one run per norm and lever at seed 0, on the
# validation split. The confirmation's plan is written from the screen's results (confirm_plan) as soon
# as the screen is complete, so that `make tune` goes on by itself; the decision is computed by
# report.py from both.

SCREEN, CONFIRM = "levers-screen", "levers-confirm"
MUON = "muon lr 0.05"
COMBINED = "all that passed the screen"


def screen_gains(runs: list[dict]) -> dict[str, dict[str, float]]:
    """lever -> norm -> validation accuracy minus the recipe's (same norm and seed), from a plan's runs."""
    gains = {}
    for r in runs:
        if r.get("tuning") not in (None, "recipe") and r.get("delta") is not None:
            gains.setdefault(r["tuning"], {})[r["norm"]] = r["delta"]
    return gains


def passed_screen(gains: dict[str, dict[str, float]], bar: float) -> list[str]:
    """The levers whose gain reaches `bar` for at least one norm, the largest best gain first."""
    return sorted((lever for lever, g in gains.items() if max(g.values()) >= bar), key=lambda l: -max(gains[l].values()))


def confirm_plan(screen: dict, gains: dict[str, dict[str, float]], bar: float) -> dict:
    """Stage 2 from the screen: every lever that passed (passed_screen) at seeds 0-2 for every norm (seed 0
    is the screen's run), Muon's peak LR bracketed at half and twice the screen's if Muon passed, and the
    combination of everything that passed at seeds 0-2, each paired with the recipe at the same seeds."""
    passed = passed_screen(gains, bar)
    combined, settings_seen = {}, set()
    for lever in passed:                           # the better value of a setting wins (passed is sorted)
        change = screen["variants"][lever]
        if not settings_seen & set(change):
            combined.update(change)
            settings_seen |= set(change)
    variants = {"recipe": {}, **{lever: screen["variants"][lever] for lever in passed}}
    if MUON in passed:
        lr = screen["variants"][MUON]["muon_lr"]
        variants.update({f"muon lr {lr / 2:g}": dict(screen["variants"][MUON], muon_lr=lr / 2),
                         f"muon lr {lr * 2:g}": dict(screen["variants"][MUON], muon_lr=lr * 2)})
    if len(passed) > 1:
        variants[COMBINED] = combined
    note = (f"Stage 2 of 3, written by experiments.confirm_plan from the screen: the levers whose seed-0 gain reached "
            f"{bar:.2f} points (one standard deviation of a difference of two single runs) for at least one norm: "
            + (", ".join(passed) if passed else "none") + ". Runs that other plans already hold, trained the same way on "
            "the same machine (the recipe's, the screen's seed-0 runs), are copied in, not trained again.")
    # What decides the recipe (the combination, or the one lever that passed) trains first, then each lever
    # that passed on its own, then Muon's LR bracket.
    bracketed = [v for v in variants if v.startswith("muon lr ") and v != MUON]
    deciding = ["recipe", COMBINED if COMBINED in variants else passed[0]] if passed else ["recipe"]
    levers = [v for v in variants if v not in deciding and v not in bracketed]
    parts = [[[n, v] for v in names for n in lib.NORMS] for names in (deciding, levers, bracketed)]
    return {"title": "The levers that passed the screen, confirmed at three seeds, and their combination",
            "note": note, "device": screen["device"], "precision": screen["precision"], "data": screen["data"],
            "epochs": screen["epochs"], "baseline": screen["baseline"], "variants": variants,
            "parts": [{"seeds": [0, 1, 2], "runs": runs} for runs in parts if runs]}


def trained_alike(record: dict, plan: dict, norm: str, name: str, seed: int, here: dict) -> bool:
    """Whether a run record is the run that a plan names, trained where `here` (trained_here) says: same norm,
    seed, run settings, group count, full recipe, and the same device, precision, threads, PyTorch and data
    (other kernels or data give other numbers)."""
    args, split = settings(plan, name), plan["data"]
    n_train = split.get("n_train") or lib.FULL_TRAIN - split["holdout"]
    return ("diverged" not in record and (record["norm"], record["seed"]) == (norm, seed)
            and all(record.get(k) == x for k, x in here.items())
            and (record["epochs"], record["batch_size"], record["n_train"]) == (args["epochs"], args["batch_size"], n_train)
            and (norm != "gn" or (record.get("groups") or lib.GN_GROUPS) == (args["groups"] or lib.GN_GROUPS))
            and (norm != "bn" or not plan.get("bn_batch_stats") or "final_test_acc_batch_stats" in record)
            and record.get("evaluated_on") == ("validation" if "holdout" in split else None)
            and lib.recorded_recipe(record) == args["recipe"])


def trained_here(plan: dict, data: lib.Cifar10) -> dict:
    """What a run of the plan trained here by the serial runner records of where it ran: device, precision
    (resolved), threads, PyTorch version and data."""
    device = torch.device("cuda") if plan["device"] == "cuda" else lib.pick_device()
    return dict(device=lib.device_name(device), precision=lib.trains_in(plan.get("precision", "auto"), device),
                threads=torch.get_num_threads(), torch=torch.__version__, data=plan_data(plan, data).source)


def adopt_runs(folder: Path, sources: list[Path], data: lib.Cifar10) -> int:
    """Copy into a plan's folder the runs it lacks that a source folder holds, trained alike here on `data`
    (under any variant name: trained_alike compares every setting); returns how many."""
    plan, copied = load_plan(folder), 0
    here = trained_here(plan, data)
    for path, norm, name, seed in missing(folder):
        for source in sources:
            for candidate in source.glob(f"{norm}-*-s{seed}.json"):
                record = lib.read_json(candidate)
                if trained_alike(record, plan, norm, name, seed, here):
                    shutil.copyfile(candidate, path)           # the record as it was written, byte for byte
                    copied += 1
                    break
            if path.exists():
                break
    return copied


def write_next_stage() -> Path | None:
    """Once the screen is complete and the confirmation has no plan yet: write it and return its folder (None
    otherwise); the runner copies in the runs that the screen and the baselines hold already."""
    screen_dir, confirm_dir = lib.ROOT / "runs" / SCREEN, lib.ROOT / "runs" / CONFIRM
    if not (screen_dir / "plan.json").exists() or (confirm_dir / "plan.json").exists() or missing(screen_dir):
        return None
    sigma, _ = noise_threshold()
    plan = confirm_plan(load_plan(screen_dir), screen_gains(load_results(screen_dir)), math.sqrt(2) * sigma)
    confirm_dir.mkdir(exist_ok=True)
    lib.write_json(plan, confirm_dir / "plan.json")
    print(f"{CONFIRM}: plan written from the screen ({len(plan['variants']) - 1} variants)", flush=True)
    return confirm_dir


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("run", "device", "status"), help="run: the plans in FOLDERS; device: every "
                    "plan meant for DEVICE; status: what each plan still lacks")
    ap.add_argument("targets", nargs="*", help="plan folders (run) or one of cpu / cuda / any (device)")
    ap.add_argument("--data", default="data", help="CIFAR-10 folder, as for lib.load_cifar10")
    ap.add_argument("--seeds", type=int, nargs="*", help="run: only the runs of these seeds (default: all)")
    ap.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS", help="run every run as a Ray task: on a "
                    "local Ray cluster (no ADDRESS, or 'local') or on the cluster at ADDRESS (e.g. 10.0.0.5:6379)")
    ap.add_argument("--cpus-per-run", type=int, default=1, help="with --ray: CPUs (and threads) each run reserves")
    ap.add_argument("--gpus-per-run", type=float, default=0.0, help="with --ray: GPUs each run reserves (0.25: four per GPU)")
    args = ap.parse_args(argv)
    try:
        run_command(args)
    except (lib.NormbookError, OSError) as e:            # OSError: a full disk, a read-only folder
        sys.exit(f"experiments.py: {e}")


def run_command(args) -> None:
    if args.what == "status":
        for folder in plan_dirs():
            print(f"{folder.name}: {len(planned(folder)) - len(missing(folder))} of {len(planned(folder))} runs done")
        return
    if args.what == "device":
        for target in args.targets:
            lib.choose("device", target, ("cpu", "cuda", "any"))
    if args.seeds is not None and args.what != "run":
        raise lib.NormbookError("--seeds goes with `run` only")
    folders = ([lib.run_dir(f) for f in args.targets] if args.what == "run" else
               [f for f in plan_dirs() if load_plan(f)["device"] in args.targets])
    for folder in folders:                        # every plan checked before any data is loaded
        load_plan(folder)
    data = None
    staged = args.what == "device" and "cpu" in args.targets      # the lever stages go on by themselves
    if staged and (stage := write_next_stage()):
        folders.append(stage)
    left_for_others = []                     # plans this machine cannot train as planned: said, and the rest go on
    while folders:
        folder = folders.pop(0)
        if missing(folder) and not args.ray:                     # Ray's workers may be other machines
            if [r for r in missing(folder) if args.seeds is None or r[3] in args.seeds]:
                try:
                    check_machine(folder, load_plan(folder))
                except lib.NormbookError as e:
                    print(f"experiments.py: {e}", file=sys.stderr, flush=True)
                    left_for_others.append(folder.name)
                    continue
            data = data or lib.load_cifar10(args.data)
            if copied := adopt_runs(folder, [f for f in plan_dirs() if f != folder], data):
                print(f"{folder.name}: {copied} run{'s' * (copied != 1)} copied in from other plans, trained alike",
                      flush=True)
        if [r for r in missing(folder) if args.seeds is None or r[3] in args.seeds]:
            data = data or lib.load_cifar10(args.data)
            if args.ray:
                run_plan_ray(folder, None if args.ray == "local" else args.ray, args.cpus_per_run, args.gpus_per_run,
                             data=data, seeds=args.seeds)
            else:
                run_plan(folder, data=data, device="cuda" if load_plan(folder)["device"] == "cuda" else None,
                         seeds=args.seeds)
        if staged and (stage := write_next_stage()):
            folders.append(stage)
    if left_for_others:                                      # the others have trained; the exit status says so
        raise lib.NormbookError(f"not trained here: {', '.join(left_for_others)}")


if __name__ == "__main__":
    main()
