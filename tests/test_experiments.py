"""experiments.py: plans are valid data, the runner trains exactly what a plan's folder lacks."""
import json
import re

import pytest

import experiments
import lib


@pytest.mark.parametrize("folder", experiments.plan_dirs(), ids=lambda p: p.name)
def test_every_plan_is_valid_and_every_model_in_it_is_under_budget(folder):
    plan = experiments.load_plan(folder)
    for name in plan["variants"]:
        args = experiments.settings(plan, name)
        lib.check_params(lib.RunSpec("gn" if args["groups"] else "bn", **args))
        lib.build_model("gn", args["groups"], args["recipe"])       # raises when over the budget
    assert experiments.planned(folder)


def test_every_committed_run_is_one_its_plan_names_so_the_runner_reuses_it():
    assert {f.name for f in experiments.plan_dirs()} >= {"tune", "tune-gpu", "tune-gpu-2", "tune-cpu-3",
                                                         "batch-size", "group-count", "weight-std"}
    for folder in experiments.plan_dirs():
        planned = {path for path, *_ in experiments.planned(folder)}
        assert set(folder.glob("*-s*.json")) <= planned, folder.name
        for path in planned & set(folder.glob("*.json")):        # and it was trained as the plan says
            run, (_, norm, name, seed) = lib.read_json(path), next(p for p in experiments.planned(folder) if p[0] == path)
            args = experiments.settings(experiments.load_plan(folder), name)
            assert (run["norm"], run["seed"], run["batch_size"], run["epochs"]) == \
                (norm, seed, args["batch_size"], args["epochs"]), path.name
            assert lib.recorded_recipe(run) == args["recipe"], path.name
            plan = experiments.load_plan(folder)
            assert plan.get("precision", "auto") in ("auto", run["precision"]), path.name
            if "diverged" not in run:                # data split, groups, every setting (so a copy is a true one)
                where = {k: run.get(k) for k in ("device", "precision", "threads", "torch", "data")}
                assert experiments.trained_alike(run, plan, norm, name, seed, where), path.name


def write_plan(folder, **changes):
    plan = dict(title="t", device="cpu", data={"holdout": 50}, epochs=1, baseline={"shortcuts": False},
                variants={"recipe": {}, "batch 64": {"batch_size": 64}, "no smoothing": {"label_smoothing": 0.0}},
                parts=[{"seeds": [0], "runs": [["bn", "recipe"], ["bn", "batch 64"], ["gn", "no smoothing"]]},
                       {"seeds": [1], "runs": [["bn", "recipe"]]}])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "plan.json").write_text(json.dumps({**plan, **changes}))
    return folder


def test_the_runner_trains_exactly_the_missing_runs_and_never_the_test_set(tiny_data, tmp_path, monkeypatch):
    folder = write_plan(tmp_path / "round")
    no_test_set = lib.Cifar10(tiny_data.train_x, tiny_data.train_y, None, None, "train only")  # any use would fail
    lib.write_json(dict(norm="bn", seed=0, tuning="recipe", final_val_acc=50.0), folder / "bn-recipe-s0.json")
    trained = []
    real_train = lib.train
    monkeypatch.setattr(lib, "train", lambda spec, *a, **kw: trained.append(spec) or real_train(spec, *a, **kw))
    assert experiments.run_plan(folder, data=no_test_set) == 3
    assert [(s.norm, s.seed, s.batch_size) for s in trained] == [("bn", 0, 64), ("gn", 0, 128), ("bn", 1, 128)]
    assert trained[1].recipe == {**lib.RECIPE, "shortcuts": False, "label_smoothing": 0.0}
    runs = {(r["norm"], r["tuning"], r["seed"]): r for r in experiments.load_results(folder)}
    assert runs["bn", "batch 64", 0]["delta"] == runs["bn", "batch 64", 0]["final_val_acc"] - 50.0
    assert runs["gn", "no smoothing", 0]["delta"] is None                 # its baseline has not run
    assert all(r["n_test"] == 50 and r["evaluated_on"] == "validation" for k, r in runs.items() if k[2] or k[1] != "recipe")
    stamp = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    assert experiments.run_plan(folder, data=no_test_set) == 0                # resumable: nothing left
    assert stamp == {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


def test_the_runner_copies_a_run_that_another_plan_trained_alike_instead_of_training_it(tiny_data, tmp_path, monkeypatch,
                                                                                        capsys):
    monkeypatch.setattr(lib, "ROOT", tmp_path)
    one_run = [{"seeds": [0], "runs": [["bn", "recipe"]]}]
    source = write_plan(tmp_path / "runs" / "earlier", parts=one_run)
    target = write_plan(tmp_path / "runs" / "later", variants={"recipe": {}, "again": {}}, parts=[{"seeds": [0], "runs": [["bn", "again"]]}])
    plan = experiments.load_plan(target)
    lib.write_json(dict(norm="bn", seed=0, epochs=1, batch_size=128, n_train=lib.FULL_TRAIN - 50, evaluated_on="validation",
                        recipe=experiments.settings(plan, "again")["recipe"], tuning="recipe", final_val_acc=50.0,
                        **experiments.trained_here(plan, tiny_data)), source / "bn-recipe-s0.json")
    monkeypatch.setattr(lib, "load_cifar10", lambda *a, **kw: tiny_data)
    monkeypatch.setattr(lib, "train", lambda *a, **kw: pytest.fail("nothing is left to train"))
    experiments.main(["run", "runs/later"])
    assert (target / "bn-again-s0.json").read_bytes() == (source / "bn-recipe-s0.json").read_bytes()
    assert "later: 1 run copied in from other plans, trained alike" in capsys.readouterr().out


@pytest.mark.parametrize("how", ["ray", "cuda plan without a GPU"])
def test_the_runner_copies_nothing_where_the_runs_would_train_elsewhere(tiny_data, tmp_path, monkeypatch, how):
    import torch
    if how != "ray" and torch.cuda.is_available():
        pytest.skip("a GPU is here")
    monkeypatch.setattr(lib, "ROOT", tmp_path)
    source = write_plan(tmp_path / "runs" / "earlier", parts=[{"seeds": [0], "runs": [["bn", "recipe"]]}])
    target = write_plan(tmp_path / "runs" / "later", parts=[{"seeds": [0], "runs": [["bn", "recipe"]]}],
                        **({} if how == "ray" else {"device": "cuda"}))
    plan = experiments.load_plan(source)                                   # a run this CPU trained
    lib.write_json(dict(norm="bn", seed=0, epochs=1, batch_size=128, n_train=lib.FULL_TRAIN - 50, evaluated_on="validation",
                        recipe=experiments.settings(plan, "recipe")["recipe"], tuning="recipe", final_val_acc=50.0,
                        **experiments.trained_here(plan, tiny_data)), source / "bn-recipe-s0.json")
    if how == "ray":                                       # alike to a run here; Ray's workers may be other machines
        assert experiments.adopt_runs(target, [source], tiny_data) == 1
        (target / "bn-recipe-s0.json").unlink()
    monkeypatch.setattr(lib, "load_cifar10", lambda *a, **kw: tiny_data)
    handed_on = []
    monkeypatch.setattr(experiments, "run_plan_ray", lambda folder, *a, **kw: handed_on.append(folder.name))
    monkeypatch.setattr(experiments, "run_plan", lambda folder, **kw: handed_on.append(folder.name))
    if how == "ray":
        experiments.main(["run", "runs/later", "--ray"])
        assert handed_on == ["later"] and not (target / "bn-recipe-s0.json").exists()
    else:                                                  # refused, named in the exit status: nothing copied
        with pytest.raises(SystemExit, match="not trained here: later"):
            experiments.main(["run", "runs/later"])
        assert handed_on == [] and not (target / "bn-recipe-s0.json").exists()


def test_a_plan_this_machine_cannot_train_is_named_and_the_next_one_still_trains(tiny_data, tmp_path, monkeypatch,
                                                                                  capsys):
    monkeypatch.setattr(lib, "ROOT", tmp_path)
    one_run = [{"seeds": [0], "runs": [["bn", "recipe"]]}]
    write_plan(tmp_path / "runs" / "pinned", parts=[{"seeds": [0, 1], "runs": [["bn", "recipe"]]}], precision="bf16")
    write_plan(tmp_path / "runs" / "any", parts=one_run, precision="fp32")
    monkeypatch.setattr(lib, "bf16_supported", lambda device: False)
    monkeypatch.setattr(lib, "load_cifar10", lambda *a, **kw: tiny_data)
    trained = []
    monkeypatch.setattr(experiments, "run_plan", lambda folder, **kw: trained.append(folder.name))
    with pytest.raises(SystemExit, match="not trained here: pinned$"):
        experiments.main(["run", "runs/pinned", "runs/any"])
    assert trained == ["any"]
    assert "pinned is pinned to bf16, which this machine lacks" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="not trained here: pinned$"):
        experiments.main(["device", "cpu"])                 # every CPU plan: the one it can train, then the exit
    assert trained == ["any", "any"]
    (tmp_path / "runs" / "pinned" / "bn-recipe-s0.json").write_text("{}")
    experiments.main(["run", "runs/pinned", "--seeds", "0"])    # only seed 1 is left, not asked for: no refusal


def test_a_variant_may_run_longer_only_where_its_plan_allows(tiny_data, tmp_path):
    folder = write_plan(tmp_path / "ceiling", data={"n_train": 40}, variants={"25 epochs": {"epochs": 25}},
                        parts=[{"seeds": [0], "runs": [["ln", "25 epochs"]]}])
    with pytest.raises(lib.NormbookError, match="epochs=25 is invalid"):
        experiments.run_plan(folder, data=tiny_data)
    plan = json.loads((folder / "plan.json").read_text())
    (folder / "plan.json").write_text(json.dumps(dict(plan, max_epochs=25, variants={"25 epochs": {"epochs": 2, "batch_size": 10}})))
    experiments.run_plan(folder, data=tiny_data)                     # (2 epochs here, to stay quick)
    assert lib.read_json(folder / "ln-25_epochs-s0.json")["epochs"] == 2


def test_a_sweep_plan_evaluates_on_the_test_set_and_bn_with_batch_statistics(tiny_data, tmp_path):
    folder = write_plan(tmp_path / "sweep-x", data={"n_train": 40}, bn_batch_stats=True, baseline={},
                        variants={"b10-gdefault": {"batch_size": 10}, "b20-g2": {"batch_size": 20, "groups": 2}},
                        parts=[{"seeds": [0], "runs": [["bn", "b10-gdefault"], ["gn", "b20-g2"]]}])
    experiments.run_plan(folder, data=tiny_data)
    bn, gn = (lib.read_json(folder / f) for f in ("bn-b10-gdefault-s0.json", "gn-b20-g2-s0.json"))
    assert (bn["n_train"], bn["n_test"], bn["sweep"]) == (40, 100, "x") and 0 <= bn["final_test_acc_batch_stats"] <= 100
    assert gn["groups"] == 2 and "final_test_acc_batch_stats" not in gn


@pytest.mark.parametrize("change, words", [
    (dict(device="tpu"), "unknown device"),
    (dict(data={"everything": 1}), "data must be"),
    (dict(variants={"recipe": {}, "odd": {"momentun": 0.8}}), "unknown settings ['momentun']"),
    (dict(parts=[{"seeds": [0], "runs": [["bn", "missing"]]}]), "unknown variant"),
    (dict(parts=[{"seeds": [0], "runs": [["in", "recipe"]]}]), "unknown norm"),
    (dict(precison="bf16"), "unknown keys ['precison']"),
    (dict(variants={"recipe": {}, "../../outside": {}}, parts=[{"seeds": [0], "runs": [["bn", "recipe"]]}]), "must be a plain name"),
    (dict(variants={"recipe": {}, "a b": {}, "a_b": {}}, parts=[{"seeds": [0], "runs": [["bn", "recipe"]]}]), "variants 'a b' and 'a_b' would share one file"),
    (dict(parts=[{"seeds": [0, 0], "runs": [["bn", "recipe"]]}]), "names a run twice: ('bn', 'recipe', 0)"),
    (dict(variants={"recipe": {"batch_size": 10 ** 6}}, parts=[{"seeds": [0], "runs": [["bn", "recipe"]]}]), "bn 'recipe': batch_size=1000000 is invalid"),
    (dict(variants={"recipe": {"groups": "C/x"}}, parts=[{"seeds": [0], "runs": [["gn", "recipe"]]}]), "groups='C/x'"),
    (dict(parts=[{"seeds": [-1], "runs": [["bn", "recipe"]]}]), "seed=-1 is invalid"),
    (dict(precision="fp16"), "unknown precision 'fp16'"),
])
def test_a_bad_plan_is_refused_naming_the_file(tmp_path, change, words):
    folder = write_plan(tmp_path / "bad", **change)
    with pytest.raises(lib.NormbookError, match=re.escape(words)):
        experiments.load_plan(folder)


def test_a_gpu_plan_refuses_to_run_without_a_gpu(tmp_path, tiny_data):
    import torch
    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    folder = write_plan(tmp_path / "gpu", device="cuda")
    with pytest.raises(lib.NormbookError, match="CUDA GPU"):
        experiments.run_plan(folder, data=tiny_data)


def test_noise_threshold_pools_the_baselines_repeated_seeds(tmp_path):
    folder = write_plan(tmp_path / "noise", parts=[{"seeds": [0, 1], "runs": [["bn", "recipe"], ["gn", "recipe"]]}])
    for norm, seed, acc in [("bn", 0, 80.0), ("bn", 1, 82.0), ("gn", 0, 70.0), ("gn", 1, 70.0)]:
        lib.write_json(dict(norm=norm, seed=seed, tuning="recipe", final_val_acc=acc), folder / f"{norm}-recipe-s{seed}.json")
    sigma, threshold = experiments.noise_threshold(folder)
    assert sigma == pytest.approx(1.0) and threshold == pytest.approx(2 * 2 ** 0.5)


def test_the_confirmation_plan_takes_what_passed_the_screen_brackets_muon_and_combines(tmp_path):
    screen = experiments.load_plan(lib.ROOT / "runs" / experiments.SCREEN)
    gains = {"muon lr 0.05": {"bn": 0.9, "gn": -0.2, "ln": 0.1}, "whiten trainable": {"bn": 0.1, "gn": 0.7, "ln": 0.6},
             "whiten frozen": {"bn": 0.0, "gn": 0.65, "ln": 0.2}, "dirac init": {"bn": 0.5, "gn": 0.2, "ln": -1.0},
             "alternating flip": {"bn": -0.3, "gn": 0.1, "ln": 0.2}}
    assert experiments.passed_screen(gains, 0.6) == ["muon lr 0.05", "whiten trainable", "whiten frozen"]
    plan = experiments.confirm_plan(screen, gains, 0.6)
    assert set(plan["variants"]) == {"recipe", "muon lr 0.05", "whiten trainable", "whiten frozen", "muon lr 0.025",
                                     "muon lr 0.1", experiments.COMBINED}
    assert plan["variants"]["muon lr 0.1"] == {"optimizer": "Muon", "muon_lr": 0.1}
    assert plan["variants"][experiments.COMBINED] == {"optimizer": "Muon", "muon_lr": 0.05, "whiten": "trainable"}
    parts = [["recipe", experiments.COMBINED],                                       # what decides trains first
             ["muon lr 0.05", "whiten trainable", "whiten frozen"], ["muon lr 0.025", "muon lr 0.1"]]
    assert plan["parts"] == [{"seeds": [0, 1, 2], "runs": [[n, v] for v in part for n in lib.NORMS]} for part in parts]
    write = tmp_path / "confirm"
    write.mkdir()
    (write / "plan.json").write_text(json.dumps(plan))
    experiments.load_plan(write)                                         # a valid plan
    nothing = experiments.confirm_plan(screen, gains, 5.0)
    assert set(nothing["variants"]) == {"recipe"} and len(nothing["parts"]) == 1
    one = experiments.confirm_plan(screen, gains, 0.8)                  # one lever passed: it decides on its own
    assert [p["runs"][-1][1] for p in one["parts"]] == ["muon lr 0.05", "muon lr 0.1"]


def test_only_runs_trained_alike_are_copied_into_a_plan(tiny_data, tmp_path):
    source, target = write_plan(tmp_path / "a"), write_plan(tmp_path / "b", bn_batch_stats=True)
    plan = experiments.load_plan(target)
    args = experiments.settings(plan, "recipe")
    HERE = experiments.trained_here(plan, tiny_data)                  # device, precision, threads, torch, data
    assert HERE["data"] == tiny_data.holdout(50).source
    record = dict(norm="bn", seed=0, epochs=1, batch_size=128, n_train=lib.FULL_TRAIN - 50, evaluated_on="validation",
                  recipe=args["recipe"], tuning="recipe", final_val_acc=50.0, final_test_acc_batch_stats=40.0, **HERE)
    assert experiments.trained_alike(record, plan, "bn", "recipe", 0, HERE)
    for change in (dict(seed=1), dict(epochs=2), dict(batch_size=64), dict(n_train=100), dict(diverged="x"),
                   dict(recipe={**args["recipe"], "peak_lr": 0.2}), dict(evaluated_on=None),
                   dict(device="CPU: another, 2 cores"), dict(precision="fp64"), dict(threads=HERE["threads"] + 1),
                   dict(torch="1.0"), dict(data="the official CIFAR-10 files")):
        assert not experiments.trained_alike({**record, **change}, plan, "bn", "recipe", 0, HERE), change
    no_batch_stats = {k: x for k, x in record.items() if k != "final_test_acc_batch_stats"}
    assert not experiments.trained_alike(no_batch_stats, plan, "bn", "recipe", 0, HERE)     # the plan asks for it
    gn = dict(record, norm="gn", groups=None, tuning="no smoothing",
              recipe=experiments.settings(plan, "no smoothing")["recipe"])
    assert experiments.trained_alike(gn, plan, "gn", "no smoothing", 0, HERE)
    assert experiments.trained_alike(dict(gn, groups=lib.GN_GROUPS), plan, "gn", "no smoothing", 0, HERE)    # None: the default
    assert not experiments.trained_alike(dict(gn, groups=1), plan, "gn", "no smoothing", 0, HERE)    # LayerNorm's statistics
    lib.write_json(record, source / "bn-recipe-s0.json")
    lib.write_json({**record, "seed": 1, "recipe": {**args["recipe"], "peak_lr": 0.2}}, source / "bn-recipe-s1.json")
    assert experiments.adopt_runs(target, [source], tiny_data) == 1
    assert (target / "bn-recipe-s0.json").read_bytes() == (source / "bn-recipe-s0.json").read_bytes()
    assert not (target / "bn-recipe-s1.json").exists()
    lib.write_json({**record, "seed": 1, "tuning": "all at once"}, source / "bn-all_at_once-s1.json")
    assert experiments.adopt_runs(target, [source], tiny_data) == 1            # the same run under another name
    assert [(r["tuning"], r["seed"]) for r in experiments.load_results(target) if r["norm"] == "bn" and
            r["variant"] == "recipe"] == [("recipe", 0), ("recipe", 1)]       # named as this plan names it
