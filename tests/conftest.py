from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import lib

ROOT = lib.ROOT


def make_image_folder(root: Path, train_per_class=3, test_per_class=2, classes=lib.CLASSES, size=32) -> Path:
    """A tiny CIFAR-10-shaped ImageFolder tree of random PNGs: root/{train,test}/<class>/*.png."""
    rng = np.random.default_rng(0)
    for split, n in (("train", train_per_class), ("test", test_per_class)):
        for name in classes:
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(d / f"{i:04d}.png")
    return root


@pytest.fixture
def tiny_tree(tmp_path):
    return make_image_folder(tmp_path / "cifar")


@pytest.fixture
def tiny_data():
    """Synthetic in-memory data, learnable (class = brightest channel pattern), 200 train / 100 test."""
    import torch
    g = torch.Generator().manual_seed(0)
    def split(n):
        y = torch.arange(n) % 10
        x = torch.randint(0, 120, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
        x[:, y % 3] += (y[:, None, None] * 12).to(torch.uint8)  # a class-dependent brightness cue
        return x, y
    (tx, ty), (vx, vy) = split(200), split(100)
    return lib.Cifar10(tx, ty, vx, vy, "synthetic test data")


def train_tiny(data, norm="bn", device=None, cuda_graphs=None, trace_every=0, **spec):
    """One quick fp32 epoch on tiny data (`spec`: other RunSpec fields): a TrainedRun."""
    spec = lib.RunSpec(norm, **{"epochs": 1, "batch_size": 50, "precision": "fp32", **spec})
    return lib.train(spec, data, device=device, progress=False, cuda_graphs=cuda_graphs, trace_every=trace_every)
