"""levers.py: Muon for the conv weights, a whitened first layer, identity init, alternating flip; each
off by default and each one recipe key."""
import re

import pytest
import torch
import torch.nn as nn

import levers
import lib
from conftest import train_tiny


def test_newton_schulz_orthogonalises():
    g = torch.randn(16, 144)
    s = torch.linalg.svdvals(levers.newton_schulz(g))
    assert s.max() < 1.3 and s.min() > 0.5          # all singular values pulled towards 1 (not exactly: 5 steps)
    assert levers.newton_schulz(torch.randn(40, 8)).shape == (40, 8)


def test_muon_steps_the_3x3_convs_and_sgd_the_rest(tiny_data):
    model = lib.build_model("gn")
    recipe = dict(lib.RECIPE, optimizer="Muon", muon_lr=0.05)
    opt = lib.make_optimizer(model, 0.1, recipe)
    muon = {id(p) for p in opt.optimizers[1].param_groups[0]["params"]}
    convs = {id(m.weight) for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)}
    assert muon == convs and not muon & {id(p) for g in opt.optimizers[0].param_groups for p in g["params"]}
    assert opt.optimizers[1].param_groups[0]["lr_scale"] == pytest.approx(0.5)
    run = train_tiny(tiny_data, "gn", epochs=2, recipe=dict(optimizer="Muon"))
    assert run.metrics["history"][-1]["train_loss"] < run.metrics["history"][0]["train_loss"]
    conv = run.model[1][0].weight                    # C2: rescaled to norm sqrt(out) before each step
    assert conv.norm().item() == pytest.approx(len(conv) ** 0.5, rel=0.2)


def test_whitened_first_layer_whitens_patches_and_can_be_frozen(tiny_data):
    x = lib.normalize(tiny_data.train_x, *map(torch.tensor, tiny_data.mean_std()))
    w = levers.whitening_filters(x, 16)
    out = torch.nn.functional.conv2d(x, w).permute(1, 0, 2, 3).reshape(16, -1)
    cov = torch.cov(out)
    assert torch.allclose(cov.diag()[:4], torch.ones(4), atol=0.05)     # leading directions: unit variance
    assert (cov - torch.diag(cov.diag())).abs().max() < 0.05            # and uncorrelated
    frozen = train_tiny(tiny_data, "bn", recipe=dict(whiten="frozen"))
    torch.testing.assert_close(frozen.model[0][0].weight.float(), w.float(), rtol=1e-3, atol=1e-4)  # never trained


def test_dirac_init_makes_equal_width_convs_the_identity_and_leaves_the_others():
    model = lib.build_model("bn")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    levers.initialise(model, dict(lib.RECIPE, dirac=True), torch.randn(4, 3, 32, 32))
    x = torch.randn(2, 16, 8, 8)
    assert torch.allclose(model[1][0](x), x)                                   # C2: 16 -> 16, the identity
    for name in ("0.0.weight", "4.0.weight"):                                  # C1 (3 -> 16), C3 (16 -> 24)
        assert torch.equal(model.state_dict()[name], before[name]), name


def test_alternating_flip_flips_each_image_every_other_epoch():
    x = torch.arange(2 * 3 * 4 * 4).reshape(2, 3, 4, 4)
    first = torch.tensor([True, False])
    e1, e2, e3 = (levers.alternating_flip(x, first, e) for e in (1, 2, 3))
    assert torch.equal(e1[0], x[0].flip(2)) and torch.equal(e1[1], x[1])
    assert torch.equal(e2[0], x[0]) and torch.equal(e2[1], x[1].flip(2)) and torch.equal(e3, e1)


def test_with_the_levers_off_training_never_imports_them():
    import subprocess
    import sys
    code = ("import sys, torch, lib; g = torch.Generator().manual_seed(0); "
            "x = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8, generator=g); y = torch.arange(40) % 10; "
            "off = dict(optimizer='SGD-Nesterov', dirac=False); "          # the two levers the recipe adopted
            "lib.train(lib.RunSpec('gn', epochs=1, batch_size=20, recipe=off), lib.Cifar10(x, y, x, y, 't'), "
            "progress=False); assert 'levers' not in sys.modules")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, cwd=lib.ROOT).returncode == 0


def test_a_mistyped_lever_is_refused_by_name(tiny_data):
    for change, words in [(dict(flip="alternating"), "unknown flip 'alternating'"),
                          (dict(whiten="Frozen"), "unknown whiten 'Frozen'"),
                          (dict(lable_smoothing=0.1), "unknown recipe keys ['lable_smoothing']")]:
        with pytest.raises(lib.NormbookError, match=re.escape(words)):
            train_tiny(tiny_data, recipe=change)
