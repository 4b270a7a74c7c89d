"""Artifacts: a run is written atomically, its files are tied together, and a bad one is refused."""
import json
import re
import shutil

import pytest
import torch

import lib
from conftest import train_tiny


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_data_module):
    run = train_tiny(tiny_data_module, "gn")
    return run, lib.save_run(*run, tmp_path_factory.mktemp("runs") / "gn")


@pytest.fixture(scope="module")
def tiny_data_module():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (200, 3, 32, 32), generator=g, dtype=torch.uint8)
    y = torch.arange(200) % 10
    return lib.Cifar10(x, y, x[:100], y[:100], "synthetic test data")


def test_save_and_load_round_trip(saved, tiny_data_module):
    (model, m, predictions), out = saved
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "model.pt", "predictions.pt"]
    loaded, metrics = lib.load_run(out)
    assert {k: v for k, v in metrics.items() if k != "checksums"} == json.loads(json.dumps(m))
    x = lib.normalize(tiny_data_module.test_x[:8], torch.tensor(m["mean"]), torch.tensor(m["std"]))
    assert torch.allclose(loaded(x), model.eval()(x), atol=1e-5)
    p = lib.load_predictions(out)
    assert lib.accuracy(p["probs"], p["labels"]) == m["final_test_acc"]


def test_other_widths_load_back_with_them(tiny_data, tmp_path):
    widths = dict(lib.WIDTHS, C1=24, C2=24)
    run = train_tiny(tiny_data, "gn", recipe=dict(widths=widths))
    loaded, m = lib.load_run(lib.save_run(*run, tmp_path / "run"))
    assert m["params"] == lib.count_params(loaded) != lib.count_params(lib.build_model("gn"))


def test_mixed_or_half_replaced_runs_are_refused_naming_the_files(saved, tmp_path):
    _, out = saved
    mixed = tmp_path / "mixed"
    shutil.copytree(out, mixed)
    m = json.loads((mixed / "metrics.json").read_text())
    (mixed / "metrics.json").write_text(json.dumps(dict(m, norm="ln", groups=None)))     # GN weights, LN metrics
    with pytest.raises(lib.NormbookError, match="model.pt does not belong to .*metrics.json"):
        lib.load_run(mixed)
    (mixed / "metrics.json").write_text(json.dumps(dict(m, groups=4)))                  # another group count
    with pytest.raises(lib.NormbookError, match="does not belong"):
        lib.load_run(mixed)
    no_dirac = {k: v for k, v in m["recipe"].items() if k != "dirac"}
    (mixed / "metrics.json").write_text(json.dumps(dict(m, recipe=no_dirac)))
    with pytest.raises(lib.NormbookError, match="lacks recipe keys dirac: "):               # a recipe key missing
        lib.load_run(mixed)
    (mixed / "metrics.json").write_text(json.dumps(m))
    state = torch.load(mixed / "model.pt", weights_only=True)
    torch.save({k: v + 1 if v.is_floating_point() else v for k, v in state.items()}, mixed / "model.pt")   # new weights
    with pytest.raises(lib.NormbookError, match="does not belong"):
        lib.load_predictions(mixed)
    (mixed / "metrics.json").write_text(json.dumps({k: v for k, v in m.items() if k != "checksums"}))
    with pytest.raises(lib.NormbookError, match="records no checksums"):
        lib.load_run(mixed)
    (mixed / "metrics.json").write_text('{"norm": "bn", ')                                   # truncated
    with pytest.raises(lib.NormbookError, match="metrics.json is unreadable"):
        lib.load_run(mixed)


def copied(saved, root):
    """A copy of the saved tiny GN run at root/runs/gn-s0, and its record."""
    out = root / "runs" / "gn-s0"
    shutil.copytree(saved[1], out)
    return out, json.loads((out / "metrics.json").read_text())


def every_reader(out, monkeypatch):
    """Each way lib hands out a run's final_test_acc: load_run, load_predictions and (with ROOT at the
    folder above runs/) load_metrics."""
    monkeypatch.setattr(lib, "ROOT", out.parent.parent)
    return lib.load_run, lib.load_predictions, lambda out: lib.load_metrics("gn-s*")


def test_predictions_not_of_the_records_shape_or_classes_are_refused(saved, tmp_path, monkeypatch):
    out, m = copied(saved, tmp_path)
    p = torch.load(out / "predictions.pt", weights_only=True)
    assert m["n_test"] == 100
    for bad, message in [(dict(p, probs=p["probs"][:-1]), r"holds probs of shape \(99, 10\), float32: its record's "
                                                          r"n_test 100 needs float probabilities of shape \(100, 10\)"),
                         (dict(p, probs=p["probs"][:, :9]), r"holds probs of shape \(100, 9\)"),
                         (dict(p, labels=p["labels"][:-1]), r"holds labels of shape \(99,\)"),
                         (dict(p, labels=p["labels"].float()), r"holds labels of shape \(100,\), float32: .* integer"),
                         (dict(p, labels=torch.where(p["labels"] == 9, 10, p["labels"])), "holds label 10: class"),
                         (dict(p, labels=p["labels"] - 1), "holds label -1: class labels"),
                         (dict(probs=p["probs"]), "holds no labels"),
                         (p["probs"], "holds no probs"),                   # a bare tensor, not a dict
                         (dict(p, probs=p["probs"].tolist()), "holds probs of type list")]:
        lib.save_tensors(bad, out / "predictions.pt")
        lib.seal_run(out, m)                                # the checksums match: only the contents are wrong
        for read in every_reader(out, monkeypatch):
            with pytest.raises(lib.NormbookError, match=f"gn-s0/predictions.pt {message}"):
                read(out)
    (out / "predictions.pt").write_bytes(b"garbage")
    lib.seal_run(out, m)
    with pytest.raises(lib.NormbookError, match="gn-s0/predictions.pt is unreadable"):
        lib.load_predictions(out)


@pytest.mark.parametrize("change", [1.0, -0.01, 0.001])
def test_a_hand_edited_final_test_acc_is_refused_naming_both_numbers(saved, tmp_path, monkeypatch, change):
    out, m = copied(saved, tmp_path)
    real = m["final_test_acc"]
    edited = real + change if real + change <= 100 else real - change
    (out / "metrics.json").write_text(json.dumps(dict(m, final_test_acc=edited)))   # checksums still match
    for read in every_reader(out, monkeypatch):
        with pytest.raises(lib.NormbookError, match=rf"gn-s0: metrics.json says final_test_acc {edited:.6g} but "
                                                    rf"predictions.pt gives {real:.6g} \({round(real)} of 100 right\)"):
            read(out)
    (out / "metrics.json").write_text(json.dumps(dict(m, final_test_acc=real + 5e-5)))  # float rounding: accepted
    assert all(read(out) for read in every_reader(out, monkeypatch))


NAN, INF, MISSING = float("nan"), float("inf"), object()


BAD_FIELDS = [
    ("final_test_acc", NAN, "nan; a run record holds a finite number from 0 to 100"),
    ("final_train_acc", "83.9", "'83.9'; a run record holds a finite number from 0 to 100"),
    ("final_test_acc_tta", 100.5, "100.5; a run record holds a finite number from 0 to 100"),
    ("final_test_acc_tta", -INF, "-inf;"),
    ("seconds", 0, "0; a run record holds a finite number > 0"),
    ("seconds", INF, "inf;"),
    ("seed", -1, "-1; a run record holds an integer >= 0"),
    ("seed", 0.0, "0.0; a run record holds an integer >= 0"),
    ("n_test", True, "True; a run record holds an integer >= 1"),
    ("n_train", None, "None; a run record holds an integer >= 1"),
    ("norm", "bn2", "'bn2'; a run record holds one of bn, gn, ln"),
    ("device", "", "''; a run record holds a non-empty string"),
    ("history", [], r"\[\]; a run record holds a non-empty list of objects"),
    ("history", {"1": {}}, r"\{'1': \{\}\}; a run record holds a non-empty list"),
    ("history", [1, 2], r"\[1, 2\]; a run record holds a non-empty list of objects"),
    ("history[0].test_acc", NAN, "nan; a run record holds a finite number from 0 to 100"),
    ("history[0].train_loss", "1.5", "'1.5'; a run record holds a finite number >= 0"),
    ("seed", MISSING, "missing; a run record holds an integer >= 0"),
    ("final_test_acc", MISSING, "missing; a run record holds a finite number"),
    ("history[0].test_acc", MISSING, "missing; a run record holds a finite number from 0 to 100"),
]


@pytest.mark.parametrize("field, value, says", BAD_FIELDS,
                         ids=[f"{f} missing" if v is MISSING else f"{f}={v!r}" for f, v, _ in BAD_FIELDS])
def test_a_record_field_missing_or_of_the_wrong_type_or_range_is_refused_naming_it(saved, tmp_path, monkeypatch,
                                                                                     field, value, says):
    out, m = copied(saved, tmp_path)
    key, _, entry = field.partition("[0].")
    target = m["history"][0] if entry else m
    key = entry or key
    if value is MISSING:
        del target[key]
    else:
        target[key] = value
    (out / "metrics.json").write_text(json.dumps(m))         # json.dumps writes NaN and Infinity; json.loads reads them
    for read in (lambda out: lib.read_json(out / "metrics.json"), *every_reader(out, monkeypatch)):
        with pytest.raises(lib.NormbookError, match=re.escape(f"gn-s0/metrics.json: {field} is ") + says) as e:
            read(out)
        assert "\n" not in str(e.value)


@pytest.mark.parametrize("text, says", [("[1, 2]", "holds a JSON array, not an object"),
                                        ('"metrics"', "holds a JSON string, not an object"),
                                        ("82.4", "holds a JSON number, not an object"),
                                        ("null", "holds a JSON null, not an object"),
                                        ("{'norm': 'bn'}", "is unreadable \\(JSONDecodeError"),
                                        ("", "is unreadable \\(JSONDecodeError")])
def test_a_json_file_that_is_not_an_object_is_refused_naming_it(tmp_path, text, says):
    (tmp_path / "results.json").write_text(text)
    with pytest.raises(lib.NormbookError, match=f"results.json {says}"):
        lib.read_json(tmp_path / "results.json")


def test_every_committed_run_verifies_and_every_record_holds_the_full_recipe():
    runs = lib.load_metrics("*-s[0-9]")
    assert len(runs) >= 9
    for m in runs:
        assert lib.verify_run(f"runs/{m['run']}")["checksums"] == m["checksums"], m["run"]
    def recipes(obj):                        # a run record is any object holding a recipe, nested ones too
        if isinstance(obj, dict) and isinstance(obj.get("recipe"), dict):
            yield obj
        for v in obj.values() if isinstance(obj, dict) else obj if isinstance(obj, list) else ():
            yield from recipes(v)
    files = [p for p in sorted([*(lib.ROOT / "runs").rglob("*.json"), *(lib.ROOT / "bench").glob("*.json")])
             if p.name != "plan.json"]      # a plan's variants are changes to a recipe, not records
    records = [(p, r) for p in files for r in recipes(lib.read_json(p))]
    assert len(records) > 250
    for path, record in records:
        assert set(lib.recorded_recipe(record)) == set(lib.RECIPE), path


def test_every_plans_committed_runs_were_trained_as_its_plan_says_today():
    # A plan leaves unnamed settings to lib.RECIPE: when the recipe changes, a plan whose runs were trained in
    # the old one must name it in its baseline, or the runs it still lacks would pair with runs of another recipe.
    import experiments
    checked = 0
    for folder in experiments.plan_dirs():
        plan = experiments.load_plan(folder)
        for path, norm, name, seed in experiments.planned(folder):
            record = lib.read_json(path) if path.exists() else {}
            if "recipe" in record:
                assert lib.recorded_recipe(record) == experiments.settings(plan, name)["recipe"], path
                checked += 1
    assert checked > 250


def test_a_failed_write_keeps_the_old_artifact(saved, monkeypatch):
    (model, m, predictions), out = saved
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    def broken(obj, f):
        f.write(b"half a file")
        raise KeyboardInterrupt
    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(KeyboardInterrupt):
        lib.save_run(model, m, predictions, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before          # same files, no temp files left


def test_a_save_that_fails_halfway_keeps_the_whole_old_run(tiny_data, tmp_path, monkeypatch):
    old, new = train_tiny(tiny_data, "bn", seed=0), train_tiny(tiny_data, "bn", seed=0, epochs=2)
    new.metrics["epochs"] = 1                                # trained the same way, other weights
    out = lib.save_run(*old, tmp_path / "run")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real_save, calls = torch.save, []
    def fail_second(obj, f):                                # model.pt is written, predictions.pt is not
        calls.append(1)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real_save(obj, f)
    monkeypatch.setattr(torch, "save", fail_second)
    with pytest.raises(OSError, match="No space left"):
        lib.save_run(*new, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before and lib.verify_run(out)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == ["run"]   # no staging left
    monkeypatch.setattr(torch, "save", real_save)
    lib.save_run(*new, out)                                  # the same kind of run replaces it, whole
    assert lib.verify_run(out)["checksums"] != json.loads(before["metrics.json"])["checksums"]
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "model.pt", "predictions.pt"]


def test_a_run_trained_otherwise_never_replaces_a_saved_one(tiny_data, tmp_path):
    out = lib.save_run(*train_tiny(tiny_data, "bn"), tmp_path / "bn-s0")
    (out / "notebook.ipynb").write_text("{}")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    for other in (train_tiny(tiny_data, "bn", precision="bf16"), train_tiny(tiny_data, "bn", recipe=dict(cutout=4)),
                  train_tiny(tiny_data, "bn", seed=1)):
        with pytest.raises(lib.NormbookError, match=r"bn-s0 holds a run trained otherwise \((precision|recipe cutout|seed)"):
            lib.save_run(*other, out)
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_non_finite_numbers_are_never_written_as_json(tmp_path):
    with pytest.raises(ValueError):
        lib.write_json(dict(final_test_loss=float("nan")), tmp_path / "m.json")
    assert not (tmp_path / "m.json").exists()


def test_smoke_runs_default_to_a_scratch_folder():
    assert lib.default_out_dir("bn", 0, 20, 128, 0, None) == "runs/bn-s0"
    assert lib.default_out_dir("gn", 2, 20, 128, 0, 8) == "runs/gn-s2"
    for args in [(1, 128, 0, None), (20, 128, 64, None), (20, 64, 0, None), (20, 128, 0, 4)]:
        assert lib.default_out_dir("gn", 0, *args).startswith("runs/scratch/")


def test_an_unwritable_out_dir_is_refused_before_training(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(lib.NormbookError, match="out_dir=.* is not a writable folder"):
        lib.check_writable(tmp_path / "file" / "run")
