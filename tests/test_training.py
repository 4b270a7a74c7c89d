"""Training: determinism, what a run records, the optimizers, the weight average, the trace, bad input."""
import pytest
import torch
import torch.nn as nn

import cuda_graphs
import lib
from conftest import train_tiny


def strip(history):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


def test_same_seed_same_history_and_other_seed_differs(tiny_data):
    run = lambda seed: strip(train_tiny(tiny_data, "gn", batch_size=32, seed=seed).metrics["history"])
    assert run(0) == run(0) != run(1)


def test_training_learns_and_records_metrics_and_predictions(tiny_data):
    model, m, predictions = train_tiny(tiny_data, "bn", epochs=3, batch_size=20)
    assert [h["epoch"] for h in m["history"]] == [1, 2, 3]
    assert m["final_test_acc"] == m["history"][-1]["test_acc"]
    assert m["history"][-1]["train_loss"] < m["history"][0]["train_loss"]
    assert m["history"][-1]["lr_end"] < 0.05 * m["peak_lr"]      # one-cycle anneals to ~0
    assert predictions["probs"].shape == (100, 10) and torch.equal(predictions["labels"], tiny_data.test_y)
    assert lib.accuracy(predictions["probs"], predictions["labels"]) == m["final_test_acc"]   # one evaluation


def test_the_trace_records_each_layer_and_changes_nothing(tiny_data):
    plain = train_tiny(tiny_data, "bn", batch_size=20)
    traced = train_tiny(tiny_data, "bn", batch_size=20, trace_every=3)
    assert strip(plain.metrics["history"]) == strip(traced.metrics["history"])
    assert all(torch.equal(a, b) for a, b in zip(plain.model.state_dict().values(), traced.model.state_dict().values()))
    trace = traced.metrics["trace"]
    assert trace["step"] == [0, 3, 6, 9] and list(trace["layers"]) == [n for n in lib.LAYERS if n.startswith("C")]
    c1 = trace["layers"]["C1"]
    assert all(len(v) == 4 for v in c1.values()) and all(v > 0 for v in c1["weight_norm"] + c1["grad_norm"])
    assert all(0 < v < 0.5 for v in c1["rotation"])                   # radians the step turned the weight by
    assert "trace" not in plain.metrics


def test_the_weight_average_is_what_gets_evaluated_and_returned(tiny_data):
    torch.manual_seed(0)
    init = lib.build_model("bn").state_dict()
    sgd = dict(optimizer="SGD-Nesterov", dirac=False)      # Muon's first step rescales every weight: a jump to average
    live = train_tiny(tiny_data, batch_size=20, recipe=sgd)
    slow = train_tiny(tiny_data, batch_size=20, recipe=dict(sgd, ema=0.999))   # 10 steps of a slow average
    moved = lambda model: sum((v.float() - init[k].float()).norm() for k, v in model.state_dict().items()
                              if v.is_floating_point())
    assert 0 < moved(slow.model) < 0.05 * moved(live.model)
    same = train_tiny(tiny_data, batch_size=20, recipe=dict(sgd, ema=1e-12))  # an average that follows the weights
    assert same.metrics["history"][0]["test_acc"] == live.metrics["history"][0]["test_acc"]
    assert all(torch.allclose(a, b) for a, b in zip(same.model.state_dict().values(), live.model.state_dict().values()))


def test_adamw_decays_only_conv_weights_and_trains(tiny_data):
    recipe = dict(lib.RECIPE, optimizer="AdamW", weight_decay=0.05)
    model = lib.build_model("bn")
    opt = lib.make_optimizer(model, 0.01, recipe)
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] == 0.05 for p in g["params"]}
    assert isinstance(opt, torch.optim.AdamW)
    assert decayed == {id(m.weight) for m in model.modules() if isinstance(m, nn.Conv2d)}
    m = train_tiny(tiny_data, epochs=2, recipe=dict(optimizer="AdamW", peak_lr=0.01, weight_decay=0.05)).metrics
    assert m["history"][-1]["train_loss"] < m["history"][0]["train_loss"]


def test_graph_step_update_is_torch_sgd_nesterov():
    """CudaGraphStep's written-out update (LR in a tensor) must be the step torch.optim.SGD takes."""
    torch.manual_seed(0)
    models = [lib.build_model("gn") for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    recipe = dict(lib.RECIPE, optimizer="SGD-Nesterov", weight_decay=0.01)   # large, so a decay mistake would show
    opts = [lib.make_optimizer(m, 0.0, recipe) for m in models]
    bufs = [torch.zeros_like(p) for g in opts[1].param_groups for p in g["params"]]
    before = [p.detach().clone() for p in models[0].parameters()]
    for lr in (0.05, 0.2, 0.1):
        x = torch.randn(4, 3, 32, 32)
        for m in models:
            m.zero_grad(set_to_none=True)
            m(x).square().mean().backward()
        for g in opts[0].param_groups:
            g["lr"] = lr
        opts[0].step()
        with torch.no_grad():
            cuda_graphs.sgd_nesterov_(opts[1], bufs, torch.tensor(lr))
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert all((a != b).any() for a, b in zip(models[0].parameters(), before))


def test_one_cycle_rises_then_falls():
    lrs = [lib.one_cycle(s, 100, 0.4, 0.25) for s in range(100)]
    assert max(lrs) == pytest.approx(0.4) and lrs.index(max(lrs)) == 24
    assert lrs[0] < lrs[10] < lrs[24] and lrs[50] > lrs[99] >= 0


@pytest.mark.parametrize("kwargs, words", [
    (dict(norm="in"), ["'in'", "bn, gn, ln"]),
    (dict(epochs=0), ["epochs=0", "1 to 20"]),
    (dict(epochs=21), ["epochs=21", "1 to 20"]),
    (dict(epochs=True), ["epochs=True", "integer"]),
    (dict(batch_size=0), ["batch_size=0"]),
    (dict(batch_size=100_000), ["batch_size=100000"]),
    (dict(batch_size=201), ["batch_size=201", "200"]),          # more than the tiny training set
    (dict(seed="abc"), ["seed='abc'"]),
    (dict(seed=1.5), ["seed=1.5"]),
    (dict(subset=-5), ["subset=-5"]),
    (dict(subset="all"), ["subset='all'"]),
    (dict(subset=500), ["subset=500", "200"]),                  # more than the tiny data set holds
    (dict(norm="bn", groups=4), ["groups=4", "gn"]),
    (dict(precision="fp16"), ["'fp16'", "auto, bf16, fp32"]),
    (dict(cuda_graphs=True, device="cpu"), ["cuda_graphs=True", "CUDA"]),
    (dict(recipe=dict(optimizer="Adam")), ["'Adam'", "SGD-Nesterov, AdamW"]),
])
def test_bad_parameters_are_refused_by_name_in_one_line(kwargs, words, tiny_data):
    with pytest.raises(lib.NormbookError) as e:
        train_tiny(tiny_data, **kwargs)
    assert all(w in str(e.value) for w in words), str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("peak_lr", [float("nan"), 1e30])
def test_a_run_whose_loss_is_not_finite_stops_and_names_the_epoch(tiny_data, peak_lr):
    with pytest.raises(lib.TrainingDiverged, match="epoch 1 of 2.*nothing was saved"):
        train_tiny(tiny_data, epochs=2, recipe=dict(peak_lr=peak_lr))
