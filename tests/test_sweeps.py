"""The batch-size and group-count sweeps, the BN-lead experiment and "which should I use?", on made-up runs:
every statement is chosen by the numbers, and changes when they change."""
import math

import pytest

import experiments
import lib
import report


def run(norm, variant, seed, acc, precision="bf16"):
    return dict(norm=norm, variant=variant, seed=seed, final_test_acc=acc, precision=precision)


def batch_runs(acc: dict[str, dict[int, tuple[float, float]]]) -> list[dict]:
    """norm -> batch -> (seed 0, seed 1) accuracies."""
    return [run(n, f"batch {b}", s, a) for n, by_b in acc.items() for b, pair in by_b.items() for s, a in enumerate(pair)]


def level(value):            # the same accuracy at every batch size, with a seed spread of 0.2
    return {b: (value - 0.1, value + 0.1) for b in report.BATCHES}


def test_noise_is_the_median_point_and_a_change_counts_only_beyond_its_bar():
    runs = [run("bn", "batch 128", 0, 70.0), run("bn", "batch 128", 1, 72.0),
            run("bn", "batch 2", 0, 60.0), run("bn", "batch 2", 1, 62.0), run("gn", "batch 2", 0, 50.0)]
    median_of_chi2 = (1 - 2 / 9) ** 3                 # chi²(1)'s median, Wilson–Hilferty: a median variance is σ² x this
    assert report.noise(runs) == pytest.approx(math.sqrt(2 / median_of_chi2))     # variance 2 at both repeated points
    p = report.paired(runs, "bn", "batch 2", "batch 128")
    assert (p["change"], p["lo"], p["hi"], p["n"]) == (-10.0, -10.0, -10.0, 2)
    assert p["bar"] == pytest.approx(2 * math.sqrt(2 / 2) * report.noise(runs)) and p["verdict"] == "loss"
    assert report.paired(runs, "gn", "batch 2", "batch 128")["verdict"] == "not run"
    assert report.verdict(0.5, 0.6) == "within noise" and report.verdict(0.7, 0.6) == "gain"


def test_one_unstable_point_does_not_set_the_bar_of_the_others_and_is_judged_by_its_own_spread():
    steady = [run("gn", f"groups {g}", s, 65.0 + g / 10 + (s - 0.5) / 5) for g in (1, 2, 4, 8) for s in (0, 1)]
    unstable = [run("gn", "1 channel per group", 0, 59.0), run("gn", "1 channel per group", 1, 53.0)]
    sigma = report.noise(steady + unstable)
    assert sigma == pytest.approx(report.noise(steady)) and sigma < 0.3           # the median ignores the outlier
    assert report.paired(steady + unstable, "gn", "groups 1", "groups 8")["verdict"] == "loss"        # -0.7 points
    wide = report.paired(steady + unstable, "gn", "1 channel per group", "groups 8")
    assert wide["bar"] == pytest.approx(2 * math.sqrt((18 + 0.02) / 2)) and wide["verdict"] == "loss"  # its own variance


def test_the_batch_summary_finds_where_bn_falls_behind():
    acc = {"bn": level(70.0), "gn": level(68.0), "ln": level(67.0)}
    acc["bn"][2], acc["bn"][4] = (59.9, 60.1), (64.9, 65.1)               # BN behind GN at 2 and 4 only
    s = report.batch_summary(batch_runs(acc))
    assert s["done"] == list(report.BATCHES) and s["behind"] == [2, 4] and s["bn_fine_from"] == 8
    assert s["worst"]["bn"]["batch"] == 2 and s["worst"]["bn"]["change_change"] == pytest.approx(-10.0)
    assert s["lead"][2]["other"] == "gn" and s["lead"][128]["verdict"] == "gain"
    acc["bn"][2] = (67.9, 68.1)                                            # now level with GN at batch 2
    s = report.batch_summary(batch_runs(acc))
    assert s["behind"] == [4] and s["bn_fine_from"] == 8                 # behind at 4 still: fine only from 8
    del acc["ln"][64]
    assert 64 not in report.batch_summary(batch_runs(acc))["done"]         # a batch size not run by every norm


def test_a_rise_at_small_batches_smaller_than_twice_the_epochs_give_is_called_optimization():
    acc = {"bn": level(70.0), "gn": level(68.0), "ln": level(67.0)}
    acc["gn"][2], acc["ln"][2] = (68.9, 69.1), (67.0, 67.2)                # GN +1 at batch 2, LN +0.1: noise
    runs = batch_runs(acc) + [run(n, "batch 128 for 20 epochs", s, a + 3) for n, a in (("bn", 70.0), ("gn", 68.0),
                                                                                      ("ln", 67.0)) for s in (0, 1)]
    batch, control = report.batch_summary(runs), report.step_control(runs)
    assert report.steps_text(batch, control) == (
        " GN, which has no batch statistics, gains +1.00 points from batch 128 to batch 2: less than twice the epochs "
        "give it at batch 128, so the gain is one of optimization (the small batch's many more steps, on a budget "
        "short for every norm).")
    acc["gn"][2] = (71.9, 72.1)                                               # +4: more than the longer schedule gives
    assert report.steps_text(report.batch_summary(batch_runs(acc) + runs[-6:]), control) == ""


def test_the_step_control_and_the_ghost_rows_pair_by_seed():
    runs = batch_runs({"bn": level(70.0), "gn": level(68.0), "ln": level(67.0)})
    runs += [run(n, "batch 128 for 20 epochs", s, a + 2 + s) for n, a in (("bn", 70.0), ("gn", 68.0), ("ln", 71.0)) for s in (0, 1)]
    runs += [run("bn", "batch 128 with BN statistics of 4", s, 65.0) for s in (0, 1)]
    c = report.step_control(runs)
    assert c["per_norm"]["bn"]["vs_128"]["change"] == pytest.approx(2.5) and c["order_10"] == ["bn", "gn", "ln"]
    assert c["order_20"] == ["ln", "bn", "gn"]
    ghosts = {g["images"]: g for g in report.ghost_rows(runs)}
    assert ghosts[4]["ghost_change"]["change"] == pytest.approx(-5.0) and ghosts[4]["batch_change"]["change"] == 0
    assert ghosts[16]["ghost_change"]["verdict"] == "not run" and ghosts[128]["ghost"]["mean"] == 70.0


def fit(bn_loss=0.50, gn_loss=0.515, ln_loss=0.53):
    return [dict(norm=n, train_loss=l, train_acc=a + 3, test_acc=a, seeds=3, loss_std=0.002)
            for n, l, a in (("bn", bn_loss, 82.4), ("gn", gn_loss, 81.0), ("ln", ln_loss, 81.1))]


@pytest.mark.parametrize("ghost_acc, supports, words", [
    (72.0, "noise", "more noise helps"), (65.0, "fit", "more noise hurts"),
    (70.1, "fit", "more noise changes little")])
def test_why_bn_leads_is_decided_by_the_measurements(ghost_acc, supports, words):
    runs = batch_runs({"bn": level(70.0), "gn": level(68.0), "ln": level(67.0)})
    runs += [run("bn", f"batch 128 with BN statistics of {g}", s, ghost_acc + (s - 0.5) / 5) for g in report.GHOSTS for s in (0, 1)]
    runs += [run("bn", "batch 128 with BN statistics frozen after warm-up", s, 60.0) for s in (0, 1)]
    why = report.why_bn_leads(fit(), runs)
    assert why["supports"] == supports and why["noise_text"].startswith(words)
    assert why["fits_better"] and why["fit_text"].startswith("BN fits its clean training images better: training "
                                                              "accuracy BN 85.40 %, GN 84.00 %, LN 84.10 %")
    assert why["share"]["gn"] == pytest.approx(1.0) and why["frozen"]["verdict"] == "loss"
    assert "-10.00 points" in why["frozen_text"]
    blown = report.why_bn_leads(fit(), runs, [dict(norm="bn", seed=0, variant=report.FROZEN, diverged="the loss became "
                                              "non-finite in epoch 4 of 10 (train nan)")])
    assert blown["frozen_text"].endswith("its loss became non-finite in epoch 4 of 10 (seed 0)")
    assert "training diverge" in report.why_text(blown)
    level_fit = report.why_bn_leads(fit(bn_loss=0.514), runs)              # GN within 0.001: noise (bar 0.0046)
    assert not level_fit["fits_better"] and level_fit["supports"] in ("noise", "neither")
    assert "Verdict" in report.why_text(why) and report.why_takeaway(why)
    assert ("its loss is not evidence for the noise" + (", and the ghost batches, which change the noise alone, do not "
            "raise accuracy." if supports == "fit" else ".")) in report.why_text(why)
    assert "longer training" not in report.why_text(why)
    assert "\n\nWith longer training ({ref}`the ceiling <ceiling>`, one run per norm), BN's lead X.\n\n**Verdict" \
        in report.why_text(why, "BN's lead X.")


def test_the_group_summary_keeps_every_count_within_noise_of_the_best():
    accs = {"1": 60.0, "2": 63.0, "4": 64.9, "C/4": 65.0, "8": 64.8, "C/2": 64.0, "C/1": 55.0}
    runs = [run("gn", report.group_variant(g), s, a + (s - 0.5) / 5) for g, a in accs.items() for s in (0, 1)]
    assert report.group_variant("C/4") == "4 channels per group" and report.group_variant("C/1") == "1 channel per group"
    rows = report.group_rows(runs)
    g = report.group_summary(runs)
    assert g["best"]["groups"] == "C/4" and g["near"] == ["4", "C/4", "8"] and g["worst"]["groups"] == "C/1"
    assert next(r for r in rows if r["groups"] == "1")["change_change"] == pytest.approx(-4.8)


def test_the_claim_about_more_groups_says_whether_its_rise_is_beyond_the_noise():
    acc = {"1": 60.0, "2": 63.0, "4": 64.9, "C/4": 65.0, "8": 64.8, "C/2": 64.0, "C/1": 55.0}
    groups = lambda accs: [run("gn", report.group_variant(g), s, a + (s - 0.5) / 5) for g, a in accs.items() for s in (0, 1)]
    batch = report.batch_summary(batch_runs({"bn": level(70.0), "gn": level(68.0), "ln": level(67.0)}))
    rows = [dict(norm=n, test_mean=a) for n, a in (("bn", 82.4), ("gn", 81.0), ("ln", 81.1))]

    def claim(accs):
        runs = groups(accs)
        g = report.group_rows(runs)
        return report.claims_text(batch, g, report.group_summary(runs), rows).split("\n")[1]
    assert ("Only up to a point: from one group to G = C/4 accuracy goes from 60.00 to 65.00 % (3 of 3 steps up; "
            "beyond the seed noise), and with one channel per group (Instance Norm) it falls 9.8 points below G = 8.") in claim(acc)
    assert "Not shown: from one group to G = C/4 accuracy goes from 64.80 to 65.00 % (3 of 3 steps up; all of it within the " \
           "seed noise)" in claim(dict(acc, **{"1": 64.8, "2": 64.85}))


def test_the_recommendations_follow_the_numbers():
    rows = [dict(norm=n, test_mean=a, seeds=3) for n, a in (("bn", 82.4), ("gn", 81.0), ("ln", 81.1))]
    acc = {"bn": level(70.0), "gn": level(68.0), "ln": level(67.0)}
    acc["bn"][2] = (59.9, 60.1)
    batch = report.batch_summary(batch_runs(acc))
    rob = {n: dict(corrupted=c, changed_2=50.0 if n == "bn" else 0.0, adabn=78.0) for n, c in (("bn", 68.0), ("gn", 72.8), ("ln", 72.1))}
    speed = [dict(norm=n, lib_images_per_s=v, device="CPU", lib_setting="bf16, x") for n, v in (("bn", 2400.0), ("gn", 1900.0), ("ln", 2800.0))]
    groups = dict(best=dict(groups="8", mean=65.0), near=["4", "8"], worst=dict(groups="C/1", mean=55.0))
    rec = {r["topic"]: r for r in report.recommendations(rows, batch, groups, rob, speed)}
    assert rec["Batch size"]["short"] == ("**BatchNorm** for batches of 4 images or more: never behind beyond the noise, "
                                          "and +1.3 points at batch 128; with fewer, **GroupNorm**.")
    assert rec["Shifted inputs, one image at a time"]["short"].startswith("**GroupNorm or LayerNorm**")
    assert rec["How many groups"]["short"] == "**GroupNorm** with 4 or 8 groups (all within noise); not one channel per group."
    groups["near"] = ["1", "2", "C/4", "8", "4"]
    assert report.recommendations(rows, batch, groups, rob, speed)[2]["short"] == (
        "**GroupNorm** with 1, 2, 4 or 8 groups (one group is LayerNorm), or 4 channels per group (all within noise); "
        "not one channel per group.")
    assert "on this CPU GroupNorm takes about 47 % longer per training image than LayerNorm." in rec["Cost"]["short"]
    speed[0]["lib_images_per_s"] = 1950.0      # within 5 % of GN: both are the slowest
    cost = {r["topic"]: r for r in report.recommendations(rows, batch, groups, rob, speed)}["Cost"]
    assert "on this CPU BatchNorm and GroupNorm take about 47 % longer per training image than LayerNorm." in cost["short"]
    assert "BatchNorm and GroupNorm are the slowest there (within 5 % of each other)" in cost["text"]
    speed[0]["lib_images_per_s"] = 2400.0
    rob["bn"]["corrupted"] = 75.0
    rows[0]["test_mean"] = 80.0
    rec = {r["topic"]: r for r in report.recommendations(rows, batch, groups, rob, speed)}
    assert "**none**" in rec["Shifted inputs, one image at a time"]["short"]
    assert rec["Batch size"]["text"].startswith("At batch 128 BatchNorm is not ahead: -1.10 points")


def test_a_sweep_of_mixed_precision_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(lib, "ROOT", tmp_path)
    folder = tmp_path / "runs" / "mixed"
    lib.write_json(dict(title="t", device="cpu", data={"n_train": 100}, epochs=1, baseline={},
                        variants={"batch 2": {"batch_size": 2}}, parts=[{"seeds": [0, 1], "runs": [["bn", "batch 2"]]}]),
                   folder / "plan.json")
    for seed, precision in ((0, "bf16"), (1, "fp32")):
        lib.write_json(dict(norm="bn", seed=seed, final_test_acc=50.0, precision=precision), folder / f"bn-batch_2-s{seed}.json")
    with pytest.raises(lib.NormbookError, match="mixes precisions"):
        report.sweep("runs/mixed")


def lever_run(norm, lever, seed, delta, folder="levers-screen"):
    change = dict(dirac=True) if lever == "dirac init" else dict(optimizer="Muon", dirac=True) if lever == experiments.COMBINED \
        else dict(optimizer="Muon") if lever.startswith("muon") else {}
    recipe = {**lib.RECIPE, "optimizer": "SGD-Nesterov", "dirac": False, **change}
    return dict(folder=folder, norm=norm, tuning=lever, seed=seed, delta=delta, recipe=recipe)


REPORTED = dict(norm="bn", seed=0, recipe=dict(lib.RECIPE, optimizer="Muon", dirac=True))


def test_the_lever_table_screens_confirms_and_decides_from_the_runs():
    v = dict(sigma=0.5, threshold=2 * 2 ** 0.5 * 0.5)                 # screen bar 0.71, one-run threshold 1.41
    v["runs"] = [lever_run(n, "dirac init", 0, d) for n, d in zip(lib.NORMS, (0.2, -0.3, 0.1))]
    v["runs"] += [lever_run(n, "muon lr 0.05", 0, d) for n, d in zip(lib.NORMS, (0.9, 0.1, 0.0))]
    v["runs"] += [lever_run("bn", "alternating flip", 0, 2.0)]
    stages = report.lever_stages(v, REPORTED)
    table = stages["table"]
    assert table.loc["dirac init", "verdict"] == "stops at the screen"
    assert table.loc["muon lr 0.05", "verdict"] == "passes the screen (BN)"
    assert table.loc["alternating flip", "verdict"] == "screened for BN"
    assert stages["adopt"] is None and "The recipe of the reported runs is the one without these levers" in stages["text"]
    assert "both sides" not in stages["text"]
    v["runs"] += [lever_run("bn", "muon lr 0.05", 1, 0.7, "levers-confirm"), lever_run("bn", "muon lr 0.1", 0, 0.3, "levers-confirm")]
    table = report.lever_stages(v, REPORTED)["table"]
    assert table.loc["muon lr 0.05", "verdict"] == "passed the screen; seeds measured: BN 2, GN 1, LN 1 of 3"
    assert table.loc["muon lr 0.05", "BN"] == "+0.80 (+0.70\u00a0to\u00a0+0.90)"
    assert table.loc["muon lr 0.1", "verdict"] == "seeds measured: BN 1, GN 0, LN 0 of 3"
    assert "tried on both sides of the screened 0.05: *muon lr 0.1*, each against" in report.lever_stages(v, REPORTED)["text"]
    combined = experiments.COMBINED
    for seed, gains in enumerate([(1.2, 1.0, -0.2), (1.0, 1.4, 0.1), (1.1, 0.9, -0.1)]):
        v["runs"] += [lever_run(n, combined, seed, d, "levers-confirm") for n, d in zip(lib.NORMS, gains)]
    stages = report.lever_stages(v, REPORTED)
    assert stages["adopt"] is True and stages["table"].loc[combined, "BN"] == "+1.10 (+1.00\u00a0to\u00a0+1.20)"
    assert stages["table"].loc[combined, "verdict"] == "BN and GN gain; LN within noise"
    assert stages["text"].endswith("hurts none: the reported runs are trained with it.")
    v["runs"] += [lever_run(n, "recipe", 0, None, "levers-confirm") for n in lib.NORMS]
    assert "without the lever (a recipe with SGD-Nesterov for every weight and Kaiming initialisation, the rest as " \
           "in the reported runs)" in report.lever_stages(v, REPORTED)["text"]
    v["runs"] = [r if not (r["tuning"] == combined and r["norm"] == "ln") else dict(r, delta=-1.5) for r in v["runs"]]
    assert report.lever_stages(v, REPORTED)["adopt"] is False                  # a loss beyond noise for one norm vetoes it


def test_the_muon_lr_bracket_is_judged_against_the_screened_rate_once_its_seeds_are_in():
    v = dict(sigma=0.5, threshold=2 * 2 ** 0.5 * 0.5)                 # 1.41/sqrt(3) = 0.82 for a mean of 3 seeds
    v["runs"] = [lever_run(n, "muon lr 0.05", s, 0.5, "levers-confirm") for n in lib.NORMS for s in range(3)]
    low = {"bn": 0.6, "gn": 1.5, "ln": -0.5}                           # over 0.05: +0.10, +1.00 (gain), -1.00 (loss)
    v["runs"] += [lever_run(n, "muon lr 0.025", s, low[n], "levers-confirm") for n in lib.NORMS for s in range(2)]
    assert "Seed by seed against" not in report.lever_stages(v, REPORTED)["text"]       # 2 of 3 seeds: no verdict
    v["runs"] += [lever_run(n, "muon lr 0.025", 2, low[n], "levers-confirm") for n in lib.NORMS]
    text = report.lever_stages(v, REPORTED)["text"]
    assert ("Seed by seed against the screened 0.05 (the mean of 3 differences, in points, clear beyond ±0.82): "
            "*muon lr 0.025* BN\u00a0+0.10, GN\u00a0+1.00, LN\u00a0-1.00. Beyond noise, *muon lr 0.025* gains for GN; *muon lr 0.025* "
            "loses for LN. The reported runs train Muon at 0.05.") in text
    v["runs"] += [lever_run(n, "muon lr 0.1", s, 0.3, "levers-confirm") for n in lib.NORMS for s in range(3)]
    assert ("*muon lr 0.025* BN\u00a0+0.10, GN\u00a0+1.00, LN\u00a0-1.00; *muon lr 0.1* BN\u00a0-0.20, GN\u00a0-0.20, "
            "LN\u00a0-0.20. Beyond noise, "
            "*muon lr 0.025* gains") in report.lever_stages(v, REPORTED)["text"]      # both neighbours, one sentence
    assert report.lever_stages(v, REPORTED)["table"].loc["muon lr 0.1", "verdict"] == "all within noise"
    v["runs"] = [r for r in v["runs"] if r["tuning"] != "muon lr 0.025"]
    assert ("*muon lr 0.1* BN\u00a0-0.20, GN\u00a0-0.20, LN\u00a0-0.20. It does not differ from 0.05 beyond noise for any "
            "norm.") in report.lever_stages(v, REPORTED)["text"]
    v["runs"] = [r for r in v["runs"] if (r["tuning"], r["seed"]) != ("muon lr 0.05", 2)]
    assert "Seed by seed against" not in report.lever_stages(v, REPORTED)["text"]     # 0.05 short of its seeds


def test_a_retrained_sweep_replaces_the_earlier_one_only_when_complete(tmp_path, monkeypatch):
    monkeypatch.setattr(lib, "ROOT", tmp_path)
    assert report.finished_plan("runs/new", earlier="runs/old") == "runs/old"            # no plan yet
    lib.write_json(dict(title="t", device="cpu", data={"n_train": 1000}, epochs=1, baseline={},
                        variants={"batch 2": {"batch_size": 2}}, parts=[{"seeds": [0, 1], "runs": [["bn", "batch 2"]]}]),
                   tmp_path / "runs" / "new" / "plan.json")
    lib.write_json(dict(norm="bn", seed=0, final_test_acc=50.0, precision="bf16"), tmp_path / "runs" / "new" / "bn-batch_2-s0.json")
    assert report.finished_plan("runs/new", earlier="runs/old") == "runs/old"            # one of two runs
    lib.write_json(dict(norm="bn", seed=1, diverged="epoch 1"), tmp_path / "runs" / "new" / "bn-batch_2-s1.json")
    assert report.finished_plan("runs/new", earlier="runs/old") == "runs/new"            # a diverged run counts


def test_a_run_copied_into_another_plan_is_counted_once():
    run = dict(norm="bn", seed=0, final_val_acc=80.0, seconds=600.0, recipe=lib.RECIPE)
    copies = [dict(run, folder="levers-confirm", tuning="all that passed the screen", variant="all that passed the screen",
                   delta=0.9), dict(run, folder="weight-std-muon", tuning="recipe", variant="recipe", delta=None)]
    assert report.distinct_runs(copies) == 1
    assert report.distinct_runs(copies + [dict(run, seed=1, folder="weight-std-muon")]) == 2


def lr_control(drop: dict, change: dict, lost=()) -> list[dict]:
    """Made-up runs of the learning-rate control: per norm, batch 8 loses `drop` from batch 128 with the linear
    rule, and the square-root rule changes batch 8 by `change`; seeds differ by ±0.1, unpaired on purpose at the
    root-rule point (its seeds lie the other way round, so only a paired comparison gives these changes)."""
    base = {"bn": 72.0, "gn": 66.0, "ln": 64.0}
    points = {"batch 128": (128, 0.05, 0), "batch 8": (8, 0.05, -1), report.ROOT_RULE: (8, 0.2, None)}
    runs = []
    for n in lib.NORMS:
        for v, (b, muon_lr, d) in points.items():
            for s in (0, 1):
                if (n, v, s) in lost:
                    continue
                a = base[n] + (-drop[n] if d == -1 else 0) + ((change[n] - drop[n]) if d is None else 0)
                a += (0.1 if s else -0.1) * (-1 if d is None else 1) + (0.5 if d is None and n == "bn" and s else 0)
                runs.append(dict(run(n, v, s, a, "fp32"), batch_size=b, recipe=dict(lib.RECIPE, optimizer="Muon",
                                 muon_lr=muon_lr), n_train=10_000, epochs=10, device="cpu",
                                 data="ImageFolder tree at data/ (offline JPEG copy of CIFAR-10)"))
    return runs


def muon_sweep(rule: str) -> list[dict]:
    """A batch sweep's records at batch 128 and 8, Muon's learning rate scaled linearly or by the square root."""
    return [dict(run("bn", f"batch {b}", 0, 70.0), batch_size=b, recipe=dict(lib.RECIPE, optimizer="Muon", muon_lr=lr))
            for b, lr in ((128, 0.05), (8, 0.05 if rule == "linear" else 0.2))]


def test_muons_rule_is_read_from_the_records_and_a_mixture_is_refused():
    assert report.muon_rule(muon_sweep("linear")) == {"rule": "linear", "base": 0.05}
    assert report.muon_rule(muon_sweep("root")) == {"rule": "square root", "base": 0.05}
    sgd = [dict(r, recipe=dict(r["recipe"], optimizer="SGD-Nesterov")) for r in muon_sweep("linear")]
    assert report.muon_rule(sgd) is None
    with pytest.raises(lib.NormbookError, match="more than one way"):
        report.muon_rule(muon_sweep("root") + [dict(muon_sweep("linear")[1], batch_size=16)])
    odd = muon_sweep("root")
    odd[1]["recipe"] = dict(odd[1]["recipe"], muon_lr=0.3)
    with pytest.raises(lib.NormbookError, match="at batch 8 Muon's peak learning rate 0.01875 follows neither"):
        report.muon_rule(odd)
    assert report.muon_rule(muon_sweep("root")[:1]) == {"rule": None, "base": 0.05}     # batch 128 only: no rule shown


def test_the_learning_rate_control_says_whether_muons_rate_or_the_norm_decides_at_small_batches():
    sweep = muon_sweep("linear")
    rule = report.lr_rule(lr_control({"bn": 9, "gn": 3, "ln": 3}, {"bn": 5, "gn": 3, "ln": 0}))
    assert rule["per_norm"]["bn"]["linear"]["change"] == pytest.approx(-9) and rule["seeds"] == 2
    assert rule["per_norm"]["bn"]["gain"]["change"] == pytest.approx(5.25)            # paired: (5.0 + 5.5) / 2
    assert rule["peaks"] == {"batch 128": 0.05, "batch 8": 0.003125, report.ROOT_RULE: 0.0125}
    text = report.lr_rule_text(rule, sweep)
    assert ("The sweep scales Muon's peak linearly, like SGD's. A control trains batch 8 both ways: Muon's peak learning "
            "rate at 0.0125 (its batch-128 value 0.05 × √(8/128)) and at the linear rule's 0.003125 (× 8/128)") in text
    assert "the whole test set; data: CIFAR-10, an offline JPEG copy; cpu, fp32, unlike the sweep's bf16" in text
    assert ("fp32, unlike the sweep's bf16" in text and "BN changes by -9.00 points with the linear rule and -3.75 with "
            "the square-root rule" in text)
    assert ("the square-root rule wins back accuracy for BN and GN and changes nothing beyond the seed noise for LN "
            "(BN +5.25 ±" in text and "so part of what the sweep shows at batch 8 for BN and GN is Muon's learning rate "
            "scaled down too far, not the norm; BN still loses against batch 128 with the square-root rule." in text)
    assert text.endswith("+0.00 points with the linear rule, +2.25 with the square-root rule; BN is level with the "
                         "better of GN and LN with the linear rule, BN leads with the square-root rule: the verdict "
                         "between norms at batch 8 depends on Muon's learning rate (BN's margin moves by +2.25 ± 0.58 "
                         "points), so the sweep's gaps between norms at small batches are those of the linear rule it "
                         "uses; read them with that in mind.")
    text = report.lr_rule_text(report.lr_rule(lr_control({"bn": 5.7, "gn": 0, "ln": 0}, {"bn": 0.2, "gn": 0, "ln": 0})), sweep)
    assert text.endswith("BN leads with the square-root rule, and the rule does not measurably move BN's margin "
                         "(+0.45 ± 0.58 points).")                 # a verdict crossing its bar is not a move
    text = report.lr_rule_text(rule, muon_sweep("root"))                 # told from the rule the sweep uses
    assert "The sweep scales Muon's peak by √(*B*/128), SGD's linearly." in text
    assert "so part of what a linear-rule sweep would show at batch 8 for BN and GN is Muon's learning rate" in text
    assert text.endswith("are those of the square-root rule it uses; another rule for Muon could move them.")
    text = report.lr_rule_text(report.lr_rule(lr_control({"bn": 9, "gn": 6, "ln": -2}, {"bn": 2, "gn": -2, "ln": 2})), sweep)
    assert "the square-root rule wins back accuracy for BN, raises accuracy for LN and costs GN accuracy (BN +2.25 ±" in text
    assert "With the square-root rule LN ends above its batch-128 accuracy: batch 8 takes 16 times as many steps" in text
    assert text.endswith("BN trails under both rules, and the rule does not measurably move BN's margin (+0.25 ± 0.58 points).")
    text = report.lr_rule_text(report.lr_rule(lr_control({"bn": 0, "gn": 0, "ln": 0}, {"bn": 3, "gn": 3, "ln": 3})), sweep)
    assert ("the square-root rule raises accuracy for BN, GN and LN (BN +3.25 ± 0.41, GN +3.00 ± 0.41, LN +3.00 ± 0.41), so "
            "the linear rule loses nothing beyond the seed noise against batch 128 at batch 8, and the square-root rule does "
            "better still. With the square-root rule BN, GN and LN end above their batch-128 accuracy") in text
    assert text.endswith("BN leads under both rules, and the rule does not measurably move BN's margin (+0.25 ± 0.58 points).")
    text = report.lr_rule_text(report.lr_rule(lr_control({"bn": 0, "gn": 0, "ln": 0}, {"bn": 3, "gn": 0, "ln": 0})), sweep)
    assert text.endswith("BN leads under both rules, and the rule moves BN's margin by +3.25 points (± 0.58): the size of "
                         "the gap between norms at batch 8 depends on Muon's learning rate, its sign does not.")
    text = report.lr_rule_text(report.lr_rule(lr_control({"bn": 9, "gn": 3, "ln": 3}, {"bn": 0, "gn": 0, "ln": -2})), sweep)
    assert ("costs LN accuracy and changes nothing beyond the seed noise for BN and GN (" in text
            and "), so at batch 8 the linear rule does not starve Muon." in text)
    sgd = [dict(r, recipe=dict(r["recipe"], optimizer="SGD-Nesterov")) for r in sweep]
    assert report.lr_rule_text(rule, sgd) == "" and report.lr_rule_text(None, sweep) == ""
    lost = report.lr_rule(lr_control({"bn": 9, "gn": 3, "ln": 3}, {"bn": 5, "gn": 3, "ln": 0}, lost={("ln", report.ROOT_RULE, 1)}))
    assert lost["seeds"] == 1 and lost["thin"] == [f"LN at {report.ROOT_RULE}"]
    assert report.lr_rule_text(lost, sweep) == ("- **Muon's learning rate.** The control for its rule at batch 8 has fewer "
                                                f"than two seeds at LN at {report.ROOT_RULE} (a run that diverged is not "
                                                "read), so its comparisons are not made.")
    wrong = [dict(r, recipe=dict(r["recipe"], muon_lr=0.1)) if r["variant"] == report.ROOT_RULE else r
             for r in lr_control({"bn": 9, "gn": 3, "ln": 3}, {"bn": 5, "gn": 3, "ln": 0})]
    with pytest.raises(lib.NormbookError, match="not batch 128's 0.05 × √"):
        report.lr_rule(wrong)
