"""bench/throughput.py: its alternative GroupNorm implementations compute what nn.GroupNorm does."""
import sys

import pytest
import torch

from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import throughput  # noqa: E402


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


def test_bare_step_with_a_swapped_group_norm_runs():
    assert throughput.step_images_per_s("gn", torch.contiguous_format, "fp32", batch_size=4, steps=1,
                                        group_norm=throughput.GroupNormFromReductions) > 0
