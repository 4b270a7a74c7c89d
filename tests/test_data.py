"""Data: the ImageFolder reader, its cache, subsets, the validation split, augmentation."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

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


CAT0 = 3          # train/cat/0000.png lands at index 3 of the interleaved tree (rank 0, label 3)


def decoded_cat0(tree, image: Image.Image, name="0000.png", **save) -> np.ndarray:
    """The tree's train/cat/0000.png replaced by `image` (saved as `name`), loaded: its (32, 32, 3) pixels."""
    (tree / "train" / "cat" / "0000.png").unlink()
    image.save(tree / "train" / "cat" / name, **save)
    return lib.load_cifar10(tree, full=False).train_x[CAT0].permute(1, 2, 0).numpy()


def test_a_16_bit_png_keeps_its_high_byte_not_white(tiny_tree):
    v = np.random.default_rng(0).integers(0, 65536, (32, 32), dtype=np.uint16)
    v[0, :4] = [0, 255, 256, 65535]
    x = decoded_cat0(tiny_tree, Image.fromarray(v))                     # opens as mode I;16
    assert (x == (v >> 8)[:, :, None].astype(np.uint8)).all()
    assert x[0, :4, 0].tolist() == [0, 0, 1, 255] and (x == 255).mean() < 0.05


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA"])
def test_grey_palette_and_alpha_images_decode_to_their_rgb(tiny_tree, mode):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    if mode == "L":
        image, expected = Image.fromarray(rgb[:, :, 0], "L"), np.repeat(rgb[:, :, :1], 3, axis=2)
    elif mode == "P":                                       # 16 palette colours, each pixel an index
        palette, index = rng.integers(0, 256, (16, 3), dtype=np.uint8), rng.integers(0, 16, (32, 32), dtype=np.uint8)
        image, expected = Image.fromarray(index, "P"), palette[index]
        image.putpalette(palette.flatten().tolist())
    elif mode == "RGBA":                                    # the colour, whatever the alpha
        image, expected = Image.fromarray(np.dstack([rgb, rng.integers(0, 256, (32, 32), dtype=np.uint8)]), "RGBA"), rgb
    else:                                                   # the grey, whatever the alpha
        image, expected = Image.fromarray(rgb[:, :, :2], "LA"), np.repeat(rgb[:, :, :1], 3, axis=2)
    assert (decoded_cat0(tiny_tree, image) == expected).all()


def test_a_cmyk_jpeg_decodes_to_its_rgb(tiny_tree):
    cmyk = np.zeros((32, 32, 4), dtype=np.uint8)
    cmyk[:16, :, 0] = 255                                   # top half cyan, bottom half white
    x = decoded_cat0(tiny_tree, Image.fromarray(cmyk, "CMYK"), "0000.jpg", quality=100).astype(int)
    assert np.abs(x[:16] - [0, 255, 255]).max() <= 3 and np.abs(x[16:] - 255).max() <= 3


@pytest.mark.parametrize("pixels", [np.float32, np.int32])
def test_float_and_32_bit_images_are_refused_naming_the_mode(tiny_tree, pixels):
    image = Image.fromarray(np.full((32, 32), 70000, dtype=pixels))     # mode F or I, as a TIFF named .png
    with pytest.raises(lib.NormbookError, match=f"0000.png has pixels of mode {image.mode}, which have no agreed"):
        decoded_cat0(tiny_tree, image, format="TIFF")


def test_an_image_not_32x32_is_refused_naming_it(tiny_tree):
    with pytest.raises(lib.NormbookError, match="cat/0000.png is 33x32; CIFAR-10 images are 32x32"):
        decoded_cat0(tiny_tree, Image.new("RGB", (33, 32)))


def test_a_dangling_symlink_is_refused_in_one_line_naming_it(tiny_tree, tmp_path):
    link = tiny_tree / "train" / "cat" / "0003.png"
    link.symlink_to(tmp_path / "gone.png")
    for load in (lambda: lib.load_cifar10(tiny_tree, full=False), lambda: lib.read_image(link)):
        with pytest.raises(lib.NormbookError, match="cat/0003.png is a dangling symbolic link") as e:
            load()
        assert "\n" not in str(e.value) and e.value.__cause__ is None and e.value.__suppress_context__


def test_an_image_rewritten_in_place_with_the_same_size_time_and_inode_rebuilds_the_cache(tiny_tree):
    f = tiny_tree / "train" / "cat" / "0000.png"
    rng = np.random.default_rng(2)
    old, new = (rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(2))
    Image.fromarray(old).save(f, compress_level=0)          # stored, not deflated: both files the same size
    assert (lib.load_cifar10(tiny_tree, full=False).train_x[CAT0].permute(1, 2, 0).numpy() == old).all()
    before = os.stat(f)
    Image.fromarray(new).save(tiny_tree / "new.png", compress_level=0)
    with open(f, "r+b") as out:                             # same inode
        out.write((tiny_tree / "new.png").read_bytes())
    os.utime(f, ns=(before.st_atime_ns, before.st_mtime_ns))  # same time
    after = os.stat(f)
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (before.st_size, before.st_mtime_ns, before.st_ino)
    assert (lib.load_cifar10(tiny_tree, full=False).train_x[CAT0].permute(1, 2, 0).numpy() == new).all()


def test_touching_unchanged_images_keeps_the_cache(tiny_tree, monkeypatch):
    good = lib.load_cifar10(tiny_tree, full=False)
    for f in (tiny_tree / "train" / "dog").iterdir():
        os.utime(f, ns=(0, 10**18))                         # another time, the same bytes
    def decode(*a):
        raise AssertionError("decoded again: the cache was not used")
    monkeypatch.setattr(lib, "_read_image_folder", decode)
    assert torch.equal(lib.load_cifar10(tiny_tree, full=False).train_x, good.train_x)


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
