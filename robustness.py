"""Why the norms differ, measured on the saved models: evaluation under shifted inputs and with other batch
companions. Nothing here trains (what happens inside the network during training, lib.Tracer records:
lib.train's trace_every); `make robustness` writes runs/robustness/<norm>-s<seed>.json.
It also writes runs/fit/<norm>-s<seed>.json: how well each model fits its clean training images.

- input scale: the normalized input multiplied by a (contrast about the training mean), and the raw
  image shifted in brightness;
- corruptions generated like CIFAR-10-C (Hendrycks & Dietterich 2019) with torchvision on the test
  set, five severities each: regenerated here, not the published CIFAR-10-C files;
- BN's repair: its running statistics recomputed on the shifted test images, no labels (AdaBN, Li et
  al. 2016);
- batch dependence: BN with batch statistics at several batch sizes, and with one-class batches; the
  fraction of test images whose prediction changes when only their batch companions change.
"""
from __future__ import annotations

import argparse
import copy
import io
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

import lib

SCALES = (0.25, 0.5, 1.0, 2.0, 4.0)
BRIGHTNESS = (-0.3, -0.15, 0.0, 0.15, 0.3)          # added to the raw image, in [0, 1] units
BATCH_SIZES = (1, 2, 8, 32, 128)
BATCH_TEST_IMAGES = 2000                             # the first 2,000 test images, 200 per class
SEVERITIES = (1, 2, 3, 4, 5)
# Per-severity parameters, after CIFAR-10-C's own (their code: make_cifar_c.py).
CORRUPTIONS = {
    "gaussian noise": (0.04, 0.06, 0.08, 0.09, 0.10),      # std of added noise, [0, 1] units
    "gaussian blur": (0.4, 0.6, 0.7, 0.8, 1.0),            # std of the blur kernel, pixels
    "jpeg": (80, 65, 58, 50, 40),                           # JPEG quality
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),                # factor about each image's mean
    "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),                # added to every pixel, [0, 1] units
    "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),              # downscale factor, then back up
}


def corrupt(x: torch.Tensor, name: str, severity: int, seed: int = 0) -> torch.Tensor:
    """A corrupted copy of uint8 images (N, 3, 32, 32), deterministic for a seed, still uint8 in [0, 255]."""
    import torchvision.transforms.v2.functional as TF
    lib.choose("corruption", name, CORRUPTIONS)
    lib.check_int("severity", severity, 1, len(SEVERITIES))
    p = CORRUPTIONS[name][severity - 1]
    f = x.float() / 255
    if name == "gaussian noise":
        f = f + p * torch.randn(f.shape, generator=torch.Generator().manual_seed(seed))
    elif name == "gaussian blur":
        f = TF.gaussian_blur(f, kernel_size=[2 * round(3 * p) + 1] * 2, sigma=[p, p])
    elif name == "contrast":
        mean = f.mean(dim=(1, 2, 3), keepdim=True)
        f = (f - mean) * p + mean
    elif name == "brightness":
        f = f + p
    elif name == "pixelate":
        small = round(32 * p)
        f = F.interpolate(F.interpolate(f, size=small, mode="area"), size=32, mode="nearest")
    elif name == "jpeg":
        return torch.stack([_jpeg(img, p) for img in x])
    return (f.clamp(0, 1) * 255).round().to(torch.uint8)


def _jpeg(img: torch.Tensor, quality: int) -> torch.Tensor:
    from PIL import Image
    import numpy as np
    buf = io.BytesIO()
    Image.fromarray(img.permute(1, 2, 0).numpy()).save(buf, format="JPEG", quality=quality)
    with Image.open(buf) as im:
        return torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1).contiguous()


@torch.inference_mode()
def logits(model, x_float: torch.Tensor, precision: str, batch_size: int = 1000) -> torch.Tensor:
    """Logits of already normalized images, in eval mode (BN layers as they are set)."""
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    layout = lib.fast_memory_format(model.norm, torch.device("cpu"))
    out = []
    with autocast:
        for i in range(0, len(x_float), batch_size):
            out.append(model(x_float[i:i + batch_size].contiguous(memory_format=layout)).float())
    return torch.cat(out)


def recalibrated(model: nn.Module, x_float: torch.Tensor, precision: str) -> nn.Module:
    """A copy of a BN model whose running statistics are recomputed on x (no labels): AdaBN."""
    model = copy.deepcopy(model)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None                   # a plain average over all batches
            m.train()
    logits(model, x_float, precision, batch_size=500)
    return model.eval()


def batch_dependence(model, x_float, y, precision: str, batch_size: int, seed: int = 0) -> dict:
    """Accuracy with batch statistics in random batches of `batch_size`, and the fraction of images
    whose prediction changes when the same images are put into other random batches."""
    model = lib.with_batch_stats(model)         # a copy: the model's own running statistics stay as they are
    preds = []
    for k in range(2):
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed + k))
        pred = torch.empty_like(y)
        pred[order] = logits(model, x_float[order], precision, batch_size).argmax(1)
        preds.append(pred)
    return dict(acc=100.0 * (preds[0] == y).float().mean().item(),
                changed=100.0 * (preds[0] != preds[1]).float().mean().item())


def evaluate_run(run: str, data: lib.Cifar10, shifted: dict[str, torch.Tensor]) -> dict:
    """Every measurement of one saved model; `shifted` holds the corrupted test sets by 'name/severity'."""
    model, m = lib.load_run(f"runs/{run}")
    mean, std = torch.tensor(m["mean"]), torch.tensor(m["std"])
    prec, y = m["precision"], data.test_y
    norm = lambda x_uint8: lib.normalize(x_uint8, mean, std)
    acc = lambda net, x: 100.0 * (logits(net, x, prec).argmax(1) == y).float().mean().item()
    clean = norm(data.test_x)
    out = dict(run=run, norm=m["norm"], seed=m["seed"], data=m["data"], precision=prec, n_test=len(y),
               model_checksum=m["checksums"]["model.pt"], clean_acc=acc(model, clean))
    say = lambda step: print(f"robustness {run}: {step}", flush=True)      # minutes a step on a slow CPU
    say("contrast and brightness")
    out["scale"] = {str(a): acc(model, a * clean) for a in SCALES}
    with torch.inference_mode():                # the invariance itself, in fp32 so no bf16 rounding hides it
        one, two = logits(model, clean[:1000], "fp32"), logits(model, 2 * clean[:1000], "fp32")
    out["max_logit_change_scale_2"] = (two - one).abs().max().item()
    out["brightness"] = {str(b): acc(model, norm(((data.test_x.float() / 255 + b).clamp(0, 1) * 255).round()
                                                 .to(torch.uint8))) for b in BRIGHTNESS}
    say(f"{len(shifted)} corrupted test sets")
    out["corruptions"] = {key: acc(model, norm(x)) for key, x in shifted.items()}
    if m["norm"] == "bn":
        say("the same with recomputed BN statistics (AdaBN)")
        out["corruptions_recalibrated"] = {key: acc(recalibrated(model, norm(x), prec), norm(x))
                                           for key, x in shifted.items()}
    n = BATCH_TEST_IMAGES                       # batch size 1 means one forward pass per image: a subset
    say("batch companions")
    out["batch"] = {str(b): batch_dependence(model, clean[:n], y[:n], prec, b) for b in BATCH_SIZES}
    out["batch_test_images"] = n
    by_class = torch.argsort(y * len(y) + torch.arange(len(y)))          # batches of one class each
    pred = torch.empty_like(y)
    pred[by_class] = logits(lib.with_batch_stats(model), clean[by_class], prec, 100).argmax(1)
    out["one_class_batches_acc"] = 100.0 * (pred == y).float().mean().item()
    return out


def fit(run: str, data: lib.Cifar10) -> dict:
    """How well a saved model fits: accuracy and plain cross-entropy (no label smoothing) on the clean,
    un-augmented training images and on the test images, in eval mode, in the run's precision. Unlike the
    training log's numbers (augmented batches, BN with batch statistics), these are alike for every norm."""
    model, m = lib.load_run(f"runs/{run}")
    mean, std = torch.tensor(m["mean"]), torch.tensor(m["std"])
    out = dict(run=run, norm=m["norm"], seed=m["seed"], data=m["data"], precision=m["precision"],
               model_checksum=m["checksums"]["model.pt"])
    for split, x, y in (("train", data.train_x[:m["n_train"]], data.train_y[:m["n_train"]]),
                        ("test", data.test_x[:m["n_test"]], data.test_y[:m["n_test"]])):
        with torch.inference_mode():
            z = logits(model, lib.normalize(x, mean, std), m["precision"])
        out[f"{split}_acc"] = 100.0 * (z.argmax(1) == y).float().mean().item()
        out[f"{split}_loss"] = F.cross_entropy(z, y).item()
    return out


def up_to_date(run: str, folder: str = "robustness") -> bool:
    """Whether runs/<folder>/<run>.json exists and was measured on the run's present weights."""
    path = lib.ROOT / "runs" / folder / f"{run}.json"
    if not path.exists():
        return False
    return lib.read_json(path).get("model_checksum") == lib.read_json(lib.ROOT / "runs" / run / "metrics.json")["checksums"]["model.pt"]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="data")
    ap.add_argument("--runs", nargs="*", help="run folders under runs/ (default: every main run)")
    args = ap.parse_args(argv)
    runs = args.runs or [m["run"] for m in lib.load_metrics("*-s[0-9]")]
    todo = [r for r in runs if not up_to_date(r)]
    fit_todo = [r for r in runs if not up_to_date(r, "fit")]
    if not todo and not fit_todo:
        return
    data = lib.load_cifar10(args.data)
    for run in fit_todo:
        result = fit(run, data)
        lib.write_json(result, lib.ROOT / "runs" / "fit" / f"{run}.json")
        print(f"fit {run}: train {result['train_acc']:.2f} %, test {result['test_acc']:.2f} %", flush=True)
    if not todo:
        return
    shifted = {f"{name}/{s}": corrupt(data.test_x, name, s) for name in CORRUPTIONS for s in SEVERITIES}
    for run in todo:
        result = evaluate_run(run, data, shifted)
        lib.write_json(result, lib.ROOT / "runs" / "robustness" / f"{run}.json")
        print(f"robustness {run}: clean {result['clean_acc']:.2f} %, mean corruption "
              f"{sum(result['corruptions'].values()) / len(result['corruptions']):.2f} %", flush=True)


if __name__ == "__main__":
    try:
        main()
    except (lib.NormbookError, OSError) as e:            # OSError: a full disk, a read-only folder
        sys.exit(f"robustness.py: {e}")
