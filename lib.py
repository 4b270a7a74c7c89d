"""normbook: Batch, Group and Layer Normalization compared on CIFAR-10, everything else held fixed.

The report's engine, read top to bottom in six sections: configuration, data, model, training,
artifacts, evaluation. The notebooks in book/ call into it and into report.py, which turns the run
artifacts into the summary, findings and figures they print. Beside them: experiments.py runs the
experiments, whose plans are data files (runs/<folder>/plan.json); levers.py holds the training options
those experiments measure and the recipe leaves off; robustness.py holds the evaluations under shifted
inputs; cuda_graphs.py is the GPU's training step; publish.py writes the README's results block and the
notebooks' Colab cell. Of these, lib imports only levers (lazily, when a lever is on) and cuda_graphs,
and neither imports lib (tests/test_imports.py).
"""
from __future__ import annotations

import copy
import fcntl
import hashlib
import json
import math
import os
import platform
import shutil
import tempfile
import time
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm         # plain text: papermill runs have no widget front end

from cuda_graphs import CudaGraphStep

ROOT = Path(__file__).resolve().parent

# =============================================================================================
# Configuration
# =============================================================================================

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
NORMS = ("bn", "gn", "ln")
NORM_NAMES = {"bn": "BatchNorm", "gn": "GroupNorm (8 groups)", "ln": "LayerNorm"}
MAX_EPOCHS = 20          # the exercise's ceiling
MAX_PARAMS = 50_000      # the exercise's ceiling, strict: a model must have fewer
GN_GROUPS = 8
MAIN_BATCH = 128         # the batch size of the reported runs
TRACE_EVERY = 40         # the reported runs record a Tracer point every 40 steps (196 per run)
FULL_COUNTS = {"train": 5000, "test": 1000}   # images per class in CIFAR-10
FULL_TRAIN, FULL_TEST = 10 * FULL_COUNTS["train"], 10 * FULL_COUNTS["test"]

# The one recipe all three norms share (how it was chosen: the book's tuning appendix, whose lever stages
# adopted Muon and the identity initialisation).
RECIPE = dict(
    optimizer="Muon",       # Muon for the 3x3 conv weights and SGD-Nesterov for the rest (levers.py); or
                            # "SGD-Nesterov" for all, or "AdamW" (decoupled weight decay; momentum is Adam's beta1)
    momentum=0.9,
    peak_lr=0.1,            # one-cycle peak learning rate, at batch size lr_batch
    lr_batch=128,           # other batch sizes scale the peak LR linearly
    warmup=0.25,            # fraction of all steps spent rising linearly from 0 to peak_lr
    weight_decay=5e-4,      # on the conv weights SGD updates (with Muon: the 1x1 convs); norm gammas/betas get none
    label_smoothing=0.1,
    translate=2,            # random translation in pixels (reflect padding), after the flip
    flip=True,              # or "alternate" (levers.py)
    shortcuts=True,         # identity shortcuts around C4-C5 and C8-C9 (no parameters)
    activation="silu",      # after every 3x3 conv's norm, one of ACTIVATIONS
    cutout=0,               # side in pixels of a square set to the mean colour per training image; 0: off
    ema=0.0,                # per-step decay of an average of the weights, evaluated and saved instead; 0: off
    widths=None,            # the width of every conv (a dict like WIDTHS); None: WIDTHS
    weight_std=False,       # Weight Standardization of every 3x3 conv's filters (no parameters)
    bn_ghost=0,             # BN only: training statistics from sub-batches of this many images; 0: the whole batch
    bn_frozen=False,        # BN only: after the warm-up, train with the running averages (no batch statistics)
    # Levers of the fast CIFAR-10 trainers (levers.py): the recipe adopted Muon's step and the identity start.
    muon_lr=0.05,           # with optimizer="Muon": the peak LR of the 3x3 conv weights' Muon step
    whiten="off",           # "trainable" or "frozen": C1 starts as a whitening of 3x3 patches
    dirac=True,             # equal-width 3x3 convs start as the identity
)
OPTIMIZERS = ("SGD-Nesterov", "AdamW", "Muon")
PRECISIONS = ("auto", "bf16", "fp32")


def recorded_recipe(metrics: dict) -> dict:
    """The full recipe a run record holds; a record lacking a key of RECIPE is refused, naming the keys. (A key
    added to RECIPE must be written, with the value the committed runs used, into every committed record.)"""
    if missing := [k for k in RECIPE if k not in metrics["recipe"]]:
        raise NormbookError(f"a run record ({metrics.get('norm')}, seed {metrics.get('seed')}) lacks recipe keys "
                            f"{', '.join(missing)}: every record holds the full recipe")
    return dict(metrics["recipe"])


class NormbookError(ValueError):
    """A bad parameter or bad data: the message names the value and what is allowed."""


def choose(what: str, value, options) -> None:
    """Refuse a value that is not one of `options`, naming them."""
    if value not in options:
        raise NormbookError(f"unknown {what} {value!r}: choose one of {', '.join(map(str, options))}")


def check_int(name: str, value, low: int, high: int | None = None) -> None:
    """Refuse anything but an int (bools are not ints here) in [low, high]."""
    if not isinstance(value, int) or isinstance(value, bool) or value < low or (high is not None and value > high):
        allowed = f"an integer from {low:,} to {high:,}" if high is not None else f"an integer >= {low:,}"
        raise NormbookError(f"{name}={value!r} is invalid: use {allowed}")


@dataclass(frozen=True)
class RunSpec:
    """What decides a run's numbers; how and where it runs are train's other arguments.
    subset: train and test on the first that many images (0: all); groups: GroupNorm's groups (None: GN_GROUPS);
    recipe: changes to RECIPE; precision: "fp32", "bf16" (autocast) or "auto" (bf16 where the hardware has it);
    max_epochs: only a measurement outside the exercise's budget, such as the ceiling experiment, raises it."""
    norm: str
    _: KW_ONLY
    epochs: int = MAX_EPOCHS
    batch_size: int = MAIN_BATCH
    seed: int = 0
    subset: int = 0
    groups: int | str | None = None
    recipe: dict = field(default_factory=dict)
    precision: str = "auto"
    max_epochs: int = MAX_EPOCHS


def check_params(spec: RunSpec, n_train: int = FULL_TRAIN) -> dict:
    """Refuse a bad RunSpec with a one-line message, before any work is done; return the run's whole recipe,
    RECIPE with the spec's changes. The one check of a run: train calls it, and the training notebook and
    experiments.py call it before they load any data. n_train: the training images at hand, which subset and
    batch_size must fit in."""
    choose("norm", spec.norm, NORMS)
    check_int("epochs", spec.epochs, 1, spec.max_epochs)
    check_int("seed", spec.seed, 0, 2**63 - 1)             # torch.manual_seed takes no more
    check_int("subset", spec.subset, 0, n_train)
    check_int("batch_size", spec.batch_size, 1, spec.subset or n_train)
    choose("precision", spec.precision, PRECISIONS)
    if spec.groups is not None:
        if spec.norm != "gn":
            raise NormbookError(f"groups={spec.groups!r} only applies to norm='gn', not {spec.norm!r}")
        group_count(spec.groups, GN_GROUPS)          # raises on a malformed value
    return check_recipe({**RECIPE, **spec.recipe})


def check_recipe(recipe: dict) -> dict:
    """Refuse unknown recipe keys and the values of its switches that no code reads."""
    unknown = sorted(set(recipe) - set(RECIPE))
    if unknown:
        raise NormbookError(f"unknown recipe keys {unknown}: the recipe has {', '.join(RECIPE)}")
    choose("optimizer", recipe["optimizer"], OPTIMIZERS)
    choose("activation", recipe["activation"], ACTIVATIONS)
    choose("flip", recipe["flip"], (True, False, "alternate"))
    choose("whiten", recipe["whiten"], ("off", "trainable", "frozen"))
    choose("bn_frozen", recipe["bn_frozen"], (True, False))
    check_int("bn_ghost", recipe["bn_ghost"], 0)
    return recipe


def is_main_setting(epochs: int, batch_size: int, subset: int, groups) -> bool:
    """Whether a run is trained like the reported ones (all data, 20 epochs, batch 128, 8 groups)."""
    return (epochs, batch_size, subset) == (MAX_EPOCHS, MAIN_BATCH, 0) and groups in (None, GN_GROUPS)


def default_out_dir(norm: str, seed: int, epochs: int, batch_size: int, subset: int, groups) -> str:
    """runs/<norm>-s<seed> for a run trained like the reported ones; any other run (a smoke run, say)
    goes under runs/scratch/ (git-ignored), so it can never replace a reported result."""
    if is_main_setting(epochs, batch_size, subset, groups):
        return f"runs/{norm}-s{seed}"
    g = "" if groups is None else f"-g{str(groups).replace('/', '')}"
    return f"runs/scratch/{norm}-s{seed}-e{epochs}-b{batch_size}-n{subset}{g}"


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def bf16_supported(device: torch.device) -> bool:
    """bf16 autocast pays only where the hardware has bf16 arithmetic (AVX512-BF16/AMX, or a GPU)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return any(flag in _cpuinfo() for flag in ("avx512_bf16", "amx_bf16"))


def trains_in(precision: str, device: torch.device) -> str:
    """The precision a run asks for, resolved: "auto" is bf16 where the hardware has it, else fp32."""
    return ("bf16" if bf16_supported(device) else "fp32") if precision == "auto" else precision


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    names = [l.split(":", 1)[1].strip() for l in _cpuinfo().splitlines() if l.startswith("model name")]
    return f"CPU: {names[0] if names else platform.processor() or platform.machine()}, {os.cpu_count()} cores"


# =============================================================================================
# Data
# =============================================================================================
# The whole data set is decoded once to uint8 tensors (N, 3, 32, 32) and cached next to the data,
# with a fingerprint of the files it came from; training holds it in memory (on the GPU when there
# is one) and augments whole batches with tensor ops, so no per-image Python work happens in the loop.

class Cifar10(NamedTuple):
    """CIFAR-10 as uint8 tensors: train_x (N,3,32,32), train_y (N,), test_x, test_y, and `source`."""
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    source: str

    def subset(self, n: int, n_test: int | None = None) -> "Cifar10":
        """The first n train and first n_test (default n) test images; n=0: everything."""
        if n == 0:
            return self
        check_int("subset", n, 0, len(self.train_y))
        n_test = min(n if n_test is None else n_test, len(self.test_y))
        return Cifar10(self.train_x[:n], self.train_y[:n], self.test_x[:n_test], self.test_y[:n_test],
                       f"{self.source}, first {n:,} train / {n_test:,} test images")

    def holdout(self, n: int) -> "Cifar10":
        """Tuning data: train on all but the last n training images, evaluate on those n instead of
        the test set (the class-interleaved order makes them balanced: n/10 per class)."""
        check_int("holdout", n, 1, len(self.train_y) - 1)
        return Cifar10(self.train_x[:-n], self.train_y[:-n], self.train_x[-n:], self.train_y[-n:],
                       f"{self.source}; validation split: trained on the first {len(self.train_y) - n:,} "
                       f"training images, evaluated on the last {n:,} (test set unused)")

    def mean_std(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and std of the training pixels, in [0, 1] units."""
        x = self.train_x.float().div_(255)
        return x.mean(dim=(0, 2, 3)).tolist(), x.std(dim=(0, 2, 3)).tolist()


def interleaved(x: torch.Tensor, y: torch.Tensor):
    """The images reordered one of each class in turn, so that any prefix (a smoke-run subset, a
    validation split's complement) holds every class in equal measure."""
    rank_in_class = torch.empty_like(y)
    for k in range(len(CLASSES)):
        rank_in_class[y == k] = torch.arange(int((y == k).sum()))
    order = torch.argsort(rank_in_class * len(CLASSES) + y, stable=True)
    return x[order].contiguous(), y[order]


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
# Image modes whose 8-bit RGB is well defined, so Pillow's convert("RGB") gives it: grey, bilevel, palette,
# and those with an alpha channel, which is dropped (CIFAR-10 has no transparency); CMYK and YCbCr by
# Pillow's formulas. 16-bit grey is handled apart (read_image); any other mode is refused.
RGB_MODES = ("RGB", "L", "1", "P", "RGBA", "RGBX", "RGBa", "LA", "La", "PA", "CMYK", "YCbCr")


def _image_files(class_dir: Path) -> list[Path]:
    """The images of a class folder, sorted: what the reader decodes and the cache's fingerprint covers."""
    return sorted(f for f in class_dir.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)


def _unreadable(f: Path, e: Exception) -> NormbookError:
    if f.is_symlink() and not f.exists():                    # exists() follows the link
        return NormbookError(f"{f} is a dangling symbolic link (to {os.readlink(f)}); replace it or unpack the data "
                             "again")
    return NormbookError(f"{f} cannot be decoded ({e}); replace it or unpack the data again")


def read_image(f: Path):
    """One image file as a uint8 RGB array (32, 32, 3), or a one-line error naming the file."""
    from PIL import Image
    import numpy as np
    try:
        with Image.open(f) as im:
            mode = im.mode
            if mode.startswith("I;16") or (mode == "I" and im.format == "PNG"):   # 16-bit grey ("I" before Pillow 10)
                # The high byte, as Pillow reduces a 16-bit RGB PNG (and exact for 8-bit values stored as v*257);
                # convert("RGB") would clip every value above 255 to white.
                grey = (np.asarray(im).astype(np.int64) >> 8).clip(0, 255).astype(np.uint8)
                x = np.repeat(grey[:, :, None], 3, axis=2)
            elif mode in RGB_MODES:
                x = np.asarray(im.convert("RGB"), dtype=np.uint8)
            else:
                x = None
    except (OSError, ValueError, Image.DecompressionBombError) as e:   # broken, truncated, a link to nothing
        raise _unreadable(f, e) from None
    if x is None:
        raise NormbookError(f"{f} has pixels of mode {mode}, which have no agreed 8-bit RGB form: save it as 8-bit RGB")
    if x.shape != (32, 32, 3):
        raise NormbookError(f"{f} is {x.shape[1]}x{x.shape[0]}; CIFAR-10 images are 32x32")
    return x


def _read_image_folder(split_dir: Path, per_class: int | None):
    """Decode an ImageFolder split (split_dir/<class>/*) into uint8 tensors, checking what it holds."""
    import numpy as np
    found = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    if found != sorted(CLASSES):
        raise NormbookError(f"{split_dir} has class folders {found}; expected the 10 CIFAR-10 classes {list(CLASSES)}")
    images, labels = [], []
    for label, name in enumerate(CLASSES):
        files = _image_files(split_dir / name)
        if not files or (per_class is not None and len(files) != per_class):
            raise NormbookError(f"{split_dir / name} holds {len(files)} images; expected {per_class or 'at least one'}")
        images += [read_image(f) for f in files]
        labels += [label] * len(files)
    return interleaved(torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2), torch.tensor(labels, dtype=torch.int64))


CACHE = "cifar10_uint8.pt"


def data_fingerprint(data_dir: Path) -> str:
    """SHA-256 over the path and bytes of every data file (the class folders' images, or torchvision's batch
    files): the cache's key. Bytes, not sizes and times: an image rewritten in place can keep its size, time
    and inode, while a copy or a touch of unchanged files keeps the cache. For the 60,000 JPEGs (55 MB) on
    a 2-core VM: 1.5 s with them in the page cache (1.1 s for the stat calls it replaced), 8 s from disk."""
    files = [f for split in ("train", "test") for name in CLASSES if (data_dir / split / name).is_dir()
             for f in _image_files(data_dir / split / name)]
    h = hashlib.sha256()
    for f in files + sorted((data_dir / "cifar-10-batches-py").glob("*_batch*")):
        try:
            content = f.read_bytes()
        except OSError as e:
            raise _unreadable(f, e) from None
        h.update(f"{f.relative_to(data_dir)} {len(content)}\n".encode())   # the length frames the bytes
        h.update(content)
    return h.hexdigest()


def load_cifar10(data_dir: str | Path = "data", full: bool = True) -> Cifar10:
    """CIFAR-10 from `data_dir` (relative to the repository root): an ImageFolder tree (train/<class>/*,
    test/<class>/*) such as the offline JPEG copy, where `full` insists on 5,000/1,000 images per class;
    else torchvision.datasets.CIFAR10(data_dir, download=True), the official data. The decoded tensors are
    cached in data_dir/cifar10_uint8.pt with a fingerprint of the files; a cache that is unreadable or
    does not match them is rebuilt, and a read-only data_dir is not cached."""
    data_dir = ROOT / data_dir                    # an absolute data_dir stays as it is
    has = {s: (data_dir / s).is_dir() for s in ("train", "test")}
    if has["train"] != has["test"]:
        missing = "test" if has["train"] else "train"
        raise NormbookError(f"{data_dir / missing} is missing: an ImageFolder copy of CIFAR-10 needs both train/ "
                            "and test/ (make data unpacks them)")
    fingerprint = data_fingerprint(data_dir) if data_dir.is_dir() else ""
    try:
        d = torch.load(data_dir / CACHE, weights_only=True)
    except Exception:           # missing, truncated, garbage or from another version: rebuild
        d = None
    if (isinstance(d, dict) and fingerprint and d.get("fingerprint") == fingerprint
            and (not full or (len(d["train_y"]), len(d["test_y"])) == (FULL_TRAIN, FULL_TEST))):
        return Cifar10(d["train_x"], d["train_y"], d["test_x"], d["test_y"], d["source"])
    if has["train"]:
        train_xy, test_xy = (_read_image_folder(data_dir / split, FULL_COUNTS[split] if full else None)
                             for split in ("train", "test"))
        source = f"ImageFolder tree at {data_dir.name}/ (offline JPEG copy of CIFAR-10)"
    else:
        import torchvision
        try:
            sets = [torchvision.datasets.CIFAR10(data_dir, train=t, download=True) for t in (True, False)]
        except Exception as e:  # offline, or the host is down
            raise NormbookError(
                f"CIFAR-10 is not in {data_dir} and could not be downloaded ({type(e).__name__}). "
                f"Offline? Unpack an ImageFolder copy there: mkdir -p {data_dir} && "
                f"tar xzf cifar10-jpeg.tar.gz -C {data_dir} --strip-components=1  (or: make data)") from None
        train_xy, test_xy = (interleaved(torch.from_numpy(s.data).permute(0, 3, 1, 2), torch.tensor(s.targets))
                             for s in sets)
        source, fingerprint = "official CIFAR-10 (torchvision download)", data_fingerprint(data_dir)
    data = Cifar10(*train_xy, *test_xy, source)
    try:
        save_tensors(dict(data._asdict(), fingerprint=fingerprint), data_dir / CACHE)
    except OSError:
        pass                    # a read-only data folder: decode again next time
    return data


def augment(x: torch.Tensor, generator: torch.Generator, flip: bool = True, translate: int = 0,
            cutout: int = 0, fill: torch.Tensor | None = None) -> torch.Tensor:
    """Random horizontal flip, translation and cutout, drawn independently for every image of a uint8 or
    float batch (N, C, H, W), returned in the same shape and dtype. Translation pads by reflection and
    crops at a random offset in [-t, t]^2; cutout sets a square of side `cutout`, centred anywhere (clipped
    at the edges), to `fill` per channel (default 0; the training mean, which is 0 once normalized)."""
    n, c, h, w = x.shape
    ar = lambda k: torch.arange(k, device=x.device)
    draw = lambda high: torch.randint(0, high, (n,), generator=generator, device=x.device)
    if flip:
        flip_mask = torch.rand(n, generator=generator, device=x.device) < 0.5
        x = torch.where(flip_mask[:, None, None, None], x.flip(3), x)
    if translate > 0:
        t = translate
        padded = F.pad(x.float(), (t, t, t, t), mode="reflect").to(x.dtype)
        dy, dx = draw(2 * t + 1), draw(2 * t + 1)
        rows, cols = (dy[:, None] + ar(h))[:, None, :, None], (dx[:, None] + ar(w))[:, None, None, :]
        x = padded[ar(n)[:, None, None, None], ar(c)[None, :, None, None], rows, cols]
    if cutout > 0:
        cy, cx = draw(h) - cutout // 2, draw(w) - cutout // 2                 # top-left corner
        in_y = (ar(h) >= cy[:, None]) & (ar(h) < cy[:, None] + cutout)          # (N, H)
        in_x = (ar(w) >= cx[:, None]) & (ar(w) < cx[:, None] + cutout)          # (N, W)
        fill = torch.zeros(c) if fill is None else torch.as_tensor(fill)
        x = torch.where((in_y[:, :, None] & in_x[:, None, :])[:, None], fill.to(x).view(1, c, 1, 1), x)
    return x


def normalize(x_uint8: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
              memory_format=torch.contiguous_format) -> torch.Tensor:
    """uint8 (N,3,H,W) -> float, standardized per channel with the training set's mean and std."""
    x = x_uint8.float().div_(255).sub_(mean.view(1, -1, 1, 1)).div_(std.view(1, -1, 1, 1))
    return x.contiguous(memory_format=memory_format)


# =============================================================================================
# Model
# =============================================================================================
# C1 C2 c3 P1 C3 C4 C5 c6 P2 C7 C8 C9 GAP c10. Every 3x3 conv is conv -> norm -> activation; the 1x1
# transitions c3 and c6 only mix channels (no norm, no activation) before each pool; c10 maps to logits.
# Widths are multiples of 8 so GroupNorm's 8 groups divide every layer; the 32x32 block is kept
# narrow because it costs the most FLOPs per parameter.

WIDTHS = dict(C1=16, C2=16, c3=16, C3=24, C4=24, C5=24, c6=32, C7=32, C8=32, C9=32)
LAYERS = ("C1", "C2", "c3", "P1", "C3", "C4", "C5", "c6", "P2", "C7", "C8", "C9", "GAP", "c10")
# Identity shortcuts (x + C5(C4(x)), x + C9(C8(x))): no parameters and no layers, only a sum where the
# width stays the same.
SHORTCUTS = (("C4", "C5"), ("C8", "C9"))
# The activation after each 3x3 conv's norm; ReLU can overwrite its input.
ACTIVATIONS = {"relu": lambda: nn.ReLU(inplace=True), "silu": nn.SiLU, "hardswish": nn.Hardswish}
ACTIVATION_NAMES = {"relu": "ReLU", "silu": "SiLU", "hardswish": "hard-swish"}


def group_count(groups: int | str, channels: int) -> int:
    """GroupNorm's G for a layer of `channels`: an int G is used as is in every layer; "C/k" means
    k channels per group (G = C/k, so "C/1" is one group per channel: Instance Norm)."""
    if isinstance(groups, int) and not isinstance(groups, bool) and groups >= 1:
        return groups
    if isinstance(groups, str) and groups.startswith("C/") and groups[2:].isdigit() and int(groups[2:]) >= 1:
        return max(1, channels // int(groups[2:]))
    raise NormbookError(f"groups={groups!r} is invalid: use an integer >= 1 or 'C/k' (k channels per group)")


def make_norm(norm: str, channels: int, groups: int | str = GN_GROUPS, bn_ghost: int = 0) -> nn.Module:
    choose("norm", norm, NORMS)
    if norm == "bn" and bn_ghost:
        from levers import GhostBatchNorm2d
        return GhostBatchNorm2d(channels, bn_ghost)
    if norm == "bn":
        return nn.BatchNorm2d(channels)
    # LayerNorm for conv nets: statistics over (C, H, W) of each sample. nn.GroupNorm(1, C) does
    # exactly that and keeps one gamma/beta per channel, like BN and GN; nn.LayerNorm([C, H, W])
    # would learn a gamma/beta per element (C*H*W each) and tie the model to one image size.
    g = group_count(groups, channels) if norm == "gn" else 1
    if channels % g:
        raise NormbookError(f"GroupNorm with {g} groups needs channels divisible by it; got {channels}")
    return nn.GroupNorm(g, channels)


class Residual(nn.Sequential):
    """x + layers(x): an identity shortcut around layers that keep the width."""
    def forward(self, x):
        return x + super().forward(x)


class Net(nn.Sequential):
    """The exercise's network with one norm; its defaults are the recipe's."""

    def __init__(self, norm: str, groups: int | str = GN_GROUPS, widths: dict | None = None,
                 shortcuts: bool = RECIPE["shortcuts"], activation: str = RECIPE["activation"],
                 weight_std: bool = RECIPE["weight_std"], bn_ghost: int = RECIPE["bn_ghost"]):
        choose("activation", activation, ACTIVATIONS)
        if weight_std:
            from levers import StandardizedConv2d as conv3x3
        else:
            conv3x3 = nn.Conv2d
        widths = {**WIDTHS, **(widths or {})}             # a partial dict changes only the layers it names
        layers, c_in = {}, 3
        for name in LAYERS:
            c_out = len(CLASSES) if name == "c10" else widths.get(name, c_in)
            if name[0] == "C":                                         # 3x3 conv, norm, activation
                layers[name] = nn.Sequential(conv3x3(c_in, c_out, 3, padding=1, bias=False),
                                             make_norm(norm, c_out, groups, bn_ghost), ACTIVATIONS[activation]())
            elif name[0] == "c":                                       # 1x1: transitions c3, c6; logits c10
                layers[name] = nn.Conv2d(c_in, c_out, 1, bias=False)
            else:
                layers[name] = nn.MaxPool2d(2) if name[0] == "P" else nn.AdaptiveAvgPool2d(1)
            c_in = c_out
        for first, last in SHORTCUTS if shortcuts else ():
            span = LAYERS[LAYERS.index(first):LAYERS.index(last) + 1]
            before = [n for n in LAYERS[:LAYERS.index(first)] if n in widths][-1]
            if len({widths[n] for n in (before, *span)}) > 1:
                raise NormbookError(f"a shortcut around {first}-{last} needs one width from {before} to {last}")
            layers[first] = Residual(*(layers[name] for name in span))      # in first's place
            for name in span[1:]:
                del layers[name]
        super().__init__(*layers.values(), nn.Flatten())
        self.norm, self.groups = norm, groups

    def flat(self) -> list[nn.Module]:
        """The layers of LAYERS in order (shortcut blocks opened up), then the final Flatten."""
        return [m for top in self for m in (top if isinstance(top, Residual) else (top,))]


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build_model(norm: str, groups: int | str | None = None, recipe: dict | None = None) -> Net:
    """The network with `norm` in bn | gn | ln and the recipe's widths, shortcuts and activation;
    refuses anything at or over the parameter budget."""
    recipe = {**RECIPE, **(recipe or {})}
    model = Net(norm, GN_GROUPS if groups is None else groups, recipe["widths"], recipe["shortcuts"],
                recipe["activation"], recipe["weight_std"], recipe["bn_ghost"])
    if count_params(model) >= MAX_PARAMS:
        raise NormbookError(f"the {norm} model has {count_params(model):,} parameters; the budget is fewer "
                            f"than {MAX_PARAMS:,}")
    return model


def fast_memory_format(norm: str, device: torch.device):
    """channels_last speeds up the convolutions (1.7-2.3x for BN and LN in bf16 on the CPU), but
    PyTorch's CPU GroupNorm kernel with several groups is slower in it, so GN stays NCHW there.
    A layout choice only: the arithmetic is the same (LN, GroupNorm(1, C), is fast either way)."""
    return torch.contiguous_format if device.type == "cpu" and norm == "gn" else torch.channels_last


def norm_statistics(model: nn.Module, batch_size: int) -> int:
    """How many statistics (means plus variances) the model's norm layers compute per forward pass:
    BN one mean and variance per channel, GN and LN one per sample and group."""
    return sum(2 * m.num_features if isinstance(m, nn.BatchNorm2d) else 2 * batch_size * m.num_groups
               for m in model.modules() if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)))


def receptive_field_table(model: nn.Module | None = None) -> list[dict]:
    """Receptive field after each named layer, read off the model's own conv and pool layers.

    r_out = r_in + (k - 1) * j_in ;  j_out = j_in * s   (j: the jump, input pixels per output step)
    """
    rows, r, j, size = [], 1, 1, 32
    names = iter(LAYERS)
    for layer in (model or build_model("bn")).flat():
        op = layer[0] if isinstance(layer, nn.Sequential) else layer
        if isinstance(op, (nn.Conv2d, nn.MaxPool2d)):
            k, s = (v if isinstance(v, int) else v[0] for v in (op.kernel_size, op.stride))
            r, j, size = r + (k - 1) * j, j * s, size // s
        elif isinstance(op, nn.AdaptiveAvgPool2d):
            k, r, j, size = "-", r + (size - 1) * j, j * size, 1      # GAP sees the whole remaining map
        else:
            continue
        rows.append(dict(layer=next(names), kind=type(op).__name__, kernel=k, output=f"{size}x{size}",
                         channels=op.out_channels if isinstance(op, nn.Conv2d) else None, jump=j, rf=r))
    return rows


# =============================================================================================
# Training
# =============================================================================================
# train() reads like the fast single-file CIFAR-10 trainers: set up, then for each epoch augment the
# whole epoch at once and run train_epoch (a loop of train_step), then evaluate. Optional parts stay
# out of the loop's way: Tracer (`trace_every`), levers.WeightAverage (the recipe's `ema`) and, on a GPU,
# cuda_graphs.CudaGraphStep, which replays the whole step (forward_loss and an SGD-Nesterov update) as a
# CUDA graph.

def one_cycle(step: int, total: int, peak: float, warmup: float) -> float:
    """Linear rise from 0 to peak over the first `warmup` fraction of steps, linear fall to 0 after."""
    rise = max(1, int(total * warmup))
    if step < rise:
        return peak * (step + 1) / rise
    return peak * max(0.0, (total - step) / max(1, total - rise))


def make_optimizer(model: nn.Module, lr: float, recipe: dict) -> torch.optim.Optimizer:
    choose("optimizer", recipe["optimizer"], OPTIMIZERS)
    # Weight decay on conv weights only: decaying norm gammas/betas fights the normalization.
    groups = [dict(params=[p for p in model.parameters() if p.ndim == 4], weight_decay=recipe["weight_decay"]),
              dict(params=[p for p in model.parameters() if p.ndim != 4], weight_decay=0.0)]
    if recipe["optimizer"] == "AdamW":
        return torch.optim.AdamW(groups, lr=lr, betas=(recipe["momentum"], 0.999), foreach=True)
    sgd = torch.optim.SGD(groups, lr=lr, momentum=recipe["momentum"], nesterov=True, foreach=True)
    if recipe["optimizer"] == "Muon":
        from levers import muon_optimizer
        return muon_optimizer(model, lr, recipe, sgd)
    return sgd


class LossSetup(NamedTuple):
    """What turns a uint8 batch into a loss: normalization, layout, autocast and label smoothing."""
    mean: torch.Tensor
    std: torch.Tensor
    layout: torch.memory_format
    autocast: torch.autocast
    label_smoothing: float


def forward_loss(model, x_uint8, y, setup: LossSetup):
    """Normalize a uint8 batch, run the model under autocast, return (logits, loss)."""
    with setup.autocast:
        logits = model(normalize(x_uint8, setup.mean, setup.std, setup.layout))
        return logits, F.cross_entropy(logits.float(), y, label_smoothing=setup.label_smoothing)


def train_step(model, opt, x, y, lr: float, setup: LossSetup, sums) -> None:
    """One SGD step; the epoch's loss and correct counts accumulate on the device (no host sync)."""
    for g in opt.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)          # a group with its own peak LR (levers.py) scales it
    logits, loss = forward_loss(model, x, y, setup)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sums[0].add_(loss.detach() * len(y))
    sums[1].add_((logits.argmax(1) == y).sum())


def train_epoch(model, opt, step_fn, epoch_x, epoch_y, batch_size: int, lrs, setup: LossSetup, sums,
                average, tracer, first_step: int, bar) -> tuple[float, float]:
    """One pass over an augmented epoch; returns (mean training loss, training accuracy in %)."""
    for t in sums:
        t.zero_()
    for k, (i, lr) in enumerate(zip(range(0, len(epoch_y), batch_size), lrs)):
        if tracer:
            tracer.arm(first_step + k)
        step_fn(model, opt, epoch_x[i:i + batch_size], epoch_y[i:i + batch_size], lr, setup, sums)
        if tracer:
            tracer.record(lr)
        if average:
            average.update()
        bar.update(1)
    return sums[0].item() / len(epoch_y), 100.0 * sums[1].item() / len(epoch_y)


class Tracer:
    """Every `every` steps, per normalized layer: the scale of the norm's input (the per-channel std,
    its mean and std over channels), the norm's gamma (mean, std), the norm of the conv weight and of its
    gradient, and the angle (radians) the step turned the weight by: what the optimizer did, whichever it is.
    It only reads tensors, so the training arithmetic and random streams are unchanged.
    The "why they differ" chapter plots what it records (metrics["trace"])."""
    KEYS = ("act_std_mean", "act_std_std", "gamma_mean", "gamma_std", "weight_norm", "grad_norm", "rotation")

    def __init__(self, model: Net, every: int):
        self.every, self.armed, self.inputs, self.before = every, False, {}, {}
        self.layers = {name: block for name, block in zip(LAYERS, model.flat()) if name.startswith("C")}
        self.trace = dict(every=every, step=[], lr=[], layers={n: {k: [] for k in self.KEYS} for n in self.layers})
        self.hooks = [norm.register_forward_pre_hook(lambda mod, args, name=name: self._keep(name, args[0]))
                      for name, (_, norm, _) in self.layers.items()]

    def _keep(self, name, x):
        if self.armed:
            self.inputs[name] = x.detach().float().std(dim=(0, 2, 3))

    @torch.no_grad()
    def arm(self, step: int) -> None:
        """Before a step: keep the norms' inputs of this step, and the weights, if it is one to trace."""
        self.step, self.armed = step, step % self.every == 0
        if self.armed:
            self.before = {name: conv.weight.detach().double().flatten() for name, (conv, _, _) in self.layers.items()}

    @torch.no_grad()
    def record(self, lr: float) -> None:
        """After the armed step: append its point."""
        if not self.armed:
            return
        self.trace["step"].append(self.step)
        self.trace["lr"].append(lr)
        for name, (conv, norm, _) in self.layers.items():
            act, row = self.inputs.pop(name), self.trace["layers"][name]
            grad = conv.weight.grad.norm() if conv.weight.grad is not None else 0.0     # 0: a frozen layer
            w, w0 = conv.weight.detach().double().flatten(), self.before.pop(name)
            turn = 2 * torch.asin(((w / w.norm() - w0 / w0.norm()).norm() / 2).clamp(max=1.0))  # exact for tiny angles
            for key, value in zip(self.KEYS, (act.mean(), act.std(), norm.weight.mean(), norm.weight.std(),
                                              conv.weight.norm(), grad, turn)):
                row[key].append(float(value))
        self.armed = False

    def close(self) -> None:
        for hook in self.hooks:
            hook.remove()


class TrainingDiverged(RuntimeError):
    pass


class TrainedRun(NamedTuple):
    model: nn.Module
    metrics: dict
    predictions: dict    # probs (n_test, 10) of the evaluation behind final_test_acc, and the labels


def train(spec: RunSpec, data: Cifar10 | None = None, *, data_dir: str | Path = "data",
          device: str | torch.device | None = None, progress: bool = True, cuda_graphs: bool | None = None,
          trace_every: int = 0) -> TrainedRun:
    """Train the run `spec` describes; return (model, metrics, predictions). Nothing is written here (see
    save_run). The spec is checked first, by check_params, then the other arguments.

    data: CIFAR-10 in memory; None: load_cifar10(data_dir).
    cuda_graphs: replay each step as a CUDA graph (cuda_graphs.py); default: where it can, on a CUDA device.
    trace_every: record a Tracer point every that many steps (0: off), stored as metrics["trace"].
    metrics: train_acc (and final_train_acc) is the running accuracy over an epoch's augmented batches, in
    training mode; final_test_acc is plain (no TTA), final_test_acc_tta averages with a horizontally flipped copy.
    """
    recipe = check_params(spec, n_train=len(data.train_y) if data else FULL_TRAIN)
    check_int("trace_every", trace_every, 0)
    norm, epochs, batch_size, seed, subset = spec.norm, spec.epochs, spec.batch_size, spec.seed, spec.subset
    groups = GN_GROUPS if spec.groups is None else spec.groups
    device = torch.device(device) if device else pick_device()
    precision = trains_in(spec.precision, device)
    # The graphed step is plain SGD-Nesterov over every parameter, and a replay runs no hooks.
    graphable = recipe["optimizer"] == "SGD-Nesterov" and not trace_every and recipe["whiten"] != "frozen"
    cuda_graphs = device.type == "cuda" and graphable if cuda_graphs is None else cuda_graphs
    if cuda_graphs and (device.type != "cuda" or not graphable):
        raise NormbookError(f"cuda_graphs=True needs a CUDA device (got {device}) and plain SGD-Nesterov steps "
                            f"(optimizer {recipe['optimizer']!r}; no trace_every, no frozen first layer)")
    # Without `data`, check_params assumed 50,000 training images: load_cifar10(full=True) insists on them,
    # and Cifar10.subset refuses a folder of fewer than `subset`.
    data = (data or load_cifar10(data_dir, full=subset == 0)).subset(subset)

    torch.manual_seed(seed)
    gen = torch.Generator(device=device).manual_seed(seed)
    layout = fast_memory_format(norm, device)
    model = build_model(norm, groups, recipe).to(device).to(memory_format=layout)
    mean, std = data.mean_std()
    mean_t, std_t = torch.tensor(mean, device=device), torch.tensor(std, device=device)
    train_x, train_y = data.train_x.to(device), data.train_y.to(device)
    test_x, test_y = data.test_x.to(device), data.test_y.to(device)
    if recipe["whiten"] != "off" or recipe["dirac"]:
        from levers import initialise
        initialise(model, recipe, normalize(train_x[:5000], mean_t, std_t))

    n, steps_per_epoch = len(train_y), math.ceil(len(train_y) / batch_size)
    total, peak = epochs * steps_per_epoch, recipe["peak_lr"] * batch_size / recipe["lr_batch"]
    opt = make_optimizer(model, peak, recipe)
    # Autocast's weight-cast cache does not survive graph replays; without it, every step casts afresh.
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16",
                              cache_enabled=not cuda_graphs)
    setup = LossSetup(mean_t, std_t, layout, autocast, recipe["label_smoothing"])
    sums = (torch.zeros((), device=device), torch.zeros((), device=device, dtype=torch.int64))  # loss, correct
    step_fn, average, tracer = train_step, None, None       # the optional parts (levers imported only when on)
    if cuda_graphs:
        step_fn = CudaGraphStep(model, opt, train_x[:batch_size], train_y[:batch_size], sums, setup, forward_loss)
    if recipe["ema"]:
        from levers import WeightAverage
        average = WeightAverage(model, recipe["ema"])
    if trace_every:
        tracer = Tracer(model, trace_every)
    cutout_fill = (mean_t * 255).round()                # the mean colour: 0 once normalized

    first_flip = torch.rand(n, generator=gen, device=device) < 0.5 if recipe["flip"] == "alternate" else None
    history, start, train_seconds = [], time.perf_counter(), 0.0
    bar = tqdm(total=total, disable=not progress, desc=f"{norm} seed {seed}", unit="step", mininterval=2)
    for epoch in range(1, epochs + 1):
        model.train()
        if recipe["bn_frozen"] and (epoch - 1) * steps_per_epoch >= recipe["warmup"] * total:
            from levers import freeze_batch_norm
            freeze_batch_norm(model)
        epoch_start = time.perf_counter()
        order = torch.randperm(n, generator=gen, device=device)
        # Augment the whole epoch at once on uint8, then slice batches: cheap and vectorized.
        epoch_x = train_x[order]
        if first_flip is not None:
            from levers import alternating_flip
            epoch_x = alternating_flip(epoch_x, first_flip[order], epoch)
        epoch_x = augment(epoch_x, gen, flip=recipe["flip"] is True, translate=recipe["translate"],
                          cutout=recipe["cutout"], fill=cutout_fill)
        first = (epoch - 1) * steps_per_epoch
        lrs = [one_cycle(s, total, peak, recipe["warmup"]) for s in range(first, first + steps_per_epoch)]
        train_loss, train_acc = train_epoch(model, opt, step_fn, epoch_x, train_y[order], batch_size, lrs,
                                            setup, sums, average, tracer, first, bar)
        train_seconds += time.perf_counter() - epoch_start      # training only, evaluation excluded
        test = evaluate(average.model if average else model, test_x, test_y, mean_t, std_t, precision=precision,
                        label_smoothing=recipe["label_smoothing"])
        if not all(map(math.isfinite, (train_loss, test["loss"]))):
            bar.close()
            raise TrainingDiverged(f"the loss became non-finite in epoch {epoch} of {epochs} (train {train_loss}, "
                                   f"test {test['loss']}; norm={norm}, peak_lr={peak:g}); nothing was saved")
        history.append(dict(epoch=epoch, train_loss=train_loss, train_acc=train_acc, lr_end=lrs[-1],
                            test_loss=test["loss"], test_acc=test["acc"], seconds=time.perf_counter() - start))
        bar.set_postfix(train_acc=f"{train_acc:.1f}", test_acc=f"{test['acc']:.1f}")
    bar.close()
    seconds = time.perf_counter() - start

    model = average.final(model) if average else model
    final_tta = evaluate(model, test_x, test_y, mean_t, std_t, precision=precision, tta=True)
    metrics = dict(
        norm=norm, norm_name=NORM_NAMES[norm], groups=groups if norm == "gn" else None,
        params=count_params(model), epochs=epochs, seed=seed, batch_size=batch_size, history=history,
        final_train_acc=history[-1]["train_acc"], final_test_acc=history[-1]["test_acc"],
        final_test_loss=history[-1]["test_loss"], final_test_acc_tta=final_tta["acc"],
        data=data.source, n_train=n, n_test=len(test_y), mean=mean, std=std, recipe=recipe, peak_lr=peak,
        precision=precision, memory_format=str(layout).split(".")[-1], cuda_graphs=cuda_graphs,
        device=device_name(device), torch=torch.__version__, threads=torch.get_num_threads(),
        seconds=seconds, images_per_s=n * epochs / seconds,
        train_seconds=train_seconds, train_images_per_s=n * epochs / train_seconds)
    if tracer:
        metrics["trace"] = tracer.trace
        tracer.close()
    return TrainedRun(model, metrics, dict(probs=test["probs"].float().cpu(), labels=test_y.cpu()))


# =============================================================================================
# Artifacts
# =============================================================================================
# Each file is written to a temporary name in the same folder and renamed over the old one, so an
# interrupted or failed write never leaves a half-written file or destroys an earlier good one. A run
# is model.pt, predictions.pt and metrics.json, written in that order; metrics.json records the
# SHA-256 of the other two (model.pt's together with the architecture it belongs to), so weights and
# metrics from different runs, or a half-replaced run, are refused when read.

def atomic_write(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o644)                 # mkstemp creates 0600; artifacts are for everyone to read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(obj, path: Path) -> None:
    """Atomically, and never with NaN or infinity (not JSON): such a result is refused."""
    text = json.dumps(obj, indent=1, allow_nan=False)
    atomic_write(path, lambda f: f.write(text.encode()))


def save_tensors(obj, path: Path) -> None:
    atomic_write(Path(path), lambda f: torch.save(obj, f))


def read_json(path: Path) -> dict:
    """A JSON artifact (every one is an object), or a one-line error naming the file; a run record
    (metrics.json, the name save_run gives it) is checked too (check_record)."""
    try:
        obj = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise NormbookError(f"{path} is missing") from None
    except (OSError, ValueError) as e:
        raise NormbookError(f"{path} is unreadable ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise NormbookError(f"{path} holds a JSON {JSON_TYPES.get(type(obj), type(obj).__name__)}, not an object: "
                            "not an artifact of this project")
    if Path(path).name == "metrics.json":
        check_record(obj, path)
    return obj


JSON_TYPES = {list: "array", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}


def _number(v) -> bool:
    """A finite int or float (JSON's numbers; a bool is not one, and json.loads lets NaN and Infinity in)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _count(low: int):
    return (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low), f"an integer >= {low}"


_PERCENT = (lambda v: _number(v) and 0 <= v <= 100), "a finite number from 0 to 100"
_TEXT = (lambda v: isinstance(v, str) and v != ""), "a non-empty string"
# The fields of a run record the report reads, each with its test and what it must be. A record without
# one, or with a value outside it (a NaN, a string for a number, a hand edit), is refused when read.
RECORD_FIELDS = dict(
    norm=(lambda v: v in NORMS, f"one of {', '.join(NORMS)}"),
    seed=_count(0), epochs=_count(1), batch_size=_count(1), params=_count(1), n_train=_count(1), n_test=_count(1),
    final_train_acc=_PERCENT, final_test_acc=_PERCENT, final_test_acc_tta=_PERCENT,
    seconds=(lambda v: _number(v) and v > 0, "a finite number > 0"),
    data=_TEXT, device=_TEXT, precision=_TEXT,
    history=(lambda v: isinstance(v, list) and v != [] and all(isinstance(h, dict) for h in v),
             "a non-empty list of objects, one per epoch"),
)
HISTORY_FIELDS = dict(train_acc=_PERCENT, test_acc=_PERCENT,
                      train_loss=(lambda v: _number(v) and v >= 0, "a finite number >= 0"))
HISTORY_FIELDS["test_loss"] = HISTORY_FIELDS["train_loss"]


def check_record(m: dict, where) -> dict:
    """Refuse a run record lacking a field the report reads, or holding a value of the wrong type or range
    there (RECORD_FIELDS, and HISTORY_FIELDS in every epoch), naming the file and the field."""
    fields = [(k, m, k, rule) for k, rule in RECORD_FIELDS.items()]
    if RECORD_FIELDS["history"][0](m.get("history")):
        fields += [(f"history[{i}].{k}", h, k, rule) for i, h in enumerate(m["history"])
                   for k, rule in HISTORY_FIELDS.items()]
    for name, obj, key, (ok, what) in fields:
        if key not in obj:
            raise NormbookError(f"{where}: {name} is missing; a run record holds {what} there")
        if not ok(obj[key]):
            value = repr(obj[key]) if len(repr(obj[key])) <= 40 else repr(obj[key])[:37] + "..."
            raise NormbookError(f"{where}: {name} is {value}; a run record holds {what} there")
    return m


def read_jsons(folder: Path, pattern: str = "*.json") -> list[dict]:
    return [read_json(p) for p in sorted(Path(folder).glob(pattern))]


def run_dir(out_dir: str | Path) -> Path:
    return ROOT / out_dir                    # an absolute out_dir stays as it is


def check_writable(out_dir: str | Path) -> Path:
    """Create out_dir and prove a file can be written there, before training starts."""
    out = run_dir(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        tempfile.NamedTemporaryFile(dir=out, prefix=".write-test.").close()
    except OSError as e:
        raise NormbookError(f"out_dir={str(out_dir)!r} is not a writable folder ({e.strerror})") from None
    return out


def _checksum(path: Path, metrics: dict) -> str:
    """SHA-256 of a run file; model.pt's covers the architecture its weights belong to."""
    prefix = ""
    if path.name == "model.pt":
        r = recorded_recipe(metrics)
        prefix = json.dumps(dict(norm=metrics["norm"], groups=metrics.get("groups"), widths=r["widths"] or WIDTHS,
                                 shortcuts=r["shortcuts"], activation=r["activation"], weight_std=r["weight_std"]),
                            sort_keys=True)
    return hashlib.sha256(prefix.encode() + path.read_bytes()).hexdigest()


RUN_FILES = ("model.pt", "predictions.pt")


# What makes two runs "trained the same way": a saved run is replaced only by one that matches it here.
RUN_IDENTITY = ("norm", "seed", "groups", "epochs", "batch_size", "n_train", "n_test", "data", "precision")


def check_replaceable(out: Path, metrics: dict) -> None:
    """Refuse to replace a saved run with one trained another way (other data, precision, recipe, ...)."""
    if not (out / "metrics.json").exists():
        return
    old = read_json(out / "metrics.json")
    differ = [k for k in RUN_IDENTITY if old.get(k) != metrics.get(k)]
    differ += [f"recipe {k}" for k in RECIPE if recorded_recipe(old).get(k) != recorded_recipe(metrics).get(k)]
    if differ:
        raise NormbookError(f"{out} holds a run trained otherwise ({', '.join(differ)} differ: "
                            f"{', '.join(f'{old.get(k)!r} there, {metrics.get(k)!r} here' for k in differ[:2] if k in old)}); "
                            "remove that folder first to replace it, or save elsewhere")


def save_run(model: nn.Module, metrics: dict, predictions: dict, out_dir: str | Path) -> Path:
    """Save a run as a whole: model.pt (a plain state_dict), predictions.pt (the final evaluation's class
    probabilities and the test labels) and metrics.json (with both files' checksums) are written into a
    fresh folder beside out_dir, which then takes out_dir's place by renaming. A failure at any point
    leaves the old run as it was; concurrent saves each swap a whole folder, one at a time (a lock)."""
    out = run_dir(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    check_replaceable(out, metrics)
    stage = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.saving-"))
    try:
        os.chmod(stage, 0o755)
        save_tensors({k: v.detach().cpu() for k, v in model.state_dict().items()}, stage / "model.pt")
        save_tensors(dict(probs=predictions["probs"].float().cpu(), labels=predictions["labels"].cpu()),
                     stage / "predictions.pt")
        seal_run(stage, metrics)
        with open(out.parent / f".{out.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            check_replaceable(out, metrics)                  # again: another save may have landed meanwhile
            old = out.parent / f"{stage.name}.replaced"
            if out.exists():
                os.rename(out, old)
            os.rename(stage, out)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return out


def seal_run(out: Path, metrics: dict) -> Path:
    """Write metrics.json with the checksums of the model.pt and predictions.pt beside it."""
    write_json(dict(metrics, checksums={f: _checksum(out / f, metrics) for f in RUN_FILES}), out / "metrics.json")
    return out


def verify_run(out_dir: str | Path) -> dict:
    """metrics.json of a run, after checking that model.pt and predictions.pt are the ones it names."""
    out = run_dir(out_dir)
    metrics = read_json(out / "metrics.json")
    if not metrics.get("checksums"):
        raise NormbookError(f"{out / 'metrics.json'} records no checksums: it was not written by save_run")
    for name in RUN_FILES:
        if not (out / name).exists():
            raise NormbookError(f"{out / name} is missing")
        if _checksum(out / name, metrics) != metrics["checksums"][name]:
            raise NormbookError(f"{out / name} does not belong to {out / 'metrics.json'} (checksum or architecture "
                                "differs): the run was replaced halfway or its files were mixed")
    return metrics


def check_predictions(p, metrics: dict, out: Path) -> dict:
    """Refuse a run's predictions unless they fit its record: probs (n_test, 10) and labels (n_test,) in
    0..9, whose accuracy is the recorded final_test_acc. Recomputed with accuracy, as train computed it, the
    number comes out the same; the tolerance (1e-4 points) only absorbs float32 rounding (train records
    100 * float32(k/n)) and is far below one image (100/n_test points)."""
    n, where = metrics["n_test"], out / "predictions.pt"
    probs, labels = (p.get(k) if isinstance(p, dict) else None for k in ("probs", "labels"))
    def held(t, name):
        if not isinstance(t, torch.Tensor):
            return f"no {name}" if t is None else f"{name} of type {type(t).__name__}"
        return f"{name} of shape {tuple(t.shape)}, {str(t.dtype).removeprefix('torch.')}"
    if not (isinstance(probs, torch.Tensor) and probs.is_floating_point() and probs.shape == (n, len(CLASSES))):
        raise NormbookError(f"{where} holds {held(probs, 'probs')}: its record's n_test {n:,} needs float "
                            f"probabilities of shape ({n}, {len(CLASSES)})")
    if not (isinstance(labels, torch.Tensor) and labels.dtype in (torch.int64, torch.int32, torch.int16, torch.uint8)
            and labels.shape == (n,)):
        raise NormbookError(f"{where} holds {held(labels, 'labels')}: its record's n_test {n:,} needs integer "
                            f"labels of shape ({n},)")
    if (bad := (labels < 0) | (labels >= len(CLASSES))).any():
        raise NormbookError(f"{where} holds label {int(labels[bad][0])}: class labels run from 0 to "
                            f"{len(CLASSES) - 1}")
    acc, recorded = accuracy(probs, labels.long()), metrics["final_test_acc"]
    if abs(acc - recorded) > 1e-4:
        right = int((probs.argmax(1) == labels).sum())
        raise NormbookError(f"{out}: metrics.json says final_test_acc {recorded:.6g} but predictions.pt gives "
                            f"{acc:.6g} ({right:,} of {n:,} right)")
    return p


def read_predictions(out: Path, metrics: dict) -> dict:
    """predictions.pt of the run in `out`, checked against its record `metrics` (check_predictions)."""
    try:
        p = torch.load(out / "predictions.pt", weights_only=True)
    except FileNotFoundError:
        raise NormbookError(f"{out / 'predictions.pt'} is missing") from None
    except Exception as e:      # truncated, garbage, or not plain tensors
        raise NormbookError(f"{out / 'predictions.pt'} is unreadable ({type(e).__name__})") from None
    return check_predictions(p, metrics, out)


def load_run(out_dir: str | Path) -> tuple[nn.Module, dict]:
    """Rebuild a saved, verified model from its metrics and weights: (model in eval mode, metrics). The
    metrics' final_test_acc is the one its predictions give (read_predictions)."""
    metrics = verify_run(out_dir)
    read_predictions(run_dir(out_dir), metrics)
    model = build_model(metrics["norm"], metrics.get("groups"), recorded_recipe(metrics))
    model.load_state_dict(torch.load(run_dir(out_dir) / "model.pt", weights_only=True))
    return model.eval(), metrics


def load_predictions(out_dir: str | Path) -> dict:
    """The verified predictions of a run's final evaluation: probs (n_test, 10) and labels (n_test,),
    checked against its record."""
    return read_predictions(run_dir(out_dir), verify_run(out_dir))


def load_metrics(pattern: str = "*") -> list[dict]:
    """metrics.json of every run under runs/ whose folder name matches `pattern`, each verified (verify_run)
    and checked against its predictions; a folder named <norm>-s<seed> must hold that norm and seed (a
    folder renamed by hand is refused, not published)."""
    out = []
    for p in sorted((ROOT / "runs").glob(f"{pattern}/metrics.json")):
        m = verify_run(p.parent)
        name = p.parent.name
        if name.rpartition("-s")[0] in NORMS and name != f"{m.get('norm')}-s{m.get('seed')}":
            raise NormbookError(f"{p} holds norm {m.get('norm')!r}, seed {m.get('seed')!r}: not the run its folder "
                                f"{name} names")
        read_predictions(p.parent, m)
        out.append(dict(m, run=name))
    return out


# =============================================================================================
# Evaluation
# =============================================================================================

def with_batch_stats(model: nn.Module) -> nn.Module:
    """A copy whose BN layers normalize each batch with its own statistics, as in training, instead of
    the running averages (which stay untouched). GN and LN have no running averages: no change."""
    model = copy.deepcopy(model).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.train()
    return model


@torch.inference_mode()
def predict(model, x_uint8, mean, std, precision="fp32", tta=False, batch_size=1000,
            batch_stats=False) -> torch.Tensor:
    """Class probabilities (N, 10) in eval mode, `batch_size` images per forward pass; with tta, averaged
    with the horizontally flipped image; with batch_stats, BN normalizes with each batch's own statistics."""
    model = with_batch_stats(model) if batch_stats else model.eval()
    device = next(model.parameters()).device
    layout = fast_memory_format(model.norm, device)
    mean, std = torch.as_tensor(mean, device=device), torch.as_tensor(std, device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    out = []
    for i in range(0, len(x_uint8), batch_size):
        x = normalize(x_uint8[i:i + batch_size].to(device), mean, std, layout)
        with autocast:
            logits = model(x).float()
            if tta:
                logits = (logits.softmax(1) + model(x.flip(3)).float().softmax(1)).log()
        out.append(logits.softmax(1))
    return torch.cat(out)


def accuracy(probs: torch.Tensor, y: torch.Tensor) -> float:
    """Accuracy in %, computed exactly as every run computes final_test_acc."""
    return 100.0 * (probs.argmax(1) == y.to(probs.device)).float().mean().item()


def evaluate(model, x_uint8, y, mean, std, precision="fp32", tta=False, label_smoothing=0.0) -> dict:
    """Loss (the training loss, label smoothing included), accuracy in % and the probabilities."""
    probs = predict(model, x_uint8, mean, std, precision, tta)
    y = y.to(probs.device)
    loss = F.cross_entropy(probs.clamp_min(1e-12).log(), y, label_smoothing=label_smoothing).item()
    return dict(loss=loss, acc=accuracy(probs, y), probs=probs)


def misclassified(probs: torch.Tensor, y: torch.Tensor, k: int = 10) -> list[dict]:
    """The model's k most confident mistakes, most confident first."""
    conf, pred = probs.max(1)
    wrong = (pred != y).nonzero().flatten()
    wrong = wrong[conf[wrong].argsort(descending=True, stable=True)][:k]
    return [dict(index=int(i), true=CLASSES[y[i]], pred=CLASSES[pred[i]], confidence=float(conf[i]))
            for i in wrong]


def confusion_matrix(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """counts[true, predicted] over the test set."""
    k = len(CLASSES)
    return torch.bincount(labels * k + probs.argmax(1), minlength=k * k).reshape(k, k)
