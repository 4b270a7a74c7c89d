"""Unit tests of lib.py: model, data, augmentation, training, artifacts, receptive field."""
import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import lib
from conftest import make_image_folder

# --------------------------------------------------------------------------------------- model

@pytest.mark.parametrize("norm", lib.NORMS)
def test_params_under_budget_and_output_shape(norm):
    model = lib.build_model(norm)
    assert 40_000 < lib.count_params(model) < lib.MAX_PARAMS
    assert model(torch.randn(4, 3, 32, 32)).shape == (4, 10)


def test_the_norm_layers_really_used():
    def norms(m):
        return [mod for mod in m.modules() if isinstance(mod, (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm))]
    bn, gn, ln = (norms(lib.build_model(n)) for n in lib.NORMS)
    # one norm after each of the eight 3x3 convolutions (C1 C2 C3 C4 C5 C7 C8 C9)
    assert len(bn) == len(gn) == len(ln) == 8
    assert all(type(m) is nn.BatchNorm2d for m in bn)
    assert all(type(m) is nn.GroupNorm and m.num_groups == 8 for m in gn)
    assert all(type(m) is nn.GroupNorm and m.num_groups == 1 for m in ln)
    # gamma and beta per channel for all three: the same parameter count
    assert lib.count_params(lib.build_model("bn")) == lib.count_params(lib.build_model("gn")) \
        == lib.count_params(lib.build_model("ln"))


def test_ln_normalizes_each_sample_over_c_h_w():
    x = torch.randn(3, 16, 8, 8) * 5 + 2
    ln = lib.make_norm("ln", 16)
    assert torch.allclose(ln(x), F.layer_norm(x, x.shape[1:]), atol=1e-5)
    gn = lib.make_norm("gn", 16)
    y = gn(x).reshape(3, 8, -1)          # each of 8 groups of 2 channels: mean 0, var 1
    assert torch.allclose(y.mean(-1), torch.zeros(3, 8), atol=1e-5)
    assert torch.allclose(y.var(-1, unbiased=False), torch.ones(3, 8), atol=1e-3)


def test_receptive_field_table_matches_hand_computation():
    rows = {r["layer"]: r for r in lib.receptive_field_table()}
    assert [r["layer"] for r in lib.receptive_field_table()] == list(lib.LAYERS)
    expected = dict(C1=3, C2=5, c3=5, P1=6, C3=10, C4=14, C5=18, c6=18, P2=20, C7=28, C8=36, C9=44)
    assert {k: rows[k]["rf"] for k in expected} == expected
    assert rows["C9"]["output"] == "8x8" and rows["P1"]["jump"] == 2 and rows["P2"]["jump"] == 4


def test_shortcuts_add_each_block_input_and_nothing_else():
    plain, short = lib.build_model("bn"), lib.build_model("bn", shortcuts=True)
    assert lib.count_params(short) == lib.count_params(plain)
    assert [r["rf"] for r in lib.receptive_field_table(short)] == [r["rf"] for r in lib.receptive_field_table(plain)]
    blocks = [m for m in short if isinstance(m, lib.Residual)]
    assert len(blocks) == len(lib.SHORTCUTS) == 2
    x = torch.randn(2, 24, 16, 16)
    assert torch.equal(blocks[0].eval()(x), x + blocks[0][1](blocks[0][0](x)))
    with pytest.raises(lib.NormbookError, match="needs one width"):
        lib.build_model("bn", widths=dict(lib.WIDTHS, C5=32), shortcuts=True)


def test_the_activation_is_one_switch_that_adds_no_parameters(tiny_data, tmp_path):
    relu, silu = lib.build_model("gn", activation="relu"), lib.build_model("gn", activation="silu")
    n_convs = sum(name.startswith("C") for name in lib.LAYERS)                # the eight 3x3 convolutions
    assert lib.count_params(silu) == lib.count_params(relu)
    acts = lambda model: [type(m) for m in model.modules() if isinstance(m, (nn.ReLU, nn.SiLU, nn.Hardswish))]
    assert acts(relu) == [nn.ReLU] * n_convs and acts(silu) == [nn.SiLU] * n_convs     # one after each 3x3 conv's norm
    with pytest.raises(lib.NormbookError, match="unknown activation 'tanh': choose one of relu, silu, hardswish"):
        lib.build_model("bn", activation="tanh")
    model, m = lib.train("bn", epochs=1, batch_size=50, data=tiny_data, precision="fp32", progress=False,
                         recipe=dict(activation="hardswish"))
    loaded, _ = lib.load_run(lib.save_run(model, m, tmp_path / "run"))
    assert acts(loaded) == [nn.Hardswish] * n_convs


def test_recorded_recipe_fills_keys_added_later():
    old_run = dict(recipe={k: v for k, v in lib.RECIPE.items() if k not in lib.RECIPE_ADDED_LATER})
    assert lib.recorded_recipe(old_run) == {**lib.RECIPE, **lib.RECIPE_ADDED_LATER}
    assert lib.recorded_recipe(dict(recipe=dict(lib.RECIPE, shortcuts=True)))["shortcuts"] is True

# ---------------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("kwargs, words", [
    (dict(norm="in"), ["'in'", "bn, gn, ln"]),
    (dict(epochs=0), ["epochs=0", "1 to 20"]),
    (dict(epochs=21), ["epochs=21", "1 to 20"]),
    (dict(batch_size=0), ["batch_size=0", ">= 1"]),
    (dict(norm="bn", groups=4), ["groups=4", "gn"]),
    (dict(cuda_graphs=True, device="cpu"), ["cuda_graphs=True", "CUDA"]),
    (dict(recipe=dict(optimizer="Adam")), ["'Adam'", "SGD-Nesterov, AdamW"]),
])
def test_bad_parameters_are_refused_by_name(kwargs, words, tiny_data, tmp_path):
    args = dict(norm="bn", epochs=1, batch_size=32, data=tiny_data, progress=False) | kwargs
    with pytest.raises(lib.NormbookError) as e:
        lib.train(**args)
    assert all(w in str(e.value) for w in words), str(e.value)
    assert "\n" not in str(e.value)


def test_graph_step_update_is_torch_sgd_nesterov():
    """CudaGraphStep's written-out update (LR in a tensor) must be the step torch.optim.SGD takes."""
    torch.manual_seed(0)
    models = [lib.build_model("gn") for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    recipe = dict(lib.RECIPE, weight_decay=0.01)              # large, so a decay mistake would show
    opts = [lib.make_optimizer(m, 0.0, recipe) for m in models]
    bufs = [torch.zeros_like(p) for g in opts[1].param_groups for p in g["params"]]
    before = [p.detach().clone() for p in models[0].parameters()]
    for lr in (0.05, 0.2, 0.1):                               # a changing LR, as under one-cycle
        x = torch.randn(4, 3, 32, 32)
        for m in models:
            m.zero_grad(set_to_none=True)
            m(x).square().mean().backward()
        for g in opts[0].param_groups:
            g["lr"] = lr
        opts[0].step()
        with torch.no_grad():
            lib.sgd_nesterov_(opts[1], bufs, torch.tensor(lr))
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert all((a != b).any() for a, b in zip(models[0].parameters(), before))     # every tensor moved


def test_model_over_budget_is_refused():
    wide = dict(lib.WIDTHS, C7=64, C8=64, C9=64)
    with pytest.raises(lib.NormbookError, match="parameters; the budget is fewer than 50,000"):
        lib.build_model("bn", widths=wide)


def test_gn_groups_must_divide_channels():
    with pytest.raises(lib.NormbookError, match="divisible"):
        lib.build_model("gn", groups=5)


def test_nan_loss_stops_and_names_the_epoch(tiny_data):
    with pytest.raises(lib.TrainingDiverged, match="epoch 1 of 2"):
        lib.train("bn", epochs=2, batch_size=50, data=tiny_data, recipe=dict(peak_lr=float("nan")),
                  precision="fp32", progress=False)

# ----------------------------------------------------------------------------------------- data

def test_image_folder_tree_loads_interleaved_and_cached(tiny_tree):
    d = lib.load_cifar10(tiny_tree, full=False)
    assert d.train_x.shape == (30, 3, 32, 32) and d.train_x.dtype == torch.uint8
    assert d.test_x.shape == (20, 3, 32, 32)
    assert d.train_y[:10].tolist() == list(range(10))       # classes interleaved: any prefix is balanced
    assert (tiny_tree / "cifar10_uint8.pt").exists()
    again = lib.load_cifar10(tiny_tree, full=False)
    assert torch.equal(again.train_x, d.train_x) and "ImageFolder" in again.source


def test_tree_with_wrong_counts_is_refused(tiny_tree):
    with pytest.raises(lib.NormbookError, match="holds 3 images; expected 5000"):
        lib.load_cifar10(tiny_tree, full=True)


def test_tree_with_wrong_classes_is_refused(tmp_path):
    make_image_folder(tmp_path, classes=lib.CLASSES[:9] + ("unicorn",))
    with pytest.raises(lib.NormbookError, match="unicorn"):
        lib.load_cifar10(tmp_path, full=False)


def test_missing_data_offline_says_how_to_provide_it(tmp_path, monkeypatch):
    import torchvision
    def offline(*a, **k):
        raise OSError("no network")
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(lib.NormbookError) as e:
        lib.load_cifar10(tmp_path / "nowhere")
    assert "nowhere" in str(e.value) and "tar xzf" in str(e.value)
    assert not (tmp_path / "nowhere" / "cifar10_uint8.pt").exists()


def test_subset_takes_a_prefix(tiny_data):
    s = tiny_data.subset(20)
    assert len(s.train_y) == 20 and len(s.test_y) == 20 and "first 20" in s.source
    assert tiny_data.subset(0) is tiny_data


def test_holdout_is_a_balanced_validation_split_from_the_training_images(tiny_data):
    v = tiny_data.holdout(50)
    assert len(v.train_y) == 150 and len(v.test_y) == 50 and "validation" in v.source
    assert torch.equal(v.test_x, tiny_data.train_x[150:]) and torch.equal(v.train_x, tiny_data.train_x[:150])
    assert v.test_y.bincount().tolist() == [5] * 10        # interleaved classes: balanced
    with pytest.raises(lib.NormbookError, match="holdout"):
        tiny_data.holdout(200)

# ---------------------------------------------------------------------------------- augmentation

def test_flip_is_drawn_per_image_and_keeps_shape_and_dtype():
    x = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    out = lib.augment(x, torch.Generator().manual_seed(0), flip=True, translate=0)
    assert out.shape == x.shape and out.dtype == torch.uint8
    flipped = [torch.equal(o, xi.flip(2)) for o, xi in zip(out, x)]
    same = [torch.equal(o, xi) for o, xi in zip(out, x)]
    assert all(f or s for f, s in zip(flipped, same))
    assert 10 < sum(flipped) < 54            # some images flipped, some not: not the whole batch


def test_translate_moves_each_image_by_at_most_t_pixels():
    x = torch.arange(32 * 32, dtype=torch.float32).reshape(1, 1, 32, 32).repeat(16, 3, 1, 1)
    out = lib.augment(x, torch.Generator().manual_seed(1), flip=False, translate=2)
    assert out.shape == x.shape and out.dtype == x.dtype
    centre = out[:, 0, 16, 16]                       # pixel value = 32*row + col of the source
    dy, dx = (centre // 32 - 16), (centre % 32 - 16)
    assert dy.abs().max() <= 2 and dx.abs().max() <= 2
    assert len(set(zip(dy.tolist(), dx.tolist()))) > 3   # offsets differ between images


def test_cutout_fills_one_square_per_image_with_the_given_colour():
    x = torch.full((64, 3, 32, 32), 200, dtype=torch.uint8)
    fill = torch.tensor([10.0, 20.0, 30.0])
    out = lib.augment(x, torch.Generator().manual_seed(2), flip=False, cutout=8, fill=fill)
    assert out.shape == x.shape and out.dtype == torch.uint8
    hit = out != 200                                                  # (N, C, H, W)
    assert torch.equal(hit[:, 0], hit[:, 1]) and torch.equal(hit[:, 0], hit[:, 2])   # the same square in every channel
    for img, mask in zip(out, hit[:, 0]):
        rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
        assert 0 < len(rows) <= 8 and 0 < len(cols) <= 8               # one square, clipped at the edges
        assert mask.sum() == len(rows) * len(cols)
        assert img[:, rows[0], cols[0]].tolist() == [10, 20, 30]
    assert (hit[:, 0].flatten(1).sum(1) == 64).sum() > 10               # most squares lie wholly inside
    plain = lib.augment(x, torch.Generator().manual_seed(2), flip=True, translate=2)
    same = lib.augment(x, torch.Generator().manual_seed(2), flip=True, translate=2, cutout=0)
    assert torch.equal(plain, same)                                     # off: the random stream is unchanged


def test_normalize_standardizes_with_given_mean_std():
    x = torch.full((2, 3, 4, 4), 255, dtype=torch.uint8)
    out = lib.normalize(x, torch.tensor([0.5, 0.5, 0.5]), torch.tensor([0.25, 0.5, 1.0]))
    assert out.dtype == torch.float32
    assert torch.allclose(out[0, :, 0, 0], torch.tensor([2.0, 1.0, 0.5]))

# -------------------------------------------------------------------------------------- training

def test_same_seed_same_history_and_other_seed_differs(tiny_data):
    run = lambda seed: lib.train("gn", epochs=1, batch_size=32, seed=seed, data=tiny_data,
                                 precision="fp32", progress=False)[1]["history"]
    strip = lambda h: [{k: v for k, v in row.items() if k != "seconds"} for row in h]
    a, b, c = run(0), run(0), run(1)
    assert strip(a) == strip(b)
    assert strip(a) != strip(c)


def test_training_learns_and_records_metrics(tiny_data):
    model, m = lib.train("bn", epochs=3, batch_size=20, data=tiny_data, precision="fp32", progress=False)
    assert [h["epoch"] for h in m["history"]] == [1, 2, 3]
    for key in ("norm", "params", "epochs", "seed", "batch_size", "history", "final_train_acc",
                "final_test_acc", "data", "device", "torch", "seconds", "mean", "std", "tta", "recipe"):
        assert key in m
    assert m["final_test_acc"] == m["history"][-1]["test_acc"]
    assert m["history"][-1]["train_loss"] < m["history"][0]["train_loss"]
    assert m["history"][-1]["lr_end"] < 0.05 * m["peak_lr"]      # one-cycle anneals to ~0


def test_the_weight_average_is_what_gets_evaluated_and_returned(tiny_data):
    def run(ema):
        return lib.train("bn", epochs=1, batch_size=20, data=tiny_data, precision="fp32", progress=False,
                         recipe=dict(ema=ema))
    torch.manual_seed(0)
    init = lib.build_model("bn", shortcuts=lib.RECIPE["shortcuts"], activation=lib.RECIPE["activation"]).state_dict()
    live, m_live = run(0.0)
    slow, m_slow = run(0.999)                 # 10 steps of a slow average: the weights barely leave their start
    moved = lambda model: sum((v.float() - init[k].float()).norm() for k, v in model.state_dict().items()
                              if v.is_floating_point())
    assert 0 < moved(slow) < 0.05 * moved(live)
    assert m_slow["recipe"]["ema"] == 0.999 and m_slow["final_test_acc"] == m_slow["history"][-1]["test_acc"]
    same, m_same = run(1e-12)                 # an average that follows the weights: the plain run again
    assert m_same["history"][0]["test_acc"] == m_live["history"][0]["test_acc"]
    assert all(torch.allclose(a, b) for a, b in zip(same.state_dict().values(), live.state_dict().values()))
    assert same.state_dict()["0.1.num_batches_tracked"] == live.state_dict()["0.1.num_batches_tracked"] > 0


def test_adamw_decays_only_conv_weights_and_trains(tiny_data):
    recipe = dict(lib.RECIPE, optimizer="AdamW", weight_decay=0.05)
    model = lib.build_model("bn")
    opt = lib.make_optimizer(model, 0.01, recipe)
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["betas"][0] == recipe["momentum"]
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] == 0.05 for p in g["params"]}
    assert decayed == {id(m.weight) for m in model.modules() if isinstance(m, nn.Conv2d)}
    assert isinstance(lib.make_optimizer(model, 0.1, lib.RECIPE), torch.optim.SGD)
    _, m = lib.train("bn", epochs=2, batch_size=50, data=tiny_data, precision="fp32", progress=False,
                     recipe=dict(optimizer="AdamW", peak_lr=0.01, weight_decay=0.05))
    assert m["recipe"]["optimizer"] == "AdamW" and m["history"][-1]["train_loss"] < m["history"][0]["train_loss"]


def test_one_cycle_rises_then_falls():
    lrs = [lib.one_cycle(s, 100, 0.4, 0.25) for s in range(100)]
    assert max(lrs) == pytest.approx(0.4) and lrs.index(max(lrs)) == 24
    assert lrs[0] < lrs[10] < lrs[24] and lrs[50] > lrs[99] >= 0

# ------------------------------------------------------------------------------------- artifacts

def test_save_and_load_round_trip(tiny_data, tmp_path):
    model, m = lib.train("ln", epochs=1, batch_size=50, data=tiny_data, precision="fp32", progress=False)
    out = lib.save_run(model, m, tmp_path / "run")
    state = torch.load(out / "model.pt", weights_only=True)
    assert not any(k.startswith("_orig_mod.") for k in state)
    loaded, metrics = lib.load_run(out)
    assert metrics == json.loads(json.dumps(m))
    x = lib.normalize(tiny_data.test_x[:8], torch.tensor(m["mean"]), torch.tensor(m["std"]))
    assert torch.allclose(loaded(x), model.eval()(x), atol=1e-5)


def test_a_run_with_shortcuts_and_other_widths_loads_back_with_them(tiny_data, tmp_path):
    widths = dict(lib.WIDTHS, C1=24, C2=24)
    model, m = lib.train("gn", epochs=1, batch_size=50, data=tiny_data, precision="fp32", progress=False,
                         recipe=dict(shortcuts=True, widths=widths))
    assert m["recipe"]["shortcuts"] and any(isinstance(b, lib.Residual) for b in model)
    assert m["params"] == lib.count_params(lib.build_model("gn", widths=widths, shortcuts=True)) != \
        lib.count_params(lib.build_model("gn"))
    loaded, _ = lib.load_run(lib.save_run(model, m, tmp_path / "run"))
    x = lib.normalize(tiny_data.test_x[:8], torch.tensor(m["mean"]), torch.tensor(m["std"]))
    assert torch.allclose(loaded(x), model.eval()(x), atol=1e-5)


def test_a_failed_write_keeps_the_old_artifact(tiny_data, tmp_path, monkeypatch):
    model, m = lib.train("bn", epochs=1, batch_size=50, data=tiny_data, precision="fp32", progress=False)
    out = lib.save_run(model, m, tmp_path / "run")
    before = (out / "model.pt").read_bytes()
    def broken(obj, f):
        f.write(b"half a file")
        raise KeyboardInterrupt
    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(KeyboardInterrupt):
        lib.save_run(model, m, out)
    assert (out / "model.pt").read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "model.pt"]   # no temp files left

# ------------------------------------------------------------------------------------ evaluation

def test_misclassified_and_confusion_matrix():
    probs = torch.tensor([[0.9, 0.1] + [0] * 8, [0.2, 0.8] + [0] * 8, [0.7, 0.3] + [0] * 8])
    y = torch.tensor([0, 0, 1])
    wrong = lib.misclassified(probs, y, k=10)
    assert [w["index"] for w in wrong] == [1, 2]
    assert wrong[0] == dict(index=1, true="airplane", pred="automobile", confidence=pytest.approx(0.8))
    cm = lib.confusion_matrix(probs, y)
    assert cm[0, 0] == 1 and cm[0, 1] == 1 and cm[1, 0] == 1 and cm.sum() == 3
    assert lib.per_class_accuracy(cm)[:2] == [50.0, 0.0]

# ----------------------------------------------------------------------------------- experiments

def test_bn_batch_statistics_evaluation_leaves_the_model_alone(tiny_data):
    model, m = lib.train("bn", epochs=1, batch_size=20, data=tiny_data, precision="fp32", progress=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    args = (model, tiny_data.test_x, m["mean"], m["std"])
    running = lib.predict(*args, batch_size=4)
    batch = lib.predict(*args, batch_size=4, batch_stats=True)
    assert not torch.allclose(running, batch)                 # the statistics really differ
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not model.training
    ln, mln = lib.train("ln", epochs=1, batch_size=20, data=tiny_data, precision="fp32", progress=False)
    a = lib.predict(ln, tiny_data.test_x, mln["mean"], mln["std"], batch_size=4)
    b = lib.predict(ln, tiny_data.test_x, mln["mean"], mln["std"], batch_size=4, batch_stats=True)
    assert torch.allclose(a, b)                               # no running averages: nothing changes


def test_group_counts_and_instance_norm():
    groups = lambda g: [m.num_groups for m in lib.build_model("gn", g).modules() if isinstance(m, nn.GroupNorm)]
    assert groups(4) == [4] * 8
    assert groups("C/1") == list(v for k, v in lib.WIDTHS.items() if k.startswith("C"))   # one per channel
    assert groups("C/2") == [v // 2 for k, v in lib.WIDTHS.items() if k.startswith("C")]
    with pytest.raises(lib.NormbookError, match="'C/x' is invalid"):
        lib.check_params("gn", 1, 1, "C/x")


def test_sweep_writes_one_artifact_per_point_and_resumes(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setattr(lib, "sweep_dir", lambda kind: tmp_path / kind)
    monkeypatch.setitem(lib.SWEEPS, "batch", [("bn", 10, None), ("gn", 20, None)])
    lib.run_sweep("batch", seeds=(0,), data=tiny_data, budget=dict(n_train=40, epochs=1))
    points = lib.load_sweep("batch")
    assert sorted((p["norm"], p["batch_size"]) for p in points) == [("bn", 10), ("gn", 20)]
    bn = next(p for p in points if p["norm"] == "bn")
    assert bn["n_train"] == 40 and bn["n_test"] == 100 and 0 <= bn["final_test_acc_batch_stats"] <= 100
    stamp = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "batch").iterdir()}
    lib.run_sweep("batch", seeds=(0,), data=tiny_data, budget=dict(n_train=40, epochs=1))
    assert stamp == {p.name: p.stat().st_mtime_ns for p in (tmp_path / "batch").iterdir()}  # done points kept


def test_tuning_never_touches_the_test_set_applies_its_change_and_resumes(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setattr(lib, "tune_dir", lambda tuning_round=0: tmp_path)
    no_test_set = lib.Cifar10(tiny_data.train_x, tiny_data.train_y, None, None, "train only")  # any use would fail
    lib.run_tuning("bn", names=("recipe", "batch 64", "no label smoothing"), data=no_test_set, holdout=50, epochs=1)
    runs = {r["tuning"]: r for r in lib.load_tuning()}
    assert set(runs) == {"recipe", "batch 64", "no label smoothing"}
    assert runs["batch 64"]["batch_size"] == 64 and runs["recipe"]["batch_size"] == 128
    assert runs["no label smoothing"]["recipe"]["label_smoothing"] == 0.0
    assert runs["recipe"]["recipe"] == {**lib.RECIPE, **lib.TUNING_BASELINE}     # the baseline as tuning began
    assert all(r["n_train"] == 150 and r["n_test"] == 50 and r["evaluated_on"] == "validation" for r in runs.values())
    stamp = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    lib.run_tuning("bn", names=("recipe",), data=no_test_set, holdout=50, epochs=1)
    assert stamp == {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    lib.run_tuning("bn", names=("recipe", "shortcuts"), seed=1, data=no_test_set, holdout=50, epochs=1)
    runs = {(r["tuning"], r["seed"]): r for r in lib.load_tuning()}
    assert runs["shortcuts", 1]["recipe"]["shortcuts"] is True and runs["recipe", 1]["recipe"]["shortcuts"] is False
    assert runs["recipe", 1]["delta"] == 0
    assert runs["shortcuts", 1]["delta"] == runs["shortcuts", 1]["final_val_acc"] - runs["recipe", 1]["final_val_acc"]
    assert runs["batch 64", 0]["delta"] == runs["batch 64", 0]["final_val_acc"] - runs["recipe", 0]["final_val_acc"]


def test_the_gpu_round_runs_its_variants_against_its_own_baseline(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setattr(lib, "tune_dir", lambda tuning_round=0: tmp_path / f"round{tuning_round}")
    no_test_set = lib.Cifar10(tiny_data.train_x, tiny_data.train_y, None, None, "train only")
    lib.run_tuning("ln", names=("recipe", "silu"), data=no_test_set, holdout=50, epochs=1, variants=lib.GPU_TUNING,
                   baseline=lib.GPU_TUNING_BASELINE, folder=lib.tune_dir(1), device="cpu")
    assert lib.load_tuning() == []                                    # the CPU round is untouched
    runs = {r["tuning"]: r for r in lib.load_tuning(1)}
    assert runs["recipe"]["recipe"] == {**lib.RECIPE, **lib.GPU_TUNING_BASELINE}
    assert runs["silu"]["recipe"] == {**lib.RECIPE, **lib.GPU_TUNING_BASELINE, "activation": "silu"}
    assert runs["silu"]["tuning_baseline"] == lib.GPU_TUNING_BASELINE
    assert runs["silu"]["delta"] == runs["silu"]["final_val_acc"] - runs["recipe"]["final_val_acc"]
    if not torch.cuda.is_available():
        with pytest.raises(lib.NormbookError, match="needs a CUDA GPU"):
            lib.run_rounds("cuda", data_dir=tmp_path)


def test_run_rounds_trains_the_plan_of_each_round_on_its_device_in_its_folder(monkeypatch):
    calls = []
    monkeypatch.setattr(lib, "run_tuning", lambda norm, names, **kw: calls.append((norm, names, kw)))
    lib.run_rounds("cpu", data="data")
    cpu_rounds = [r for r, spec in lib.ROUNDS.items() if spec["device"] == "cpu"]
    assert cpu_rounds and {kw["folder"] for _, _, kw in calls} == {lib.tune_dir(r) for r in cpu_rounds}
    expected = [(norm, names, seed, r) for r in cpu_rounds
                for part in (lib.ROUNDS[r], lib.ROUNDS[r].get("repeat", dict(seeds=())))
                for seed in part["seeds"] for norm, names in part["plan"].items()]
    done = [(norm, names, kw["seed"], next(r for r in cpu_rounds if lib.tune_dir(r) == kw["folder"]))
            for norm, names, kw in calls]
    assert done == expected
    assert done[0] == ("bn", lib.TUNING_PLAN["bn"], 0, 0)                      # round 0 first, seed 0
    assert ("gn", ("recipe", "shortcuts"), 2, 0) in done                      # its repeated seeds
    assert ("ln", ("recipe", "wide first and middle blocks"), 1, 3) in done   # round 3's repeat
    for _, _, kw in calls:
        r = next(r for r in cpu_rounds if lib.tune_dir(r) == kw["folder"])
        assert kw["variants"] is lib.ROUNDS[r]["variants"] and kw["baseline"] is lib.ROUNDS[r]["baseline"]
        assert kw["device"] == "cpu" and kw["data"] == "data"
    assert any("repeat" in lib.ROUNDS[r] for r in cpu_rounds)        # the repeat plan is run too


def test_each_round_has_its_own_folder_and_a_baseline_of_its_own():
    folders = [lib.tune_dir(r) for r in lib.ROUNDS]
    assert len(set(folders)) == len(folders)
    assert [lib.tune_dir(r).name for r in (0, 1, 2)] == ["tune", "tune-gpu", "tune-gpu-2"]   # the committed folders
    for spec in lib.ROUNDS.values():
        assert "recipe" in spec["variants"] and spec["variants"]["recipe"] == {}
        for plan in (spec["plan"], spec.get("repeat", dict(plan={}))["plan"]):
            assert all("recipe" in names and set(names) <= set(spec["variants"]) for names in plan.values())
        for change in spec["variants"].values():                 # every model in a round is within budget
            lib.build_model("gn", widths=change.get("widths", lib.WIDTHS), shortcuts=spec["baseline"]["shortcuts"])
        for name, change in spec["variants"].items():           # each variant changes its baseline
            assert name == "recipe" or any({**lib.RECIPE, **spec["baseline"], "batch_size": 128}.get(k) != v
                                           for k, v in change.items()), name


def test_tuning_deltas_are_against_the_baseline_of_the_same_seed(tmp_path, monkeypatch):
    monkeypatch.setattr(lib, "tune_dir", lambda tuning_round=0: tmp_path)
    for name, seed, acc in [("recipe", 0, 50.0), ("recipe", 1, 60.0), ("shortcuts", 1, 65.0), ("shortcuts", 2, 70.0)]:
        lib._atomic_write_json(dict(norm="bn", tuning=name, seed=seed, final_val_acc=acc), tmp_path / f"{name}-{seed}.json")
    delta = {(t["tuning"], t["seed"]): t["delta"] for t in lib.load_tuning()}
    assert delta == {("recipe", 0): 0.0, ("recipe", 1): 0.0, ("shortcuts", 1): 5.0, ("shortcuts", 2): None}
    assert lib.tuning_change(lib.load_tuning(), "bn", "shortcuts") == "shortcuts +5.00"
    assert lib.tuning_change(lib.load_tuning(), "gn", "shortcuts") == "shortcuts (not run yet)"
    lib._atomic_write_json(dict(norm="ln", tuning="shortcuts", seed=0, final_val_acc=1.0), tmp_path / "ln.json")
    assert lib.tuning_change(lib.load_tuning(), "ln", "shortcuts") == "shortcuts (no baseline yet)"


def test_error_bars_average_only_runs_trained_like_seed_0(tmp_path, monkeypatch):
    monkeypatch.setattr(lib, "ROOT", tmp_path)
    common = dict(norm="bn", params=1, final_train_acc=0.0, seconds=60.0, data="d", device="cpu", groups=None,
                  n_train=50_000, n_test=10_000, epochs=lib.MAX_EPOCHS, batch_size=128)
    runs = {"bn-s0": (80.0, {}), "bn-s1": (82.0, {}), "bn-s2": (90.0, dict(shortcuts=False)),   # another recipe
            "bn-s3": (70.0, dict(batch_size=64))}
    for run, (acc, change) in runs.items():
        batch = change.pop("batch_size", 128)
        m = dict(common, batch_size=batch, final_test_acc=acc, final_test_acc_tta=acc + 1, recipe=dict(lib.RECIPE, **change))
        lib._atomic_write_json(m, tmp_path / "runs" / run / "metrics.json")
    (row,) = lib.summary_rows()
    assert (row["seeds"], row["test_mean"], row["tta_mean"]) == (2, 81.0, 82.0)


def test_gpu_runs_say_how_their_recipe_differs_from_today(monkeypatch):
    run = dict(recipe=dict(lib.RECIPE))
    gpu = dict(device="GPU X", modes={"cuda graphs": dict(runs=[run])})
    assert lib.gpu_recipe_note(gpu) == ""
    run["recipe"]["activation"] = "hardswish"
    now = lib.RECIPE["activation"]
    monkeypatch.setattr(lib, "load_tuning", lambda tuning_round=0: [
        dict(device=d, norm=n, seed=0, seconds=s, recipe=dict(lib.RECIPE, activation=a))
        for d, n, a, s in (("GPU X", "bn", "hardswish", 10.0), ("GPU X", "bn", now, 15.0),
                           ("GPU X", "gn", "hardswish", 20.0), ("GPU X", "gn", now, 20.0),
                           ("GPU X", "ln", "hardswish", 99.0),                    # no partner: left out
                           ("GPU Y", "ln", now, 1.0))])                           # another GPU: left out
    assert lib.gpu_recipe_note(gpu) == (
        f"These runs used the recipe as it stood then: `activation` = hardswish where `lib.RECIPE` now has "
        f"{now}. In GPU tuning round 1, on the same GPU, a run with {now} took 25.0% longer than one with "
        "hardswish (mean over 2 pairs of runs, same norm and seed). ")


def test_readme_results_come_from_the_run_artifacts(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n{lib.README_START}\nstale numbers\n{lib.README_END}\nfooter\n")
    lib.update_readme(readme)
    text = readme.read_text()
    assert text.startswith("# title\n") and text.endswith("footer\n") and "stale numbers" not in text
    for norm, m in lib.main_runs().items():                  # the committed runs' own numbers, as printed
        assert (f"| {lib.NORM_NAMES[norm]} | {m['params']:,} | {m['final_train_acc']:.2f} | "
                f"{m['final_test_acc']:.2f} | {m['final_test_acc_tta']:.2f} |") in text
    tuning = lib.load_tuning()
    base = {(t["norm"], t["seed"]): t["final_val_acc"] for t in tuning if t["tuning"] == "recipe"}
    for norm, name in {(t["norm"], t["tuning"]) for t in tuning if t["tuning"] != "recipe"}:
        runs = [t for t in tuning if (t["norm"], t["tuning"]) == (norm, name)]     # one per seed
        gains = [t["final_val_acc"] - base[norm, t["seed"]] for t in runs]
        assert f"{name} {sum(gains) / len(gains):+.2f}" in text
    for key, value in lib.TUNING_BASELINE.items():           # the baseline says what today's recipe changed
        assert (f"{key}={value} where lib.RECIPE now has" in text) == (lib.RECIPE[key] != value)
    gpu_json = json.loads((lib.ROOT / "bench" / "gpu_runs.json").read_text())
    gpu = gpu_json["modes"]
    assert f"{gpu['cuda graphs']['total_wall_seconds']:.1f} s with each step replayed as a CUDA graph" in text
    assert f"{gpu['eager']['total_wall_seconds']:.1f} s eager" in text
    assert lib.gpu_recipe_note(gpu_json).strip() in text         # says which recipe the GPU runs had
    for r, spec in list(lib.ROUNDS.items())[1:]:            # every later round, each with its own baseline
        round_runs = lib.load_tuning(r)
        assert round_runs, f"round {r} has no committed runs"
        line = next(l for l in text.splitlines() if l.startswith(f"**Tuning round {r}, "))
        assert ", ".join(f"{k}={v}" for k, v in spec["baseline"].items()) in line
        for norm in {t["norm"] for t in round_runs}:
            for name in spec["plan"][norm]:
                if name != "recipe":
                    runs = [t for t in round_runs if (t["norm"], t["tuning"]) == (norm, name)]
                    assert (f"{name} {sum(t['delta'] for t in runs) / len(runs):+.2f}" if runs
                            else f"{name} (not run yet)") in line
    lib.update_readme(readme)
    assert readme.read_text() == text                        # idempotent
