"""Data: the ImageFolder reader, its cache, subsets, the validation split, augmentation."""
import os

import pytest
import torch

import lib
from conftest import make_image_folder


def test_image_folder_tree_loads_interleaved_and_cached(tiny_tree):
    d = lib.load_cifar10(tiny_tree, full=False)
    assert d.train_x.shape == (30, 3, 32, 32) and d.train_x.dtype == torch.uint8 and d.test_x.shape == (20, 3, 32, 32)
    assert d.train_y[:10].tolist() == list(range(10))       # classes interleaved: any prefix is balanced
    assert (tiny_tree / "cifar10_uint8.pt").exists()
    again = lib.load_cifar10(tiny_tree, full=False)
    assert torch.equal(again.train_x, d.train_x) and "ImageFolder" in again.source


def test_cache_is_rebuilt_when_the_images_change(tiny_tree):
    before = lib.load_cifar10(tiny_tree, full=False)
    cat, dog = tiny_tree / "train" / "cat", tiny_tree / "train" / "dog"       # swap two classes' images
    os.rename(cat, tiny_tree / "swap"); os.rename(dog, cat); os.rename(tiny_tree / "swap", dog)
    after = lib.load_cifar10(tiny_tree, full=False)
    assert not torch.equal(after.train_x, before.train_x)
    assert torch.equal(after.train_x[lib.CLASSES.index("cat")], before.train_x[lib.CLASSES.index("dog")])


@pytest.mark.parametrize("content", [b"", b"garbage", None])
def test_unreadable_cache_is_rebuilt(tiny_tree, content):
    good = lib.load_cifar10(tiny_tree, full=False)
    cache = tiny_tree / "cifar10_uint8.pt"
    cache.write_bytes(content if content is not None else cache.read_bytes()[:100])   # empty, garbage, truncated
    assert torch.equal(lib.load_cifar10(tiny_tree, full=False).train_x, good.train_x)


def test_read_only_data_folder_works_without_a_cache(tiny_tree, monkeypatch):
    def read_only(obj, path):
        raise PermissionError(13, "Read-only file system", str(path))
    monkeypatch.setattr(lib, "save_tensors", read_only)        # chmod does not stop root, so simulate it
    assert len(lib.load_cifar10(tiny_tree, full=False).train_y) == 30
    assert not (tiny_tree / "cifar10_uint8.pt").exists()


def test_bad_trees_are_refused_by_name(tmp_path, tiny_tree):
    with pytest.raises(lib.NormbookError, match="holds 3 images; expected 5000"):
        lib.load_cifar10(tiny_tree, full=True)
    make_image_folder(tmp_path / "u", classes=lib.CLASSES[:9] + ("unicorn",))
    with pytest.raises(lib.NormbookError, match="unicorn"):
        lib.load_cifar10(tmp_path / "u", full=False)


def test_empty_class_missing_split_and_broken_image_are_named(tiny_tree):
    jpeg = tiny_tree / "train" / "bird" / "0000.png"
    jpeg.write_bytes(jpeg.read_bytes()[:60])                         # truncated
    with pytest.raises(lib.NormbookError, match="0000.png cannot be decoded"):
        lib.load_cifar10(tiny_tree, full=False)
    for f in (tiny_tree / "train" / "bird").iterdir():
        f.unlink()
    with pytest.raises(lib.NormbookError, match="bird holds 0 images"):
        lib.load_cifar10(tiny_tree, full=False)
    for f in (tiny_tree / "test").rglob("*.png"):
        f.unlink()
    for d in sorted((tiny_tree / "test").iterdir()):
        d.rmdir()
    (tiny_tree / "test").rmdir()
    with pytest.raises(lib.NormbookError, match="test is missing"):
        lib.load_cifar10(tiny_tree, full=False)


def test_missing_data_offline_says_how_to_provide_it(tmp_path, monkeypatch):
    import torchvision
    def offline(*a, **k):
        raise OSError("no network")
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(lib.NormbookError) as e:
        lib.load_cifar10(tmp_path / "nowhere")
    assert "nowhere" in str(e.value) and "tar xzf" in str(e.value)


def test_subset_and_holdout(tiny_data):
    s = tiny_data.subset(20)
    assert len(s.train_y) == 20 and len(s.test_y) == 20 and "first 20" in s.source
    assert tiny_data.subset(0) is tiny_data
    with pytest.raises(lib.NormbookError, match="subset=500"):
        tiny_data.subset(500)
    v = tiny_data.holdout(50)
    assert torch.equal(v.test_x, tiny_data.train_x[150:]) and torch.equal(v.train_x, tiny_data.train_x[:150])
    assert v.test_y.bincount().tolist() == [5] * 10 and "validation" in v.source
    with pytest.raises(lib.NormbookError, match="holdout"):
        tiny_data.holdout(200)


def test_flip_is_drawn_per_image_and_keeps_shape_and_dtype():
    x = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    out = lib.augment(x, torch.Generator().manual_seed(0), flip=True, translate=0)
    assert out.shape == x.shape and out.dtype == torch.uint8
    flipped = [torch.equal(o, xi.flip(2)) for o, xi in zip(out, x)]
    assert all(f or torch.equal(o, xi) for f, o, xi in zip(flipped, out, x))
    assert 10 < sum(flipped) < 54


def test_translate_moves_each_image_by_at_most_t_pixels():
    x = torch.arange(32 * 32, dtype=torch.float32).reshape(1, 1, 32, 32).repeat(16, 3, 1, 1)
    out = lib.augment(x, torch.Generator().manual_seed(1), flip=False, translate=2)
    centre = out[:, 0, 16, 16]                       # pixel value = 32*row + col of the source
    dy, dx = (centre // 32 - 16), (centre % 32 - 16)
    assert dy.abs().max() <= 2 and dx.abs().max() <= 2 and len(set(zip(dy.tolist(), dx.tolist()))) > 3


def test_cutout_fills_one_square_per_image_with_the_given_colour():
    x = torch.full((64, 3, 32, 32), 200, dtype=torch.uint8)
    out = lib.augment(x, torch.Generator().manual_seed(2), flip=False, cutout=8, fill=torch.tensor([10.0, 20.0, 30.0]))
    hit = out != 200
    assert torch.equal(hit[:, 0], hit[:, 1]) and torch.equal(hit[:, 0], hit[:, 2])
    for img, mask in zip(out, hit[:, 0]):
        rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
        assert 0 < len(rows) <= 8 and 0 < len(cols) <= 8 and mask.sum() == len(rows) * len(cols)
        assert img[:, rows[0], cols[0]].tolist() == [10, 20, 30]
    plain = lib.augment(x, torch.Generator().manual_seed(2), flip=True, translate=2)
    assert torch.equal(plain, lib.augment(x, torch.Generator().manual_seed(2), flip=True, translate=2, cutout=0))


def test_normalize_standardizes_with_given_mean_std():
    out = lib.normalize(torch.full((2, 3, 4, 4), 255, dtype=torch.uint8), torch.tensor([0.5, 0.5, 0.5]),
                        torch.tensor([0.25, 0.5, 1.0]))
    assert out.dtype == torch.float32 and torch.allclose(out[0, :, 0, 0], torch.tensor([2.0, 1.0, 0.5]))
