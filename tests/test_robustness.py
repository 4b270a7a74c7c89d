"""robustness.py: GN and LN ignore the input's scale and their batch companions; the corruptions are
deterministic and stay images."""
import pytest
import torch

import lib
import robustness


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    out = {}
    for norm in lib.NORMS:
        model = lib.build_model(norm).eval()
        for m in model.modules():              # trained-looking BN statistics and non-trivial gamma/beta
            if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.GroupNorm)):
                torch.nn.init.normal_(m.weight, 1.0, 0.2), torch.nn.init.normal_(m.bias, 0.0, 0.2)
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.5), m.running_var.uniform_(0.5, 2.0)
        out[norm] = model
    return out


def test_gn_and_ln_are_invariant_to_the_input_scale_and_bn_is_not(models):
    x = torch.randn(16, 3, 32, 32)
    for norm, model in models.items():
        change = (robustness.logits(model, 2 * x, "fp32") - robustness.logits(model, x, "fp32")).abs().max()
        assert (change < 1e-3) == (norm != "bn"), (norm, float(change))


def test_gn_and_ln_ignore_their_batch_companions_at_any_batch_size(models):
    x, y = torch.randn(24, 3, 32, 32), torch.arange(24) % 10
    for norm, model in models.items():
        for b in (1, 2, 8):
            result = robustness.batch_dependence(model, x, y, "fp32", b)
            assert (result["changed"] == 0) == (norm != "bn") or (norm == "bn" and b == 1), (norm, b, result)
        if norm != "bn":
            alone = torch.cat([robustness.logits(model, x[i:i + 1], "fp32") for i in range(len(x))])
            assert torch.allclose(alone, robustness.logits(model, x, "fp32"), atol=1e-4)   # batch of 1 == batch of 24


def test_recalibration_leaves_the_model_alone_and_sets_new_statistics(models):
    bn = models["bn"]
    before = {k: v.clone() for k, v in bn.state_dict().items()}
    x = 3 * torch.randn(32, 3, 32, 32) + 1
    fresh = robustness.recalibrated(bn, x, "fp32")
    assert all(torch.equal(before[k], v) for k, v in bn.state_dict().items())
    first = [m for m in fresh.modules() if isinstance(m, torch.nn.BatchNorm2d)][0]
    conv_out = fresh[0][0](x)
    assert torch.allclose(first.running_mean, conv_out.mean(dim=(0, 2, 3)), atol=1e-4) and not fresh.training


def test_a_severity_out_of_range_is_refused():
    with pytest.raises(lib.NormbookError, match="severity=0"):
        robustness.corrupt(torch.zeros(1, 3, 32, 32, dtype=torch.uint8), "jpeg", 0)


@pytest.mark.parametrize("name", list(robustness.CORRUPTIONS))
def test_corruptions_are_deterministic_images_that_grow_with_severity(name):
    x = torch.randint(30, 220, (8, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    a, b = robustness.corrupt(x, name, 3), robustness.corrupt(x, name, 3)
    assert torch.equal(a, b) and a.dtype == torch.uint8 and a.shape == x.shape
    distance = [(robustness.corrupt(x, name, s).float() - x.float()).abs().mean() for s in (1, 5)]
    assert 0 < distance[0] < distance[1]
