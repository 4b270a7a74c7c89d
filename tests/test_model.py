"""Model: the norms, the parameter budget, shortcuts, activations, receptive field."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import lib


@pytest.mark.parametrize("norm", lib.NORMS)
def test_params_under_budget_and_output_shape(norm):
    model = lib.build_model(norm)
    assert 40_000 < lib.count_params(model) < lib.MAX_PARAMS
    assert model(torch.randn(4, 3, 32, 32)).shape == (4, 10)


def test_the_norm_layers_really_used():
    def norms(m):
        return [mod for mod in m.modules() if isinstance(mod, (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm))]
    bn, gn, ln = (norms(lib.build_model(n)) for n in lib.NORMS)
    assert len(bn) == len(gn) == len(ln) == 8            # one after each 3x3 convolution
    assert all(type(m) is nn.BatchNorm2d for m in bn)
    assert all(type(m) is nn.GroupNorm and m.num_groups == 8 for m in gn)
    assert all(type(m) is nn.GroupNorm and m.num_groups == 1 for m in ln)
    assert len({lib.count_params(lib.build_model(n)) for n in lib.NORMS}) == 1   # gamma, beta per channel


def test_ln_normalizes_each_sample_over_c_h_w():
    x = torch.randn(3, 16, 8, 8) * 5 + 2
    assert torch.allclose(lib.make_norm("ln", 16)(x), F.layer_norm(x, x.shape[1:]), atol=1e-5)
    y = lib.make_norm("gn", 16)(x).reshape(3, 8, -1)          # each of 8 groups of 2 channels: mean 0, var 1
    assert torch.allclose(y.mean(-1), torch.zeros(3, 8), atol=1e-5)
    assert torch.allclose(y.var(-1, unbiased=False), torch.ones(3, 8), atol=1e-3)


def test_the_default_model_is_the_reported_network():
    model = lib.build_model("bn")          # the recipe's defaults: a norm and SiLU after each of the eight 3x3 convs
    modules = list(model.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in modules) == 8
    assert sum(isinstance(m, torch.nn.SiLU) for m in modules) == 8
    assert sum(isinstance(m, lib.Residual) for m in model) == 2       # around C4-C5 and C8-C9
    assert lib.count_params(model) < lib.MAX_PARAMS


def test_receptive_field_table_matches_hand_computation():
    rows = {r["layer"]: r for r in lib.receptive_field_table()}
    assert list(rows) == list(lib.LAYERS)
    expected = dict(C1=3, C2=5, c3=5, P1=6, C3=10, C4=14, C5=18, c6=18, P2=20, C7=28, C8=36, C9=44)
    assert {k: rows[k]["rf"] for k in expected} == expected
    assert rows["C9"]["output"] == "8x8" and rows["P1"]["jump"] == 2 and rows["P2"]["jump"] == 4


def test_shortcuts_add_each_block_input_and_nothing_else():
    plain, short = lib.build_model("bn", recipe=dict(shortcuts=False)), lib.build_model("bn", recipe=dict(shortcuts=True))
    assert lib.count_params(short) == lib.count_params(plain)
    assert [r["rf"] for r in lib.receptive_field_table(short)] == [r["rf"] for r in lib.receptive_field_table(plain)]
    blocks = [m for m in short if isinstance(m, lib.Residual)]
    assert len(blocks) == len(lib.SHORTCUTS) == 2
    x = torch.randn(2, 24, 16, 16)
    assert torch.equal(blocks[0].eval()(x), x + blocks[0][1](blocks[0][0](x)))
    with pytest.raises(lib.NormbookError, match="needs one width"):
        lib.build_model("bn", recipe=dict(widths=dict(lib.WIDTHS, C5=32), shortcuts=True))


def test_the_activation_is_one_switch_that_adds_no_parameters():
    relu, silu = (lib.build_model("gn", recipe=dict(activation=a)) for a in ("relu", "silu"))
    acts = lambda model: [type(m) for m in model.modules() if isinstance(m, (nn.ReLU, nn.SiLU, nn.Hardswish))]
    assert lib.count_params(silu) == lib.count_params(relu)
    assert acts(relu) == [nn.ReLU] * 8 and acts(silu) == [nn.SiLU] * 8
    with pytest.raises(lib.NormbookError, match="unknown activation 'tanh': choose one of relu, silu, hardswish"):
        lib.build_model("bn", recipe=dict(activation="tanh"))


def test_model_over_budget_is_refused():
    with pytest.raises(lib.NormbookError, match="parameters; the budget is fewer than 50,000"):
        lib.build_model("bn", recipe=dict(widths=dict(lib.WIDTHS, C7=64, C8=64, C9=64)))


def test_group_counts_and_instance_norm():
    groups = lambda g: [m.num_groups for m in lib.build_model("gn", g).modules() if isinstance(m, nn.GroupNorm)]
    convs = [v for k, v in lib.WIDTHS.items() if k.startswith("C")]
    assert groups(4) == [4] * 8
    assert groups("C/1") == convs and groups("C/2") == [v // 2 for v in convs]
    with pytest.raises(lib.NormbookError, match="divisible"):
        lib.build_model("gn", groups=5)
    with pytest.raises(lib.NormbookError, match="'C/x' is invalid"):
        lib.check_params(lib.RunSpec("gn", groups="C/x"))


def test_a_record_lacking_a_recipe_key_is_refused_in_one_error_naming_the_keys():
    record = dict(norm="bn", seed=0, recipe=dict(lib.RECIPE, shortcuts=False))
    assert lib.recorded_recipe(record) == dict(lib.RECIPE, shortcuts=False)
    del record["recipe"]["bn_ghost"], record["recipe"]["whiten"]
    with pytest.raises(lib.NormbookError, match=r"^a run record \(bn, seed 0\) lacks recipe keys bn_ghost, whiten: "):
        lib.recorded_recipe(record)


@pytest.mark.parametrize("seed", [2**63, 2**64, -1, 1.5, True])
def test_a_seed_torch_cannot_take_is_refused_in_one_error(seed):
    with pytest.raises(lib.NormbookError, match=r"seed=.* is invalid"):
        lib.check_params(lib.RunSpec("bn", seed=seed))
