"""report.py and the README block: error bars, findings on made-up runs, refusals naming the file."""
import json

import pytest
import torch

import lib
import publish
import report


def fake_runs(root, accs: dict[str, list[float]], change: dict | None = None, precision2: str = "bf16"):
    """metrics.json + predictions of made-up full runs: norm -> test accuracy per seed; seed 2 with the recipe
    `change` and in `precision2`."""
    labels = torch.arange(10).repeat(1000)
    for norm, per_seed in accs.items():
        for seed, acc in enumerate(per_seed):
            out = root / "runs" / f"{norm}-s{seed}"
            out.mkdir(parents=True)
            probs = torch.nn.functional.one_hot(labels, 10).float()
            probs[: int(round(100 * (100 - acc)))] = torch.roll(probs[: int(round(100 * (100 - acc)))], 1, 1)
            torch.save({}, out / "model.pt")
            lib.save_tensors(dict(probs=probs, labels=labels), out / "predictions.pt")
            history = [dict(epoch=e, train_acc=acc - 1, test_acc=acc - 10 / e, train_loss=1.0, test_loss=1.0)
                       for e in (1, 2)]
            lib.seal_run(out, dict(norm=norm, seed=seed, params=1, final_train_acc=acc + 1, final_test_acc=acc,
                                   final_test_acc_tta=acc + 1, seconds=60.0, data="d", device="cpu",
                                   precision=precision2 if seed == 2 else "bf16",
                                   groups=8 if norm == "gn" else None, n_train=50_000, n_test=10_000,
                                   epochs=lib.MAX_EPOCHS, batch_size=128, history=history,
                                   recipe=dict(lib.RECIPE, **(change or {}) if seed == 2 else lib.RECIPE)))


def test_error_bars_average_only_runs_trained_like_seed_0(tmp_path, monkeypatch):
    monkeypatch.setattr(lib, "ROOT", tmp_path)
    fake_runs(tmp_path, {"bn": [80.0, 82.0, 90.0], "gn": [70.0, 71.0], "ln": [75.0]}, change=dict(shortcuts=False))
    rows = {r["norm"]: r for r in report.summary_rows(report.reported())}
    assert (rows["bn"]["seeds"], rows["bn"]["test_mean"], rows["bn"]["tta_mean"]) == (2, 81.0, 82.0)
    assert report.mean_std_text(rows["bn"]) == "81.00\u00a0±\u00a01.41" and report.mean_std_text(rows["ln"]) == "75.00"
    assert report.reported().left_out == ["bn-s2 (recipe)"]


def test_summary_rows_are_computed_from_runs_in_memory():
    run = lambda norm, seed, acc: dict(norm=norm, seed=seed, params=10, final_train_acc=acc + 5, final_test_acc=acc,
                                       final_test_acc_tta=acc + 1, seconds=120.0, n_train=lib.FULL_TRAIN,
                                       n_test=lib.FULL_TEST, epochs=lib.MAX_EPOCHS, data="d", device="cpu")
    seeds = {"bn": [run("bn", 0, 80.0), run("bn", 1, 84.0)], "gn": [run("gn", 0, 70.0)], "ln": [run("ln", 0, 75.0)]}
    rows = report.summary_rows(report.Reported({n: s[0] for n, s in seeds.items()}, seeds, []))
    assert [(r["norm"], r["seeds"], r["test_accs"], r["test_mean"], r["train_acc"], r["minutes"], r["full"])
            for r in rows] == [("bn", 2, [80.0, 84.0], 82.0, 85.0, 2.0, True), ("gn", 1, [70.0], 70.0, 75.0, 2.0, True),
                               ("ln", 1, [75.0], 75.0, 80.0, 2.0, True)]
    assert report.mean_std_text(rows[0]) == "82.00\u00a0±\u00a02.83"


def test_runs_of_another_precision_are_left_out_of_the_error_bars_and_named(tmp_path, monkeypatch):
    monkeypatch.setattr(lib, "ROOT", tmp_path)
    fake_runs(tmp_path, {"bn": [80.0, 82.0, 90.0], "gn": [70.0, 71.0], "ln": [75.0]}, precision2="fp32")
    rep = report.reported()
    assert {r["norm"]: r["seeds"] for r in report.summary_rows(rep)} == {"bn": 2, "gn": 2, "ln": 1}
    assert rep.left_out == ["bn-s2 (precision)"]
    assert "Left out of the means and error bars, as not trained like seed 0: bn-s2 (precision)." in \
        report.measured_on(rep)


def fake_sweep(root, accs: dict[tuple[str, int], float]):
    """Made-up runs of the batch-size sweep plan at seed 0: (norm, batch) -> test accuracy."""
    folder = root / report.BATCH_SWEEP
    lib.write_json(dict(title="t", device="cpu", data={"n_train": 1000}, epochs=1, baseline={},
                        variants={f"batch {b}": {"batch_size": b} for b in report.BATCHES},
                        parts=[{"seeds": [0], "runs": [[n, f"batch {b}"] for n in lib.NORMS for b in report.BATCHES]}]),
                   folder / "plan.json")
    for (norm, batch), acc in accs.items():
        lib.write_json(dict(norm=norm, seed=0, batch_size=batch, final_test_acc=acc, precision="bf16", n_train=1000,
                            epochs=1, recipe=lib.RECIPE), folder / f"{norm}-batch_{batch}-s0.json")


def findings_from_disk() -> list[dict]:
    """report.findings over what the loaders read from lib.ROOT, as the results chapter calls it."""
    rep = report.reported()
    cms = {n: lib.confusion_matrix(**p) for n, p in report.predictions(rep.main).items()}
    return report.findings(rep, cms, report.sweep(report.BATCH_SWEEP), report.model_records("robustness"))


def fake_robustness(root, norms=lib.NORMS):
    """Made-up records of runs/robustness/ at seed 0: what findings() reads."""
    for norm in norms:
        lib.write_json(dict(norm=norm, seed=0, clean_acc=80.0, scale={"4.0": 20.0 if norm == "bn" else 80.0},
                            max_logit_change_scale_2=1.0 if norm == "bn" else 1e-6, one_class_batches_acc=50.0,
                            batch={"2": {"changed": 10.0 if norm == "bn" else 0.0}}),
                       root / "runs" / "robustness" / f"{norm}-s0.json")


def test_findings_come_from_the_artifacts(tmp_path, monkeypatch):
    monkeypatch.setattr(lib, "ROOT", tmp_path)
    fake_runs(tmp_path, {"bn": [82.0, 83.0], "gn": [80.0, 80.5], "ln": [79.0, 79.5]})
    fake_robustness(tmp_path)
    fake_sweep(tmp_path, {("bn", 128): 60.0, ("gn", 128): 55.0, ("ln", 128): 50.0,
                          ("bn", 2): 50.0, ("gn", 2): 56.0, ("ln", 2): 50.0, ("bn", 8): 58.0})   # no GN/LN at 8
    found = {f["title"]: f for f in findings_from_disk()}
    assert found["Ranking"]["value"] == pytest.approx(82.5 - 79.25)
    assert found["Ranking"]["text"].startswith("BN 82.50\u00a0±\u00a00.71 % > GN 80.25\u00a0±\u00a00.35 % > LN 79.25\u00a0±\u00a00.35 %")
    assert found["Ranking"]["text"].endswith("GN and LN differ by 1.00, below twice the largest seed-to-seed std (2 × 0.71 = 1.41).")
    assert "for every norm, airplane ↔ automobile" in found["Most confused pair"]["text"]   # the made-up mistakes
    small = found["Small batches"]
    assert small["value"] == -10.0 and "(the reported recipe, on 1,000 images for 1 epochs, paired by seed)" in small["text"]
    assert small["text"].endswith("going from batch 128 to batch 2 changes test accuracy by BN -10.00, GN +1.00, "
                                  "LN +0.00 points; BN is never behind the better of GN and LN beyond the seed noise.")
    fake_sweep(tmp_path, {("ln", 2): 35.0})
    assert "LN -15.00 points" in {f["title"]: f for f in findings_from_disk()}["Small batches"]["text"]
    assert "Contrast" in found


def test_findings_refuse_missing_experiments_rather_than_shrink(tmp_path, monkeypatch):
    monkeypatch.setattr(lib, "ROOT", tmp_path)
    fake_runs(tmp_path, {"bn": [82.0, 83.0], "gn": [80.0, 80.5], "ln": [79.0, 79.5]})
    fake_sweep(tmp_path, {("bn", 128): 60.0, ("gn", 128): 55.0, ("ln", 128): 50.0})
    fake_robustness(tmp_path, norms=("bn", "gn"))
    with pytest.raises(lib.NormbookError, match="runs/robustness/ lacks a norm"):
        findings_from_disk()
    fake_robustness(tmp_path, norms=("ln",))
    fake_sweep(tmp_path, {})
    (tmp_path / report.BATCH_SWEEP / "bn-batch_128-s0.json").unlink()
    with pytest.raises(lib.NormbookError, match="holds no batch size trained for every norm"):
        findings_from_disk()


def test_findings_with_one_seed_per_norm_say_nothing_of_a_spread(tmp_path, monkeypatch):
    monkeypatch.setattr(lib, "ROOT", tmp_path)
    fake_runs(tmp_path, {"bn": [82.0], "gn": [80.0], "ln": [79.0]})
    with pytest.raises(lib.NormbookError, match=f"{report.BATCH_SWEEP}/plan.json is missing"):      # no sweep: refused, not skipped
        findings_from_disk()
    fake_sweep(tmp_path, {("bn", 128): 60.0, ("gn", 128): 55.0, ("ln", 128): 50.0})
    fake_robustness(tmp_path)
    ranking = findings_from_disk()[0]["text"]
    assert ranking.endswith("GN and LN differ by 1.00.") and "nan" not in ranking


def test_analysis_refuses_a_missing_or_unreadable_run_naming_it(tmp_path, monkeypatch):
    monkeypatch.setattr(lib, "ROOT", tmp_path)
    fake_runs(tmp_path, {"bn": [82.0], "ln": [79.0]})
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n{publish.README_START}\nold\n{publish.README_END}\n")
    with pytest.raises(lib.NormbookError, match="gn-s0/metrics.json is missing"):
        publish.update_readme(readme)
    assert "old" in readme.read_text()
    fake_runs(tmp_path, {"gn": [80.0]})
    (tmp_path / "runs" / "gn-s0" / "metrics.json").write_text("{")
    with pytest.raises(lib.NormbookError, match="gn-s0/metrics.json is unreadable"):
        publish.update_readme(readme)


def test_readme_block_is_generated_short_and_idempotent(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n{publish.README_START}\nstale\n{publish.README_END}\nfooter\n")
    publish.update_readme(readme)
    text = readme.read_text()
    assert text.startswith("# title\n") and text.endswith("footer\n") and "stale" not in text
    block = text.split(publish.README_START)[1].split(publish.README_END)[0]
    assert len(block.splitlines()) < 60
    for r in report.summary_rows(report.reported()):                   # the committed runs' own numbers
        assert f"| {r['model']} | {r['params']:,} | {r['train_acc']:.2f} | {r['test_acc']:.2f} | {report.mean_std_text(r)}" in block
    publish.update_readme(readme)
    assert readme.read_text() == text


def test_the_committed_readme_block_is_what_the_artifacts_say():
    text = (lib.ROOT / "README.md").read_text()
    block = text.split(publish.README_START, 1)[1].split(publish.README_END, 1)[0]
    assert block == "\n" + publish.readme_results(), "README.md is stale: run `make readme`"


def test_a_run_folder_renamed_by_hand_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(lib, "ROOT", tmp_path)
    fake_runs(tmp_path, {"bn": [82.0], "gn": [80.0], "ln": [79.0]})
    runs = tmp_path / "runs"
    (runs / "bn-s0").rename(runs / "tmp")
    (runs / "gn-s0").rename(runs / "bn-s0")
    (runs / "tmp").rename(runs / "gn-s0")
    with pytest.raises(lib.NormbookError, match="bn-s0/metrics.json holds norm 'gn', seed 0: not the run its folder bn-s0 names"):
        report.reported()
    with pytest.raises(lib.NormbookError, match="holds norm 'bn'"):
        lib.load_metrics("gn-s*")


def test_a_stray_file_among_the_model_records_is_refused_naming_it(tmp_path, monkeypatch):
    monkeypatch.setattr(lib, "ROOT", tmp_path)
    fake_robustness(tmp_path)
    assert len(report.model_records("robustness")) == 3
    lib.write_json(dict(note="scratch"), tmp_path / "runs" / "robustness" / "notes.json")
    with pytest.raises(lib.NormbookError, match="notes.json is not a record of a saved model"):
        report.model_records("robustness")


def test_an_experiment_in_another_recipe_names_what_differs_from_the_reported_one():
    record = lambda **changes: dict(norm="bn", seed=0, recipe=dict(lib.RECIPE, **changes))
    reported = record(dirac=True, optimizer="Muon")
    assert report.recipe_words([record(bn_ghost=16, dirac=True, optimizer="Muon")], reported) == "the reported recipe"
    older = report.recipe_words([record(optimizer="AdamW", dirac=True), record(optimizer="Muon", dirac=False)], reported)
    assert older == "a recipe with optimizer AdamW and Kaiming initialisation, the rest as in the reported runs"
    assert report.recipe_words([record(optimizer="SGD-Nesterov", dirac=True, ema=0.99)], reported) == (
        "a recipe with SGD-Nesterov for every weight and weight averaging decay (0: off) 0.99, the rest as in the "
        "reported runs")
    sgd = [record(optimizer="SGD-Nesterov", dirac=False)]
    assert report.evidence_recipes({"the sweep": sgd, "the timings": sgd, "the robustness runs": [reported]}, reported) == (
        "The sweep and the timings come from a recipe with SGD-Nesterov for every weight and Kaiming initialisation, "
        "the rest as in the reported runs.")
    assert report.evidence_recipes({"the sweep": [reported], "the timings": []}, reported) == ""


def test_the_sweeps_budget_names_each_sweeps_recipe_when_they_differ():
    recipe = lambda **changes: dict(lib.RECIPE, **{"dirac": True, "optimizer": "Muon", **changes})
    point = lambda variant, seed, **changes: dict(norm="gn", variant=variant, seed=seed, n_train=10_000, n_test=10_000,
                                                  epochs=10, recipe=recipe(**changes), data="x", device="CPU: y",
                                                  precision="bf16", batch_size=int(variant.split()[1])
                                                  if variant.startswith("batch") else 128)
    reported = dict(norm="bn", seed=0, recipe=recipe())
    sgd = dict(optimizer="SGD-Nesterov", dirac=False)
    batch = [point("batch 2", s, **sgd) for s in (0, 1)]
    groups = [point("groups 1", s) for s in (0, 1)] + [point("groups 2", 0)]
    text = report.sweep_budget({"the batch-size sweep": batch, "the group-count sweep": groups}, reported)
    assert text.startswith("**Budget of every point:** the first 10,000 training images (1,000 per class) for 10 epochs")
    assert "seeds 0 and 1 at 2 of its 3 points, one seed at the others (groups 2)" in text
    assert ("**Recipe:** in the batch-size sweep, a recipe with SGD-Nesterov for every weight and Kaiming initialisation, "
            "the rest as in the reported runs; in the group-count sweep, the reported recipe.") in text
    assert "peak 0.1 × *B* / 128 (Muon's: 0.05 at batch 128)." in text and "790 at batch 128, 50,000 at batch 2" in text
    same = report.sweep_budget({"the batch-size sweep": [point("batch 2", 0)], "the group-count sweep": groups}, reported)
    assert "**Recipe:** the reported recipe." in same
    assert "(Muon's" not in report.sweep_budget({"the batch-size sweep": batch}, reported)
    root = [point("batch 128", 0), point("batch 2", 0, muon_lr=0.05 * 8)]          # Muon's peak 0.05 × √(2/128)
    text = report.sweep_budget({"the batch-size sweep": root, "the group-count sweep": groups}, reported)
    assert "peak 0.1 × *B* / 128 (Muon's: 0.05 × √(*B* / 128))." in text and "**Recipe:** the reported recipe." in text
    linear = [point("batch 128", 0), point("batch 2", 0)]
    assert "(Muon's: 0.05 × *B* / 128)." in report.sweep_budget({"the batch-size sweep": linear}, reported)
    faster = [point("batch 128", 0, muon_lr=0.1), point("batch 2", 0, muon_lr=0.8)]   # Muon's rate differs at batch 128
    assert report.recipe_words(faster, reported) != "the reported recipe"


def test_the_optimizer_is_described_from_the_recipe_a_run_holds():
    sgd = report.recipe_parts(dict(lib.RECIPE, optimizer="SGD-Nesterov", dirac=False, whiten="off"))
    assert sgd["optimizer"].startswith("SGD with Nesterov momentum") and "on the conv weights" in sgd["schedule"]
    assert sgd["initialisation"] == "PyTorch's default (Kaiming uniform)"
    muon = report.recipe_parts(dict(lib.RECIPE, optimizer="Muon", muon_lr=0.05, dirac=True, whiten="off"))
    assert muon["optimizer"].startswith("Muon (peak LR 0.05) for the 3x3 convolutions' weights, SGD")
    assert "on the 1x1 convolutions' weights" in muon["schedule"] and "starts as the identity" in muon["initialisation"]
    assert report.optimizer_words(dict(lib.RECIPE, optimizer="Muon", dirac=True)).startswith("optimizer: Muon")


def test_the_ceiling_says_what_landed_against_20_epochs_and_the_reference_point(tmp_path, monkeypatch):
    plan = (lib.ROOT / "runs" / "ceiling" / "plan.json").read_text()
    monkeypatch.setattr(lib, "ROOT", tmp_path)
    (tmp_path / "runs" / "ceiling").mkdir(parents=True)
    (tmp_path / "runs" / "ceiling" / "plan.json").write_text(plan)
    main = {n: dict(final_test_acc=acc) for n, acc in zip(lib.NORMS, (83.0, 81.0, 80.0))}
    assert report.ceiling(main)["text"] == "No run of this kind is in `runs/ceiling/`."
    run = lambda norm, acc: json.dumps(dict(norm=norm, epochs=60, final_test_acc=acc, final_train_acc=90.0, data="d",
                                            device="cpu"))
    (tmp_path / "runs" / "ceiling" / "bn-60_epochs-s0.json").write_text(run("bn", 85.5))
    text = report.ceiling(main)["text"]
    assert text.startswith("At 60 epochs BN reaches 85.50\u00a0% (+2.50 points against 20 epochs; reference point 85\u00a0%); "
                           "GN and LN: no run of that length.")
    for norm, acc in (("gn", 82.0), ("ln", 79.5)):
        (tmp_path / "runs" / "ceiling" / f"{norm}-60_epochs-s0.json").write_text(run(norm, acc))
    result = report.ceiling(main)
    assert result["text"].startswith("At 60 epochs the recipe reaches BN 85.50\u00a0%, GN 82.00\u00a0%, LN 79.50\u00a0% (BN at or "
                                     "above its reference point; GN and LN 1.00 and 2.50 points below theirs), -0.50 "
                                     "to +2.50 points against 20 epochs. BN's lead over GN and LN is +3.50 and +6.00 "
                                     "points at 60 epochs, against +2.00 and +3.00 at 20 epochs (seed 0).")
    assert result["table"].loc["GroupNorm", "60 epochs"] == 82.0
    # Judged against the noise of two single runs: 2·√2·0.5 = 1.41 points.
    (tmp_path / "runs" / "ceiling" / "gn-60_epochs-s0.json").write_text(run("gn", 84.5))
    assert report.ceiling(main, sigma=0.5)["lead"].endswith(
        "(±1.41 points, from the reported runs' seeds), BN ends ahead of LN and level with GN.")
    (tmp_path / "runs" / "ceiling" / "gn-60_epochs-s0.json").write_text(run("gn", 87.0))
    assert report.ceiling(main, sigma=0.5)["lead"].endswith("BN ends ahead of LN and behind GN.")


def test_the_recipe_table_reads_the_reported_runs_record_not_the_code():
    record = lambda **changes: dict(norm="bn", seed=0, recipe=dict(lib.RECIPE, **changes))
    muon = report.recipe_table(record(optimizer="Muon", dirac=True, weight_decay=1e-3))["value"]
    assert muon["optimizer"].startswith("Muon (peak LR") and muon["weight decay (1x1 conv weights)"] == "0.001"
    assert muon["Muon's peak learning rate (3x3 conv weights)"] == str(lib.RECIPE["muon_lr"])
    sgd = report.recipe_table(record(optimizer="SGD-Nesterov", dirac=False))["value"]
    assert sgd["optimizer"] == f"SGD with Nesterov momentum {lib.RECIPE['momentum']:g}"
    assert sgd["identity (Dirac) initialisation"] == "no" and "weight decay (conv weights)" in sgd
    assert not any("Muon" in name for name in sgd.index)


def test_the_bench_source_names_the_optimizer_its_timed_runs_took():
    pipeline = dict(device="CPU: X", threads=2, clock_ghz=2.5, torch="2", batch_size=128, images_timed=256,
                    lib_setting="bf16, channels_last")
    bench = lambda **changes: dict(pipelines=[pipeline], recipe=dict(lib.RECIPE, **changes))
    reported = dict(recipe=dict(lib.RECIPE, optimizer="Muon", dirac=True))
    muon = report.bench_source(bench(optimizer="Muon", dirac=True), reported)
    assert "lib.py's runs in the reported recipe (optimizer: Muon (peak LR" in muon and "runs in bf16" in muon
    sgd = report.bench_source(bench(optimizer="SGD-Nesterov", dirac=True), reported)
    assert "(optimizer: SGD with Nesterov momentum" in sgd and "SGD-Nesterov for every weight" in sgd
