"""CUDA-only checks. CI has no GPU, so there they are skipped; run them where a GPU is at hand."""
import pytest
import torch

import lib

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("norm", lib.NORMS)
def test_cuda_graph_steps_train_like_eager_steps(norm, tiny_data):
    # 200 images at batch 64: per epoch, three graph replays and one eager step on the last 8 images.
    runs = {graphs: lib.train(norm, epochs=3, batch_size=64, data=tiny_data, precision="fp32", device="cuda",
                              progress=False, cuda_graphs=graphs)[1] for graphs in (True, False)}
    assert runs[True]["cuda_graphs"] and not runs[False]["cuda_graphs"]
    for with_graphs, eager in zip(runs[True]["history"], runs[False]["history"]):
        assert with_graphs["train_loss"] == pytest.approx(eager["train_loss"], rel=1e-3)
        assert with_graphs["test_loss"] == pytest.approx(eager["test_loss"], rel=1e-3)   # BN running averages too
    assert runs[True]["history"][-1]["train_loss"] < runs[True]["history"][0]["train_loss"]   # it did learn
