"""normbook: Batch, Group and Layer Normalization compared on CIFAR-10, everything else held fixed.

One module, read top to bottom: configuration, data, model, training, artifacts, evaluation,
figures. The notebooks in book/ only call into it.
"""
from __future__ import annotations

import copy
import json
import math
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent

# =============================================================================================
# Configuration
# =============================================================================================

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
NORMS = ("bn", "gn", "ln")
NORM_NAMES = {"bn": "BatchNorm", "gn": "GroupNorm (8 groups)", "ln": "LayerNorm"}
TARGETS = {"bn": 85.0, "gn": 83.0, "ln": 82.0}   # our own goals: final test accuracy (%), mean over seeds
MAX_EPOCHS = 20          # the mission's ceiling
MAX_PARAMS = 50_000      # the mission's ceiling, strict: a model must have fewer
GN_GROUPS = 8

# The one recipe all three norms share (tuned on BN/LN runs; see the book's appendix).
RECIPE = dict(
    optimizer="SGD-Nesterov",   # or "AdamW" (decoupled weight decay; momentum is then Adam's beta1)
    momentum=0.9,
    peak_lr=0.1,            # one-cycle peak learning rate, at batch size 128
    lr_batch=128,           # the LR above is for this batch; other batches scale it linearly
    warmup=0.25,            # fraction of all steps spent rising linearly from 0 to peak_lr
    weight_decay=5e-4,      # on conv weights only; norm gammas/betas and biases get none
    label_smoothing=0.1,
    translate=2,            # random translation in pixels (reflect padding), after the flip
    flip=True,
    shortcuts=True,         # identity shortcuts around C4-C5 and C8-C9 (no parameters); see the tuning appendix
    activation="silu",      # after every 3x3 conv's norm, one of ACTIVATIONS; see the tuning appendix
    cutout=0,               # side in pixels of a square set to the mean colour in each training image; 0: off
    ema=0.0,                # per-step decay of an average of the weights, evaluated and saved instead; 0: off
    widths=None,            # the width of every conv (a dict like WIDTHS); None: WIDTHS
)
OPTIMIZERS = ("SGD-Nesterov", "AdamW")


# Keys added to RECIPE after some committed runs were made, with the value those runs used.
RECIPE_ADDED_LATER = dict(shortcuts=False, activation="relu", cutout=0, ema=0.0, widths=None)


def recorded_recipe(metrics: dict) -> dict:
    """The recipe a run used, from its metrics (older runs lack the keys added later)."""
    return {**RECIPE_ADDED_LATER, **metrics["recipe"]}


class NormbookError(ValueError):
    """A bad parameter or bad data: the message names the value and what is allowed."""


def check_params(norm: str, epochs: int, batch_size: int, groups: int | str | None = None) -> None:
    """Refuse bad run parameters with a one-line message, before anything is written."""
    if norm not in NORMS:
        raise NormbookError(f"unknown norm {norm!r}: choose one of {', '.join(NORMS)}")
    if not isinstance(epochs, int) or not 1 <= epochs <= MAX_EPOCHS:
        raise NormbookError(f"epochs={epochs!r} is out of range: use an integer from 1 to {MAX_EPOCHS}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise NormbookError(f"batch_size={batch_size!r} is invalid: use an integer >= 1")
    if groups is not None and norm != "gn":
        raise NormbookError(f"groups={groups!r} only applies to norm='gn', not {norm!r}")
    if groups is not None:
        group_count(groups, 8)          # raises on a malformed value


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def bf16_supported(device: torch.device) -> bool:
    """bf16 autocast pays only where the hardware has bf16 arithmetic (AVX512-BF16/AMX, or a GPU)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


# =============================================================================================
# Data
# =============================================================================================
# The whole data set is decoded once to uint8 tensors (N, 3, 32, 32) and cached next to the data;
# training holds it in memory (on the GPU when there is one) and augments whole batches with
# tensor ops, so no per-image Python or PIL work happens inside the training loop.

FULL_COUNTS = {"train": 5000, "test": 1000}   # images per class in CIFAR-10


class Cifar10:
    """CIFAR-10 as uint8 tensors: train_x (N,3,32,32), train_y (N,), test_x, test_y, and `source`."""

    def __init__(self, train_x, train_y, test_x, test_y, source: str):
        self.train_x, self.train_y, self.test_x, self.test_y, self.source = train_x, train_y, test_x, test_y, source

    def subset(self, n: int, n_test: int | None = None) -> "Cifar10":
        """The first n train and first n_test (default n) test images; n=0: everything."""
        if n <= 0:
            return self
        n_test = n if n_test is None else n_test
        return Cifar10(self.train_x[:n], self.train_y[:n], self.test_x[:n_test], self.test_y[:n_test],
                       f"{self.source}, first {n:,} train / {min(n_test, len(self.test_y)):,} test images")

    def holdout(self, n: int) -> "Cifar10":
        """Tuning data: train on all but the last n training images, evaluate on those n instead of
        the test set (the class-interleaved order makes them balanced: n/10 per class)."""
        if not 0 < n < len(self.train_y):
            raise NormbookError(f"holdout={n} must be between 1 and {len(self.train_y) - 1}")
        return Cifar10(self.train_x[:-n], self.train_y[:-n], self.train_x[-n:], self.train_y[-n:],
                       f"{self.source}; validation split: trained on the first {len(self.train_y) - n:,} "
                       f"training images, evaluated on the last {n:,} (test set unused)")

    def mean_std(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and std of the training pixels, in [0, 1] units."""
        x = self.train_x.float().div_(255)
        return x.mean(dim=(0, 2, 3)).tolist(), x.std(dim=(0, 2, 3)).tolist()


def _read_image_folder(split_dir: Path, expected_per_class: int | None):
    """Decode an ImageFolder split (split_dir/<class>/*) into uint8 tensors, checking the classes."""
    from PIL import Image
    import numpy as np

    found = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    if tuple(found) != tuple(sorted(CLASSES)):
        raise NormbookError(f"{split_dir} has class folders {found}; expected the 10 CIFAR-10 classes {list(CLASSES)}")
    images, labels = [], []
    for label, name in enumerate(CLASSES):
        files = sorted(f for f in (split_dir / name).iterdir() if f.suffix.lower() in (".jpg", ".jpeg", ".png"))
        if expected_per_class is not None and len(files) != expected_per_class:
            raise NormbookError(f"{split_dir / name} holds {len(files)} images; expected {expected_per_class}")
        for f in files:
            with Image.open(f) as im:
                arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
            if arr.shape != (32, 32, 3):
                raise NormbookError(f"{f} is {arr.shape[1]}x{arr.shape[0]}; CIFAR-10 images are 32x32")
            images.append(arr)
        labels += [label] * len(files)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    y = torch.tensor(labels, dtype=torch.int64)
    # Folders come class by class; interleave them (one image of each class in turn) so that any
    # prefix, such as a smoke-run subset, holds every class in equal measure.
    rank_in_class = torch.cat([torch.arange(int((y == k).sum())) for k in range(len(CLASSES))])
    order = torch.argsort(rank_in_class * len(CLASSES) + y, stable=True)
    return x[order].contiguous(), y[order]


def load_cifar10(data_dir: str | Path = "data", full: bool = True) -> Cifar10:
    """Load CIFAR-10 from `data_dir` (relative paths are taken from the repository root).

    - If data_dir holds an ImageFolder tree (train/<class>/*, test/<class>/*), such as the offline
      JPEG copy, decode it. `full=True` insists on CIFAR-10's 5,000/1,000 images per class.
    - Otherwise use torchvision.datasets.CIFAR10(data_dir, download=True), the official data.
    The decoded tensors are cached in data_dir/cifar10_uint8.pt, so later runs load in a second.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_absolute():
        data_dir = ROOT / data_dir
    cache = data_dir / "cifar10_uint8.pt"
    if cache.exists():
        d = torch.load(cache, weights_only=True)
        if (not full) or (len(d["train_y"]) == 50_000 and len(d["test_y"]) == 10_000):
            return Cifar10(d["train_x"], d["train_y"], d["test_x"], d["test_y"], d["source"])

    if (data_dir / "train").is_dir() and (data_dir / "test").is_dir():
        train_x, train_y = _read_image_folder(data_dir / "train", FULL_COUNTS["train"] if full else None)
        test_x, test_y = _read_image_folder(data_dir / "test", FULL_COUNTS["test"] if full else None)
        source = f"ImageFolder tree at {data_dir.name}/ (offline JPEG copy of CIFAR-10)"
    else:
        import torchvision
        try:
            train = torchvision.datasets.CIFAR10(data_dir, train=True, download=True)
            test = torchvision.datasets.CIFAR10(data_dir, train=False, download=True)
        except Exception as e:  # offline, or the host is down
            raise NormbookError(
                f"CIFAR-10 is not in {data_dir} and could not be downloaded ({type(e).__name__}). "
                f"Offline? Unpack an ImageFolder copy there: mkdir -p {data_dir} && "
                f"tar xzf cifar10-jpeg.tar.gz -C {data_dir} --strip-components=1  (or: make data)") from None
        train_x = torch.from_numpy(train.data).permute(0, 3, 1, 2).contiguous()
        test_x = torch.from_numpy(test.data).permute(0, 3, 1, 2).contiguous()
        train_y, test_y = torch.tensor(train.targets), torch.tensor(test.targets)
        source = "official CIFAR-10 (torchvision download)"
    _atomic_save(dict(train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y, source=source), cache)
    return Cifar10(train_x, train_y, test_x, test_y, source)


def augment(x: torch.Tensor, generator: torch.Generator, flip: bool = True, translate: int = 0,
            cutout: int = 0, fill: torch.Tensor | None = None) -> torch.Tensor:
    """Random horizontal flip, random translation and cutout, drawn independently for every image.

    x is a uint8 or float batch (N, C, H, W); the result has the same shape and dtype.
    Translation pads by reflection and crops a window at a random offset in [-t, t]^2.
    Cutout sets a cutout x cutout square centred anywhere in the image (clipped at its edges) to
    `fill`, one value per channel (default 0; the training mean makes it 0 after normalization).
    """
    n, c, h, w = x.shape
    if flip:
        flip_mask = torch.rand(n, generator=generator, device=x.device) < 0.5
        x = torch.where(flip_mask[:, None, None, None], x.flip(3), x)
    if translate > 0:
        t = translate
        padded = F.pad(x.float(), (t, t, t, t), mode="reflect").to(x.dtype)
        dy = torch.randint(0, 2 * t + 1, (n,), generator=generator, device=x.device)
        dx = torch.randint(0, 2 * t + 1, (n,), generator=generator, device=x.device)
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]   # (N,1,H,1)
        cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]   # (N,1,1,W)
        batch = torch.arange(n, device=x.device)[:, None, None, None]
        chan = torch.arange(c, device=x.device)[None, :, None, None]
        x = padded[batch, chan, rows, cols]
    if cutout > 0:
        cy = torch.randint(0, h, (n,), generator=generator, device=x.device) - cutout // 2   # top-left corner
        cx = torch.randint(0, w, (n,), generator=generator, device=x.device) - cutout // 2
        ys, xs = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
        in_y = (ys >= cy[:, None]) & (ys < cy[:, None] + cutout)                           # (N, H)
        in_x = (xs >= cx[:, None]) & (xs < cx[:, None] + cutout)                           # (N, W)
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
# Optional identity shortcuts (x + C5(C4(x)), x + C9(C8(x))): they add no parameters and no layers,
# only a sum where the width stays the same ("add one layer to another").
SHORTCUTS = (("C4", "C5"), ("C8", "C9"))
# The activation after each 3x3 conv's norm (RECIPE["activation"]); ReLU can overwrite its input.
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


def make_norm(norm: str, channels: int, groups: int | str = GN_GROUPS) -> nn.Module:
    if norm == "bn":
        return nn.BatchNorm2d(channels)
    if norm == "gn":
        g = group_count(groups, channels)
        if channels % g:
            raise NormbookError(f"GroupNorm with {g} groups needs channels divisible by it; got {channels}")
        return nn.GroupNorm(g, channels)
    if norm == "ln":
        # LayerNorm for conv nets: statistics over (C, H, W) of each sample. nn.GroupNorm(1, C) does
        # exactly that and keeps one gamma/beta per channel, like BN and GN; nn.LayerNorm([C, H, W])
        # would learn a gamma/beta per element (C*H*W each) and tie the model to one image size.
        return nn.GroupNorm(1, channels)
    raise NormbookError(f"unknown norm {norm!r}: choose one of {', '.join(NORMS)}")


class Residual(nn.Sequential):
    """x + layers(x): an identity shortcut around layers that keep the width."""
    def forward(self, x):
        return x + super().forward(x)


class Net(nn.Sequential):
    def __init__(self, norm: str, groups: int = GN_GROUPS, widths: dict = WIDTHS, shortcuts: bool = False,
                 activation: str = "relu"):
        if activation not in ACTIVATIONS:
            raise NormbookError(f"unknown activation {activation!r}: choose one of {', '.join(ACTIVATIONS)}")
        layers, c_in = {}, 3
        for name in LAYERS:
            if name.startswith("C"):                                   # 3x3 conv, norm, activation
                c_out = widths[name]
                layers[name] = nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                                             make_norm(norm, c_out, groups), ACTIVATIONS[activation]())
                c_in = c_out
            elif name in ("c3", "c6"):                                 # 1x1 transition
                c_out = widths[name]
                layers[name] = nn.Conv2d(c_in, c_out, 1, bias=False)
                c_in = c_out
            elif name.startswith("P"):
                layers[name] = nn.MaxPool2d(2)
            elif name == "GAP":
                layers[name] = nn.AdaptiveAvgPool2d(1)
            elif name == "c10":
                layers[name] = nn.Conv2d(c_in, 10, 1, bias=False)
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


def fast_memory_format(norm: str, device: torch.device):
    """channels_last speeds up the convolutions (1.7-2.3x for BN and LN in bf16 on the CPU), but
    PyTorch's CPU GroupNorm kernel with several groups is slower in it, so GN stays NCHW there.
    A layout choice only: the arithmetic is the same (LN, GroupNorm(1, C), is fast either way)."""
    if device.type == "cpu" and norm == "gn":
        return torch.contiguous_format
    return torch.channels_last


def norm_statistics(model: nn.Module, batch_size: int) -> int:
    """How many statistics (means plus variances) the model's norm layers compute per forward pass."""
    total = 0
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            total += 2 * m.num_features                  # one mean, one variance per channel
        elif isinstance(m, nn.GroupNorm):
            total += 2 * batch_size * m.num_groups       # per sample and group
    return total


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build_model(norm: str, groups: int = GN_GROUPS, widths: dict = WIDTHS,
                shortcuts: bool = RECIPE["shortcuts"], activation: str = RECIPE["activation"]) -> Net:
    """The mission's network with `norm` in bn | gn | ln; refuses anything at or over 50,000 params."""
    if norm not in NORMS:
        raise NormbookError(f"unknown norm {norm!r}: choose one of {', '.join(NORMS)}")
    model = Net(norm, groups, widths, shortcuts, activation)
    n = count_params(model)
    if n >= MAX_PARAMS:
        raise NormbookError(f"the {norm} model has {n:,} parameters; the budget is fewer than {MAX_PARAMS:,}")
    return model


def receptive_field_table(model: nn.Module | None = None) -> list[dict]:
    """Receptive field after each named layer, read off the model's own conv and pool layers.

    r_out = r_in + (k - 1) * j_in ;  j_out = j_in * s   (j: the jump, input pixels per output step)
    """
    model = model or build_model("bn")
    rows, r, j, size = [], 1, 1, 32
    names = iter(LAYERS)
    for layer in model.flat():
        conv = layer[0] if isinstance(layer, nn.Sequential) else layer
        if isinstance(conv, (nn.Conv2d, nn.MaxPool2d)):
            k = conv.kernel_size if isinstance(conv.kernel_size, int) else conv.kernel_size[0]
            s = conv.stride if isinstance(conv.stride, int) else conv.stride[0]
            r, j = r + (k - 1) * j, j * s
            size //= s
        elif isinstance(layer, nn.AdaptiveAvgPool2d):
            r, j, size = r + (size - 1) * j, j * size, 1      # GAP sees the whole remaining map
        else:
            continue
        name = next(names)
        out_ch = conv.out_channels if isinstance(conv, nn.Conv2d) else None
        rows.append(dict(layer=name, kind=type(conv).__name__, kernel=getattr(conv, "kernel_size", None),
                         output=f"{size}x{size}", channels=out_ch, jump=j, rf=r))
    for row in rows:            # kernel as a plain int for printing
        k = row["kernel"]
        row["kernel"] = (k if isinstance(k, int) else k[0]) if k is not None else "-"
    return rows


# =============================================================================================
# Training
# =============================================================================================

def one_cycle(step: int, total: int, peak: float, warmup: float) -> float:
    """Linear rise from 0 to peak over the first `warmup` fraction of steps, linear fall to 0 after."""
    rise = max(1, int(total * warmup))
    if step < rise:
        return peak * (step + 1) / rise
    return peak * max(0.0, (total - step) / max(1, total - rise))


def make_optimizer(model: nn.Module, lr: float, recipe: dict) -> torch.optim.Optimizer:
    # Weight decay on conv weights only: decaying norm gammas/betas fights the normalization.
    decay = [p for n, p in model.named_parameters() if p.ndim == 4]
    no_decay = [p for n, p in model.named_parameters() if p.ndim != 4]
    groups = [dict(params=decay, weight_decay=recipe["weight_decay"]), dict(params=no_decay, weight_decay=0.0)]
    if recipe["optimizer"] == "AdamW":
        return torch.optim.AdamW(groups, lr=lr, betas=(recipe["momentum"], 0.999), foreach=True)
    if recipe["optimizer"] == "SGD-Nesterov":
        return torch.optim.SGD(groups, lr=lr, momentum=recipe["momentum"], nesterov=True, foreach=True)
    raise NormbookError(f"unknown optimizer {recipe['optimizer']!r}: choose one of {', '.join(OPTIMIZERS)}")


def forward_loss(model, x_uint8, y, mean, std, layout, autocast, label_smoothing):
    """Normalize a uint8 batch, run the model under `autocast`, return (logits, loss)."""
    with autocast:
        logits = model(normalize(x_uint8, mean, std, layout))
        return logits, F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)


def sgd_nesterov_(opt: torch.optim.SGD, bufs: list[torch.Tensor], lr: torch.Tensor) -> None:
    """One step of torch.optim.SGD(nesterov=True) over `opt`'s parameter groups, with the learning rate
    in a device tensor so that a CUDA graph can replay the step under a changing schedule (SGD itself
    reads the LR as a Python number, fixed at capture). `bufs` are the momentum buffers, zero at first."""
    i = 0
    for group in opt.param_groups:
        params = group["params"]
        grads, b = [p.grad for p in params], bufs[i:i + len(params)]
        i += len(params)
        if group["weight_decay"]:
            grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
        torch._foreach_mul_(b, group["momentum"])
        torch._foreach_add_(b, grads)
        update = torch._foreach_add(grads, b, alpha=group["momentum"])
        torch._foreach_mul_(update, lr)
        torch._foreach_sub_(params, update)


class CudaGraphStep:
    """The whole training step (normalize, forward, loss, backward, update, the epoch's running sums),
    captured once as a CUDA graph and replayed for every full batch. The network is so small that on a
    GPU launching a step's many small kernels one by one from Python, not the arithmetic, sets the pace
    (bench/gpu_runs.py); a replay issues them all at once. A last, smaller batch runs the step eagerly."""

    def __init__(self, model, opt, sample_x, sample_y, sums, loss_args):
        self.model, self.opt, self.sums, self.loss_args = model, opt, sums, loss_args
        self.params = [p for g in opt.param_groups for p in g["params"]]
        self.bufs = [torch.zeros_like(p) for p in self.params]
        self.lr = torch.zeros((), device=sample_x.device)
        self.x, self.y = sample_x.clone(), sample_y.clone()       # static inputs, refilled each step
        # Warm up on a side stream (cuDNN chooses its kernels, autograd builds its state) at LR 0, then
        # put back what the warm-up changed (BN running averages, momentum, sums): the run is the same.
        saved = copy.deepcopy(model.state_dict())
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                self._step(self.x, self.y)
        torch.cuda.current_stream().wait_stream(side)
        model.load_state_dict(saved)
        for t in self.bufs + list(sums):
            t.zero_()
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._step(self.x, self.y)

    def _step(self, x, y):
        for p in self.params:
            p.grad = None
        logits, loss = forward_loss(self.model, x, y, *self.loss_args)
        loss.backward()
        with torch.no_grad():
            sgd_nesterov_(self.opt, self.bufs, self.lr)
            self.sums[0].add_(loss.detach() * len(y))
            self.sums[1].add_((logits.argmax(1) == y).sum())

    def __call__(self, x, y, lr: float) -> None:
        self.lr.fill_(lr)
        if len(y) == len(self.y):
            self.x.copy_(x)
            self.y.copy_(y)
            self.graph.replay()
        else:
            self._step(x, y)


class TrainingDiverged(RuntimeError):
    pass


def train(norm: str = "bn", epochs: int = MAX_EPOCHS, batch_size: int = 128, seed: int = 0,
          data: Cifar10 | None = None, data_dir: str | Path = "data", subset: int = 0,
          groups: int | str | None = None, recipe: dict | None = None, precision: str = "auto",
          device: str | torch.device | None = None, progress: bool = True, cuda_graphs: bool | None = None):
    """Train one model; return (model, metrics). Nothing is written here (see save_run).

    precision: "fp32", "bf16" (autocast) or "auto" (bf16 where the hardware has it).
    cuda_graphs: replay each step as a CUDA graph (CudaGraphStep); default: on a CUDA device.
    """
    check_params(norm, epochs, batch_size, groups)
    recipe = {**RECIPE, **(recipe or {})}
    device = torch.device(device) if device else pick_device()
    if precision == "auto":
        precision = "bf16" if bf16_supported(device) else "fp32"
    if precision not in ("fp32", "bf16"):
        raise NormbookError(f"precision={precision!r}: choose fp32, bf16 or auto")
    sgd = recipe["optimizer"] == "SGD-Nesterov"          # the graphed step implements SGD-Nesterov only
    cuda_graphs = device.type == "cuda" and sgd if cuda_graphs is None else cuda_graphs
    if cuda_graphs and device.type != "cuda":
        raise NormbookError(f"cuda_graphs=True needs a CUDA device; got {device}")
    if cuda_graphs and not sgd:
        raise NormbookError(f"cuda_graphs=True replays SGD-Nesterov steps only, not {recipe['optimizer']}")
    data = data or load_cifar10(data_dir, full=subset == 0)
    data = data.subset(subset)

    torch.manual_seed(seed)
    gen = torch.Generator(device=device).manual_seed(seed)
    layout = fast_memory_format(norm, device)
    model = build_model(norm, groups or GN_GROUPS, recipe["widths"] or WIDTHS, recipe["shortcuts"], recipe["activation"])
    model = model.to(device).to(memory_format=layout)
    mean, std = data.mean_std()
    mean_t, std_t = torch.tensor(mean, device=device), torch.tensor(std, device=device)
    train_x, train_y = data.train_x.to(device), data.train_y.to(device)
    test_x, test_y = data.test_x.to(device), data.test_y.to(device)

    n = len(train_y)
    steps_per_epoch = math.ceil(n / batch_size)
    total = epochs * steps_per_epoch
    peak = recipe["peak_lr"] * batch_size / recipe["lr_batch"]
    opt = make_optimizer(model, peak, recipe)
    # Autocast's weight-cast cache does not survive graph replays; without it, every step casts afresh.
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16",
                              cache_enabled=not cuda_graphs)
    loss_args = (mean_t, std_t, layout, autocast, recipe["label_smoothing"])
    sums = (torch.zeros((), device=device), torch.zeros((), device=device, dtype=torch.int64))  # loss, correct
    graph_step = (CudaGraphStep(model, opt, train_x[:batch_size], train_y[:batch_size], sums, loss_args)
                  if cuda_graphs else None)
    mean_fill = (mean_t * 255).round()                  # cutout's colour: the mean, 0 once normalized
    # With recipe["ema"], an exponential moving average of the weights (and BN's running statistics)
    # is kept after every step; it is what gets evaluated, reported and returned.
    averaged = copy.deepcopy(model) if recipe["ema"] else model
    if recipe["ema"]:
        pairs = [(a, b) for a, b in zip(averaged.state_dict().values(), model.state_dict().values())
                 if a.is_floating_point()]
        ema_tensors, live_tensors = [a for a, _ in pairs], [b for _, b in pairs]

    history, step, start, train_seconds = [], 0, time.perf_counter(), 0.0
    bar = _progress(total=total, disable=not progress, desc=f"{norm} seed {seed}", unit="step", mininterval=2)
    for epoch in range(1, epochs + 1):
        model.train()
        epoch_start = time.perf_counter()
        order = torch.randperm(n, generator=gen, device=device)
        # Augment the whole epoch at once on uint8, then slice batches: cheap and vectorized.
        epoch_x = augment(train_x[order], gen, flip=recipe["flip"], translate=recipe["translate"],
                          cutout=recipe["cutout"], fill=mean_fill)
        epoch_y = train_y[order]
        loss_sum, correct = sums
        loss_sum.zero_()
        correct.zero_()
        for i in range(0, n, batch_size):
            x, y = epoch_x[i:i + batch_size], epoch_y[i:i + batch_size]
            lr = one_cycle(step, total, peak, recipe["warmup"])
            if graph_step:
                graph_step(x, y, lr)
            else:
                for g in opt.param_groups:
                    g["lr"] = lr
                logits, loss = forward_loss(model, x, y, *loss_args)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                # Accumulate on the device; one host sync per epoch, not per step.
                loss_sum += loss.detach() * len(y)
                correct += (logits.argmax(1) == y).sum()
            if recipe["ema"]:
                torch._foreach_lerp_(ema_tensors, live_tensors, 1.0 - recipe["ema"])
            step += 1
            bar.update(1)
        train_loss, train_acc = loss_sum.item() / n, 100.0 * correct.item() / n
        train_seconds += time.perf_counter() - epoch_start      # training only, evaluation excluded
        if not math.isfinite(train_loss):
            bar.close()
            raise TrainingDiverged(f"training loss became {train_loss} in epoch {epoch} of {epochs} "
                                   f"(norm={norm}, peak_lr={peak:g}); nothing was saved")
        row = dict(epoch=epoch, train_loss=train_loss, train_acc=train_acc,
                   lr_end=one_cycle(step - 1, total, peak, recipe["warmup"]))
        test = evaluate(averaged, test_x, test_y, mean_t, std_t, precision=precision,
                        label_smoothing=recipe["label_smoothing"])
        row.update(test_loss=test["loss"], test_acc=test["acc"])
        bar.set_postfix(train_acc=f"{train_acc:.1f}", test_acc=f"{test['acc']:.1f}")
        row["seconds"] = time.perf_counter() - start
        history.append(row)
    bar.close()
    seconds = time.perf_counter() - start

    if recipe["ema"]:                                  # counters and other non-float buffers: the live ones
        averaged.load_state_dict({**model.state_dict(), **{k: v for k, v in averaged.state_dict().items()
                                                          if v.is_floating_point()}})
        model = averaged
    final_tta = evaluate(model, test_x, test_y, mean_t, std_t, precision=precision, tta=True)
    metrics = dict(
        norm=norm, norm_name=NORM_NAMES[norm], groups=(groups or GN_GROUPS) if norm == "gn" else None,
        params=count_params(model), epochs=epochs, seed=seed, batch_size=batch_size,
        history=history,
        final_train_acc=history[-1]["train_acc"], final_test_acc=history[-1]["test_acc"],
        final_test_loss=history[-1]["test_loss"], final_test_acc_tta=final_tta["acc"],
        train_acc_note="running accuracy over each epoch's augmented batches, in training mode",
        tta=False, tta_note="final_test_acc is plain (no TTA); final_test_acc_tta averages with a flipped copy",
        data=data.source, n_train=n, n_test=len(test_y), mean=mean, std=std,
        recipe=recipe, peak_lr=peak, precision=precision, memory_format=str(layout).split(".")[-1],
        cuda_graphs=cuda_graphs,
        device=_device_name(device), torch=torch.__version__, threads=torch.get_num_threads(),
        seconds=seconds, images_per_s=n * epochs / seconds,
        train_seconds=train_seconds, train_images_per_s=n * epochs / train_seconds,
    )
    return model, metrics


def _progress(**kw):
    from tqdm import tqdm         # plain text: papermill runs have no widget front end
    return tqdm(**kw)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        name = next(l.split(":", 1)[1].strip() for l in cpuinfo.splitlines() if l.startswith("model name"))
    except (OSError, StopIteration):
        name = platform.processor() or platform.machine()
    return f"CPU: {name}, {os.cpu_count()} cores"


# =============================================================================================
# Artifacts
# =============================================================================================
# Each file is written to a temporary name in the same folder and renamed over the old one, so an
# interrupted or failed run never leaves a half-written file or destroys an earlier good one.

def _atomic_write(path: Path, write) -> None:
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


def _atomic_write_json(obj, path: Path) -> None:
    _atomic_write(path, lambda f: f.write(json.dumps(obj, indent=1).encode()))


def _read_jsons(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


def _atomic_save(obj, path: Path) -> None:
    _atomic_write(Path(path), lambda f: torch.save(obj, f))


def run_dir(out_dir: str | Path) -> Path:
    out_dir = Path(out_dir)
    return out_dir if out_dir.is_absolute() else ROOT / out_dir


def save_run(model: nn.Module, metrics: dict, out_dir: str | Path) -> Path:
    """Write out_dir/model.pt (a plain state_dict) and out_dir/metrics.json, each atomically.

    metrics.json is written last: a folder with metrics.json holds a complete run.
    """
    out = run_dir(out_dir)
    plain = getattr(model, "_orig_mod", model)          # torch.compile wraps; save the plain module
    state = {k: v.detach().cpu() for k, v in plain.state_dict().items()}
    _atomic_save(state, out / "model.pt")
    _atomic_write_json(metrics, out / "metrics.json")
    return out


def load_run(out_dir: str | Path) -> tuple[nn.Module, dict]:
    """Rebuild a saved model from its metrics and weights: (model in eval mode, metrics)."""
    out = run_dir(out_dir)
    metrics = json.loads((out / "metrics.json").read_text())
    recipe = recorded_recipe(metrics)
    model = build_model(metrics["norm"], metrics.get("groups") or GN_GROUPS, recipe["widths"] or WIDTHS,
                        recipe["shortcuts"], recipe["activation"])
    model.load_state_dict(torch.load(out / "model.pt", weights_only=True))
    return model.eval(), metrics


def load_metrics(pattern: str = "*") -> list[dict]:
    """metrics.json of every complete run under runs/ whose folder name matches `pattern`."""
    rows = []
    for path in sorted((ROOT / "runs").glob(f"{pattern}/metrics.json")):
        m = json.loads(path.read_text())
        m["run"] = path.parent.name
        rows.append(m)
    return rows


# =============================================================================================
# Evaluation
# =============================================================================================

@torch.inference_mode()
def predict(model, x_uint8, mean, std, precision="fp32", tta=False, batch_size=1000,
            batch_stats=False) -> torch.Tensor:
    """Class probabilities (N, 10) in eval mode; with tta, averaged with the horizontally flipped image.

    batch_stats: BatchNorm layers normalize each evaluation batch of `batch_size` images with that
    batch's own statistics, as in training, instead of the running averages (on a copy of the model,
    so its running averages stay untouched). No effect on GN and LN, which have no running averages.
    """
    if batch_stats:
        model = copy.deepcopy(model).eval()
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.train()
    else:
        model.eval()
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


def evaluate(model, x_uint8, y, mean, std, precision="fp32", tta=False, label_smoothing=0.0) -> dict:
    """Loss (the training loss, label smoothing included) and accuracy in %, in eval mode."""
    probs = predict(model, x_uint8, mean, std, precision, tta)
    y = y.to(probs.device)
    loss = F.cross_entropy(probs.clamp_min(1e-12).log(), y, label_smoothing=label_smoothing).item()
    return dict(loss=loss, acc=100.0 * (probs.argmax(1) == y).float().mean().item())


def misclassified(probs: torch.Tensor, y: torch.Tensor, k: int = 10) -> list[dict]:
    """The first k test images (in test-set order) the model gets wrong, with its confidence."""
    conf, pred = probs.max(1)
    wrong = (pred != y).nonzero().flatten()[:k]
    return [dict(index=int(i), true=CLASSES[y[i]], pred=CLASSES[pred[i]], confidence=float(conf[i]))
            for i in wrong]


def confusion_matrix(probs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """counts[true, predicted] over the test set."""
    pred = probs.argmax(1)
    return torch.bincount(y * 10 + pred, minlength=100).reshape(10, 10)


def per_class_accuracy(cm: torch.Tensor) -> list[float]:
    return (100.0 * cm.diag().float() / cm.sum(1).clamp_min(1).float()).tolist()


def main_runs(pattern: str = "{norm}-s0") -> dict[str, dict]:
    """The run of each norm that the book reports on (seed 0 by default), keyed by norm."""
    runs = {}
    for norm in NORMS:
        found = load_metrics(pattern.format(norm=norm))
        if found:
            runs[norm] = found[0]
    return runs


def is_full_run(m: dict) -> bool:
    return m["n_train"] == 50_000 and m["n_test"] == 10_000 and m["epochs"] == MAX_EPOCHS


def summary_rows() -> list[dict]:
    """One row per norm: the seed-0 run's final accuracies, and mean/std of final test accuracy (and the
    mean with flip TTA) over every full run of that norm trained like seed 0 (same recipe, batch and
    groups), so a half-finished change of recipe never mixes into the error bars. The book's and the
    README's tables both come from here."""
    import statistics
    rows = []
    for norm, m in main_runs().items():
        seeds = [r for r in load_metrics(f"{norm}-s*") if is_full_run(r) and recorded_recipe(r) == recorded_recipe(m)
                 and (r["batch_size"], r.get("groups")) == (m["batch_size"], m.get("groups"))]
        accs = [r["final_test_acc"] for r in seeds]
        rows.append({
            "norm": norm, "model": NORM_NAMES[norm], "params": m["params"],
            "train_acc": m["final_train_acc"], "test_acc": m["final_test_acc"],
            "test_acc_tta": m["final_test_acc_tta"], "minutes": m["seconds"] / 60,
            "seeds": len(accs), "test_mean": statistics.mean(accs) if accs else float("nan"),
            "test_std": statistics.stdev(accs) if len(accs) > 1 else float("nan"),
            "tta_mean": statistics.mean(r["final_test_acc_tta"] for r in seeds) if seeds else float("nan"),
            "full": is_full_run(m), "data": m["data"], "device": m["device"],
        })
    return rows


# =============================================================================================
# Figures
# =============================================================================================

COLORS = {"bn": "#1f77b4", "gn": "#2ca02c", "ln": "#d62728"}


def style():
    """One look for every figure in the book."""
    import matplotlib.pyplot as plt
    import seaborn as sns
    sns.set_theme(context="notebook", style="whitegrid")
    plt.rcParams.update({"figure.dpi": 110, "savefig.dpi": 150, "savefig.bbox": "tight"})


def plot_curves(runs: list[dict], title: str = ""):
    """Loss and accuracy per epoch, train (dashed) and test (solid), one colour per norm."""
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for m in runs:
        ep = [h["epoch"] for h in m["history"]]
        c = COLORS.get(m["norm"])
        label = m["norm"].upper()
        for ax, key in zip(axes, ("loss", "acc")):
            ax.plot(ep, [h[f"train_{key}"] for h in m["history"]], "--", color=c, label=f"{label} train")
            ax.plot(ep, [h.get(f"test_{key}") for h in m["history"]], "-", color=c, label=f"{label} test")
    from matplotlib.ticker import MaxNLocator
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].set(xlabel="epoch", ylabel="cross-entropy (label smoothing 0.1)", title="Loss")
    axes[1].set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy")
    axes[1].legend(ncol=len(runs), fontsize=8, loc="lower right")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_misclassified(x_uint8: torch.Tensor, mistakes: list[dict], title: str = ""):
    """A 5x2 grid (5 columns, 2 rows) of misclassified images, each with true, predicted, confidence."""
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, 5, figsize=(11, 6))
    for ax, m in zip(axes.flat, mistakes):
        ax.imshow(x_uint8[m["index"]].permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_title(f"true: {m['true']}\npred: {m['pred']} ({100 * m['confidence']:.0f}%)", fontsize=9)
    for ax in axes.flat:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_confusion(cm: torch.Tensor, title: str = "", ax=None):
    import matplotlib.pyplot as plt
    import seaborn as sns
    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 5.5))
    sns.heatmap(cm.numpy(), annot=True, fmt="d", cmap="Blues", cbar=False, ax=ax,
                xticklabels=CLASSES, yticklabels=CLASSES, annot_kws={"fontsize": 7})
    ax.set(xlabel="predicted", ylabel="true", title=title)
    return ax


def save_figure(fig, name: str) -> None:
    """Save to book/figures/<name>.png (atomically); the README and the book show these files."""
    _atomic_write(ROOT / "book" / "figures" / f"{name}.png", lambda f: fig.savefig(f, format="png"))


# =============================================================================================
# Experiments
# =============================================================================================
# Two sweeps, each point trained from scratch with the shared recipe under a reduced CPU budget
# that is the same for every point of both sweeps: the first 10,000 training images (1,000 per
# class), 6 epochs, evaluated on all 10,000 test images. The learning rate follows the linear
# scaling rule already in train(): peak_lr x batch_size / 128, for all three norms alike.

SWEEP_BUDGET = dict(n_train=10_000, epochs=6)
SWEEPS = {
    "batch": [(norm, b, None) for b in (128, 64, 32, 16, 8, 4, 2) for norm in NORMS],   # fast points first
    "groups": [("gn", 128, g) for g in (1, 2, 4, 8, "C/4", "C/2", "C/1")],
}


def sweep_dir(kind: str) -> Path:
    return ROOT / "runs" / f"sweep-{kind}"


def run_sweep(kind: str, seeds=(0,), data_dir: str | Path = "data", budget: dict = SWEEP_BUDGET,
              data: Cifar10 | None = None) -> None:
    """Train every point of sweep `kind` ("batch" or "groups") for each seed, seed by seed.

    Each point is written atomically to runs/sweep-<kind>/<norm>-b<batch>-g<groups>-s<seed>.json
    (metrics, no weights); points already there are skipped, so an interrupted sweep resumes.
    """
    if kind not in SWEEPS:
        raise NormbookError(f"unknown sweep {kind!r}: choose one of {', '.join(SWEEPS)}")
    data = (data or load_cifar10(data_dir)).subset(budget["n_train"], n_test=10_000)
    for seed in seeds:
        for norm, batch_size, groups in SWEEPS[kind]:
            g = "" if groups is None else str(groups).replace("/", "")
            path = sweep_dir(kind) / f"{norm}-b{batch_size}-g{g or 'default'}-s{seed}.json"
            if path.exists():
                continue
            model, m = train(norm, epochs=budget["epochs"], batch_size=batch_size, seed=seed, data=data,
                             groups=groups, progress=False)
            m.update(sweep=kind, groups=groups if norm == "gn" else None, budget=budget)
            if norm == "bn":     # the same model, evaluated with batch statistics at its training batch size
                probs = predict(model, data.test_x, m["mean"], m["std"], m["precision"],
                                batch_size=batch_size, batch_stats=True)
                m["final_test_acc_batch_stats"] = 100.0 * (probs.argmax(1).cpu() == data.test_y).float().mean().item()
            _atomic_write_json(m, path)
            print(f"{kind} sweep: {path.name}: test {m['final_test_acc']:.2f} % in {m['seconds']:.0f} s", flush=True)


def load_sweep(kind: str) -> list[dict]:
    return _read_jsons(sweep_dir(kind))


# Tuning: recipe changes compared on a validation split, never on the test set. The last 5,000
# training images (500 per class) are held out and the other 45,000 trained on for the full 20
# epochs; each variant changes one thing against RECIPE. Results go to runs/tune/<norm>-<name>-s<seed>.json.
VALIDATION_IMAGES = 5_000
TUNING = {                                       # name -> changes to RECIPE (batch_size: train()'s)
    "recipe": {},
    "batch 64": dict(batch_size=64),
    "peak lr 0.05": dict(peak_lr=0.05),
    "peak lr 0.2": dict(peak_lr=0.2),
    "no label smoothing": dict(label_smoothing=0.0),
    "flip only": dict(translate=0),
    "warmup 0.1": dict(warmup=0.1),
    "weight decay 1e-4": dict(weight_decay=1e-4),
    "weight decay 1e-3": dict(weight_decay=1e-3),
    "shortcuts": dict(shortcuts=True),
    "silu": dict(activation="silu"),
}
# Every variant is one change to this baseline: RECIPE as it stood when tuning began (shortcuts and
# SiLU were adopted from it), so `make tune` reproduces the committed runs.
TUNING_BASELINE = dict(shortcuts=False, activation="relu")
# Every variant but the activation on BN (its activation runs are GPU round 1's); on GN and LN, the
# peak LR (the setting they are most often said to want differently) and the two changes adopted.
TUNING_PLAN = {"bn": tuple(n for n in TUNING if n != "silu"),
               "ln": ("recipe", "peak lr 0.05", "peak lr 0.2", "shortcuts", "silu"),
               "gn": ("recipe", "peak lr 0.05", "peak lr 0.2", "shortcuts", "silu")}
# More seeds (baseline and variant) for a change whose gain was consistent but within one seed's noise.
REPEATED_TUNING = dict(plan={n: ("recipe", "shortcuts") for n in NORMS}, seeds=(1, 2))

# Round 0 is the one above. Later rounds, each against RECIPE as it stood when the round began (its baseline pins it). On a GPU
# (`make tune-gpu`), where a run takes seconds, every variant on every norm at three seeds: round 1
# chose the activation; round 2 tried, on the recipe with shortcuts and SiLU, the levers left for the
# accuracy targets. Round 3 ran on this CPU (`make tune`; no GPU was lent that session), from the same
# recipe, at one seed: the two levers round 2 had not run, and those still untried (AdamW, where the
# channels go), on BN, the norm furthest from its target, and the weight average on all three; then the
# two layouts together, also on LN, the norm closest to its target (and there at a second seed).
GPU_TUNING = {
    "recipe": {},
    "silu": dict(activation="silu"),
    "hardswish": dict(activation="hardswish"),
}
GPU_TUNING_BASELINE = dict(shortcuts=True, activation="relu")
GPU_TUNING_SEEDS = (0, 1, 2)
GPU_TUNING_2 = {
    "recipe": {},
    "warmup 0.1": dict(warmup=0.1),
    "label smoothing 0.2": dict(label_smoothing=0.2),
    "translate 4": dict(translate=4),
    "batch 256": dict(batch_size=256),
    "ema 0.999": dict(ema=0.999),
    "cutout 8": dict(cutout=8),
}
GPU_TUNING_2_BASELINE = dict(shortcuts=True, activation="silu")
TUNING_3 = {
    "recipe": {},
    "ema 0.999": dict(ema=0.999),
    "cutout 8": dict(cutout=8),
    "adamw lr 0.003": dict(optimizer="AdamW", peak_lr=0.003, weight_decay=0.05),   # decoupled decay
    "adamw lr 0.01": dict(optimizer="AdamW", peak_lr=0.01, weight_decay=0.05),
    "adamw lr 0.03": dict(optimizer="AdamW", peak_lr=0.03, weight_decay=0.05),
    # Parameters moved to where the feature maps are larger (more arithmetic per parameter).
    "wide first block": dict(widths=dict(WIDTHS, C1=24, C2=24)),
    "wide middle block": dict(widths=dict(WIDTHS, C3=32, C4=32, C5=32, C7=24, C8=24, C9=24)),
    "wide first and middle blocks": dict(widths=dict(WIDTHS, C1=24, C2=24, C3=32, C4=32, C5=32, C7=24, C8=24, C9=24)),
}
ROUNDS = {   # round -> where it runs, its folder under runs/, variants, baseline, seeds, plan (norm -> names),
             # optionally repeat: a plan of its own at more seeds
    0: dict(device="cpu", folder="tune", variants=TUNING, baseline=TUNING_BASELINE, seeds=(0,), plan=TUNING_PLAN,
            repeat=REPEATED_TUNING),
    1: dict(device="cuda", folder="tune-gpu", variants=GPU_TUNING, baseline=GPU_TUNING_BASELINE,
            seeds=GPU_TUNING_SEEDS, plan={n: tuple(GPU_TUNING) for n in NORMS}),
    2: dict(device="cuda", folder="tune-gpu-2", variants=GPU_TUNING_2, baseline=GPU_TUNING_2_BASELINE,
            seeds=GPU_TUNING_SEEDS, plan={n: tuple(GPU_TUNING_2) for n in NORMS}),
    3: dict(device="cpu", folder="tune-cpu-3", variants=TUNING_3, baseline=GPU_TUNING_2_BASELINE, seeds=(0,),
            plan={"bn": tuple(TUNING_3), "gn": ("recipe", "ema 0.999"),
                  "ln": ("recipe", "ema 0.999", "wide first and middle blocks")},
            # the largest gain of the round, on LN at seed 0, checked at another seed
            repeat=dict(plan={"ln": ("recipe", "wide first and middle blocks")}, seeds=(1,))),
}
DEVICE_NAMES = {"cuda": "GPU", "cpu": "CPU"}


def tune_dir(tuning_round: int = 0) -> Path:
    return ROOT / "runs" / ROUNDS[tuning_round]["folder"]


def run_tuning(norm: str, names=None, seed: int = 0, data_dir: str | Path = "data",
               data: Cifar10 | None = None, holdout: int = VALIDATION_IMAGES, epochs: int = MAX_EPOCHS,
               variants: dict = TUNING, baseline: dict = TUNING_BASELINE, folder: Path | None = None,
               device: str | None = None) -> None:
    """Train each named variant of `norm` (default: its TUNING_PLAN) on the validation split, as one
    change to `baseline`; write folder/<norm>-<name>-s<seed>.json (default folder: tune_dir()).
    Resumable like run_sweep."""
    data = (data or load_cifar10(data_dir)).holdout(holdout)
    folder = Path(folder or tune_dir())
    for name in names or TUNING_PLAN[norm]:
        path = folder / f"{norm}-{name.replace(' ', '_')}-s{seed}.json"
        if path.exists():
            continue
        change = dict(variants[name])
        batch_size = change.pop("batch_size", 128)
        _, m = train(norm, epochs=epochs, batch_size=batch_size, seed=seed, data=data,
                     recipe={**baseline, **change}, device=device, progress=False)
        m.update(tuning=name, change=variants[name], tuning_baseline=baseline, evaluated_on="validation",
                 final_val_acc=m["final_test_acc"], final_val_acc_tta=m["final_test_acc_tta"])
        _atomic_write_json(m, path)
        print(f"tuning {norm} {name!r} seed {seed}: validation {m['final_val_acc']:.2f} % "
              f"in {m['seconds'] / 60:.1f} min", flush=True)


def run_rounds(device: str, data_dir: str | Path = "data", data: Cifar10 | None = None) -> None:
    """Each round of ROUNDS that runs on `device` ("cuda": `make tune-gpu`; "cpu": `make tune`), its plan
    at its seeds, one seed at a time (a round cut short still compares variants on equal seeds), then
    its repeat plan. Resumable: runs already written are skipped."""
    if device == "cuda" and not torch.cuda.is_available():
        raise NormbookError("make tune-gpu needs a CUDA GPU; none is visible to PyTorch")
    data = data or load_cifar10(data_dir)
    for r, spec in ROUNDS.items():
        parts = [spec, spec.get("repeat", dict(seeds=()))] if spec["device"] == device else []
        for part in parts:
            for seed in part["seeds"]:
                for norm, names in part["plan"].items():
                    run_tuning(norm, names, seed=seed, data=data, variants=spec["variants"],
                               baseline=spec["baseline"], folder=tune_dir(r), device=device)


def load_tuning(tuning_round: int = 0) -> list[dict]:
    """Every tuning run of a round of ROUNDS, each with `delta`:
    its validation accuracy minus that of the baseline run ("recipe") of the same norm and seed (None
    where that baseline has not run yet)."""
    runs = _read_jsons(tune_dir(tuning_round))
    base = {(t["norm"], t["seed"]): t["final_val_acc"] for t in runs if t["tuning"] == "recipe"}
    for t in runs:
        b = base.get((t["norm"], t["seed"]))
        t["delta"] = None if b is None else t["final_val_acc"] - b
    return runs


# =============================================================================================
# README
# =============================================================================================
# The README's results block is generated from the same artifacts as the book, so the two cannot
# drift: `make readme` rewrites everything between the two markers below.

README_START, README_END = "<!-- results:start (make readme) -->", "<!-- results:end -->"


def readme_results() -> str:
    rows = summary_rows()
    if not rows:
        return "_No runs yet: `make runs` trains the three models._"
    full = all(r["full"] for r in rows)
    lines = [] if full else ["> **Smoke runs only** (a data subset or fewer than 20 epochs): not the real results.", ""]
    lines += [f"Final-epoch accuracy, seed 0, measured on: {'; '.join(sorted({r['data'] for r in rows}))}; "
              f"device: {'; '.join(sorted({r['device'] for r in rows}))}.", "",
              "| model | parameters | train acc. (%) | test acc. (%) | test acc., flip TTA (%) | test acc. over seeds (%) | minutes |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        seeds = f"{r['test_mean']:.2f} ± {r['test_std']:.2f} (n={r['seeds']})" if r["seeds"] > 1 else "—"
        lines.append(f"| {r['model']} | {r['params']:,} | {r['train_acc']:.2f} | {r['test_acc']:.2f} | "
                     f"{r['test_acc_tta']:.2f} | {seeds} | {r['minutes']:.1f} |")
    lines += ["", "Train accuracy: running accuracy on the augmented training batches of the last epoch. "
              "Test accuracy: all 10,000 test images, evaluation mode, no augmentation.", ""]
    findings = ROOT / "runs" / "findings.json"
    if findings.exists():
        lines += ["**Findings** (computed by `book/results.ipynb` from the runs):", ""]
        lines += [f"{i}. {f}" for i, f in enumerate(json.loads(findings.read_text()), 1)] + [""]
    tuning = load_tuning()
    if tuning:
        base = {t["norm"]: t["final_val_acc"] for t in tuning if t["tuning"] == "recipe" and t["seed"] == 0}
        lines += [f"**Tuning round 0, CPU** (`make tune`; one change at a time, trained on {tuning[0]['n_train']:,} training "
                  f"images, validation accuracy on the other {tuning[0]['n_test']:,}, never the test set; data: "
                  f"{tuning[0]['data'].split('; validation split')[0]}; baseline: the recipe as tuning began"
                  + "".join(f", {k}={v} where lib.RECIPE now has {RECIPE[k]}" for k, v in TUNING_BASELINE.items()
                            if RECIPE.get(k) != v) + "): "
                  + "; ".join(f"{n.upper()} baseline {base[n]:.2f} % (seed 0), variants " + ", ".join(
                      tuning_change(tuning, n, name) for name in dict.fromkeys(
                          t["tuning"] for t in tuning if t["norm"] == n and t["tuning"] != "recipe"))
                              for n in NORMS if n in base) + " points. Details in the tuning appendix.", ""]
    for r, spec in ROUNDS.items():
        runs = load_tuning(r) if r else []              # round 0 has the paragraph above
        if runs:
            seeds, repeat = spec["seeds"], "repeat" in spec
            lines += [f"**Tuning round {r}, {DEVICE_NAMES[spec['device']]}** "
                      f"(`make {'tune-gpu' if spec['device'] == 'cuda' else 'tune'}`, `runs/{tune_dir(r).name}/`; "
                      f"{'; '.join(sorted({t['device'] for t in runs}))}; the same split; baseline: the recipe "
                      "as the round began, " + ", ".join(f"{k}={v}" for k, v in spec["baseline"].items())
                      + (f"; mean change over seeds {', '.join(map(str, seeds))}" if len(seeds) > 1
                         else f"; change at seed {seeds[0]}") + (" or, where marked, the mean over more" if repeat else "")
                      + ", each against the baseline of its own seed): " + "; ".join(
                          f"{n.upper()} " + ", ".join(tuning_change(runs, n, name, count=repeat)
                                                      for name in spec["plan"][n] if name != "recipe")
                          for n in NORMS if any(t["norm"] == n for t in runs)) + " points.", ""]
    sweep = load_sweep("batch")
    budget = (f"reduced budget: {sweep[0]['budget']['n_train']:,} images, {sweep[0]['budget']['epochs']} epochs"
              if sweep else "reduced budget")
    figures = [("curves", "Loss and accuracy per epoch (train dashed, test solid)")] + \
        [(f"misclassified_{n}", f"{NORM_NAMES[n]}: 10 misclassified test images (final model)") for n in NORMS] + \
        [("confusion", "Confusion matrices (test set)"), ("per_class", "Per-class test accuracy"),
         ("batch_sweep", f"Experiment: test accuracy against batch size ({budget})"),
         ("group_sweep", "Experiment: GroupNorm accuracy against group count (same reduced budget)")]
    for name, caption in figures:
        if (ROOT / "book" / "figures" / f"{name}.png").exists():
            lines += [f"**{caption}**", "", f"![{caption}](book/figures/{name}.png)", ""]
    bench = ROOT / "bench" / "results.json"
    if bench.exists():
        pipes = json.loads(bench.read_text())["pipelines"]
        lines += ["**Training throughput** (`make bench`, batch 128, "
                  f"{pipes[0]['device']}, {pipes[0]['threads']} threads):", "",
                  "| norm | lib.py (img/s) | seed-style pipeline (img/s) | ratio | GFLOP/s | of fp32 peak |",
                  "|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {p['norm'].upper()} | {p['lib_images_per_s']:.0f} | {p['seed_style_images_per_s']:.0f} | "
                  f"{p['ratio']:.2f} | {p['gflops']:.1f} | {100 * p['fraction_of_fp32_peak']:.0f} % |" for p in pipes]
        lines.append("")
    gpu = ROOT / "bench" / "gpu_runs.json"
    if gpu.exists():
        g = json.loads(gpu.read_text())
        lines.append(f"**On a GPU** (`python bench/gpu_runs.py`, {g['device']}): the three 20-epoch runs (seed 0) in "
                     f"{g['modes']['cuda graphs']['total_wall_seconds']:.1f} s with each step replayed as a CUDA graph, "
                     f"{g['modes']['eager']['total_wall_seconds']:.1f} s eager; final test accuracies "
                     f"({g['modes']['cuda graphs']['runs'][0]['data']}) "
                     + ", ".join(f"{r['norm'].upper()} {r['final_test_acc']:.2f} %" for r in g["modes"]["cuda graphs"]["runs"])
                     + " (one seed each; see the performance appendix). " + gpu_recipe_note(g))
    return "\n".join(lines).rstrip() + "\n"


def gpu_recipe_note(gpu: dict) -> str:
    """For bench/gpu_runs.json: how its recipe differs from today's lib.RECIPE, and what that difference
    costs in time on the GPU where the GPU tuning round measured it ("" when the recipes agree)."""
    recorded = recorded_recipe(gpu["modes"]["cuda graphs"]["runs"][0])
    changed = {k: v for k, v in recorded.items() if RECIPE.get(k) != v}
    if not changed:
        return ""
    note = ("These runs used the recipe as it stood then: " +
            ", ".join(f"`{k}` = {v} where `lib.RECIPE` now has {RECIPE[k]}" for k, v in changed.items()) + ". ")
    if set(changed) == {"activation"}:
        # Time per run, paired by norm and seed on the same GPU, so that unequal coverage cannot bias it.
        runs = {(t["norm"], t["seed"], recorded_recipe(t)["activation"]): t["seconds"]
                for t in load_tuning(1) if t["device"] == gpu["device"]}
        then, now = changed["activation"], RECIPE["activation"]
        ratios = [runs[n, s, now] / secs for (n, s, a), secs in runs.items() if a == then and (n, s, now) in runs]
        if ratios:
            change = sum(ratios) / len(ratios) - 1
            note += (f"In GPU tuning round 1, on the same GPU, a run with {now} took {abs(change):.1%} "
                     f"{'longer' if change > 0 else 'less time'} than one with {then} (mean over {len(ratios)} "
                     f"pair{'s' * (len(ratios) > 1)} of runs, same norm and seed). ")
    return note


def tuning_change(tuning: list[dict], norm: str, name: str, count: bool = True) -> str:
    """'name +0.42', or with count 'name +0.42 (mean of 2 seeds)': a variant's gain over its same-seed baselines."""
    runs = [t for t in tuning if (t["norm"], t["tuning"]) == (norm, name)]
    deltas = [t["delta"] for t in runs if t["delta"] is not None]
    if not deltas:
        return f"{name} ({'no baseline yet' if runs else 'not run yet'})"
    return f"{name} {sum(deltas) / len(deltas):+.2f}" + (f" (mean of {len(deltas)} seeds)" if count and len(deltas) > 1 else "")


def update_readme(path: Path = ROOT / "README.md") -> None:
    text = path.read_text()
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    new = f"{head}{README_START}\n{readme_results()}{README_END}{tail}"
    _atomic_write(path, lambda f: f.write(new.encode()))
