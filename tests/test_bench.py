"""bench/throughput.py: its alternative GroupNorm implementations compute what nn.GroupNorm does."""
import pytest
import torch

from bench import throughput


@pytest.mark.parametrize("cls", [throughput.GroupNormFp32Input, throughput.GroupNormViaBatchNorm,
                                 throughput.GroupNormFromReductions])
def test_group_norm_alternatives_match_pytorch(cls):
    torch.manual_seed(0)
    ref = torch.nn.GroupNorm(8, 16)
    torch.nn.init.normal_(ref.weight), torch.nn.init.normal_(ref.bias)
    alt = cls(8, 16)
    alt.load_state_dict(ref.state_dict())
    x = torch.randn(4, 16, 8, 8) * 3 + 1
    layouts = [torch.contiguous_format] + ([] if cls is throughput.GroupNormViaBatchNorm else [torch.channels_last])
    for layout in layouts:
        torch.testing.assert_close(alt(x.contiguous(memory_format=layout)), ref(x), atol=1e-5, rtol=1e-5)


def test_swapped_group_norm_model_computes_the_same_outputs():
    torch.manual_seed(0)
    model = throughput.lib.build_model("gn").eval()
    for m in model.modules():
        if isinstance(m, torch.nn.GroupNorm):                       # non-trivial gamma/beta must be carried over
            torch.nn.init.normal_(m.weight), torch.nn.init.normal_(m.bias)
    x = torch.randn(2, 3, 32, 32)
    expected = model(x)
    swapped = throughput.swap_group_norm(model, throughput.GroupNormFromReductions)
    kinds = {type(m) for m in swapped.modules() if isinstance(m, torch.nn.GroupNorm)}
    assert kinds == {throughput.GroupNormFromReductions}
    torch.testing.assert_close(swapped(x), expected, atol=1e-4, rtol=1e-4)
