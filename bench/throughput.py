"""Training throughput of lib.py against a tutorial-style PyTorch pipeline, on this machine.

For each norm at batch 128, in training mode:
  lib         lib.train(): data held as uint8 tensors, whole-batch augmentation, bf16 autocast where
              the CPU has it, channels_last where it pays, one host sync per epoch (evaluation excluded)
  tutorial-style  the usual tutorial pipeline: a CIFAR10-like Dataset of uint8 arrays with per-image PIL
              transforms (RandomHorizontalFlip, ToTensor, Normalize), a DataLoader with 2 worker
              processes, a plain fp32 SGD loop
each timed twice, interleaved, keeping the faster of each.
Then the bare training step under each layout and precision, each GroupNorm implementation, each
activation, and eager against torch.compile. Prints a table and one JSON line per norm; writes bench/results.json (atomically), with the
recipe the models were built with.

    python bench/throughput.py [--images 12800]
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import lib


def cpu_clock_ghz() -> float:
    """The nominal clock read from the machine (/proc/cpuinfo), in GHz."""
    try:
        mhz = [float(l.split(":")[1]) for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("cpu MHz")]
        return max(mhz) / 1000
    except (OSError, ValueError, IndexError):
        return float("nan")


def training_flops_per_image(norm: str) -> float:
    """2 FLOPs per multiply-add, forward once and backward twice (grad wrt input and weights)."""
    from torchinfo import summary
    macs = summary(lib.build_model(norm), input_size=(1, 3, 32, 32), verbose=0).total_mult_adds
    return 3 * 2 * macs


class TutorialCIFAR10(torch.utils.data.Dataset):
    """What torchvision.datasets.CIFAR10 does per item: uint8 HWC array -> PIL image -> transforms."""

    def __init__(self, x_uint8_nchw, y, transform):
        self.data = x_uint8_nchw.permute(0, 2, 3, 1).numpy()
        self.targets = y.tolist()
        self.transform = transform

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        from PIL import Image
        return self.transform(Image.fromarray(self.data[i])), self.targets[i]


def tutorial_images_per_s(norm, data, n_images, batch_size=128, workers=2) -> float:
    """The tutorial-style pipeline's training images/s: per-image PIL transforms in DataLoader workers, fp32 SGD."""
    import torchvision.transforms as T
    mean, std = data.mean_std()
    tf = T.Compose([T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)])
    loader = torch.utils.data.DataLoader(TutorialCIFAR10(data.train_x[:n_images], data.train_y[:n_images], tf),
                                         batch_size=batch_size, shuffle=True, num_workers=workers,
                                         persistent_workers=False)
    model = lib.build_model(norm).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    start, seen = time.perf_counter(), 0
    for x, y in loader:                     # worker start-up counts: a tutorial's run pays it every epoch
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen += len(y)
        print(f"\r  tutorial-style {norm}: {seen}/{n_images} images", end="", file=sys.stderr)
    print(file=sys.stderr)
    return seen / (time.perf_counter() - start)


def swap_group_norm(model: torch.nn.Module, group_norm) -> torch.nn.Module:
    """Put a `group_norm` (a GroupNorm subclass) in place of every nn.GroupNorm, keeping its parameters."""
    for block in model.modules():
        for name, child in list(block.named_children()):
            if type(child) is torch.nn.GroupNorm:
                new = group_norm(child.num_groups, child.num_channels, child.eps)
                new.load_state_dict(child.state_dict())
                setattr(block, name, new)
    return model


# The precision lib.train uses on this CPU (precision="auto"): bf16 with AVX-512 BF16, else fp32. Every step is
# timed in it; timing bf16 where it is emulated (about ten times slower) would measure nothing a run does.
TRAINS_IN = "bf16" if lib.bf16_supported(torch.device("cpu")) else "fp32"


def step_images_per_s(norm, layout, precision, batch_size=128, steps=12, group_norm=None, activation=None,
                      compiled=False, warm_up: dict | None = None) -> float:
    """The bare training step (forward, backward, SGD) on a fixed random batch: no data pipeline.
    group_norm: a GroupNorm subclass to use instead of nn.GroupNorm (see swap_group_norm);
    activation: one of lib.ACTIVATIONS instead of the recipe's; compiled: the model under torch.compile.
    warm_up, if given, receives the seconds of the 3 untimed warm-up steps (compilation happens there)."""
    model = lib.build_model(norm, recipe=dict(activation=activation or lib.RECIPE["activation"]))
    if group_norm is not None:
        model = swap_group_norm(model, group_norm)
    model = model.to(memory_format=layout).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, foreach=True)
    forward = torch.compile(model) if compiled else model
    x = torch.randn(batch_size, 3, 32, 32).contiguous(memory_format=layout)
    y = torch.randint(0, 10, (batch_size,))
    t0 = time.perf_counter()
    for i in range(steps + 3):
        if i == 3:                                        # 3 warm-up steps
            start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = F.cross_entropy(forward(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if warm_up is not None:
        warm_up["seconds"] = start - t0
    return batch_size * steps / (time.perf_counter() - start)


def options_table() -> list[dict]:
    """Each layout x precision option, per norm, as images/s of the bare step and speed-up over fp32 NCHW."""
    rows = []
    for norm in lib.NORMS:
        base = None
        for layout_name, layout in (("NCHW", torch.contiguous_format), ("channels_last", torch.channels_last)):
            for precision in ("fp32", "bf16") if TRAINS_IN == "bf16" else ("fp32",):
                ips = step_images_per_s(norm, layout, precision)
                base = base or ips
                rows.append(dict(norm=norm, layout=layout_name, precision=precision,
                                 images_per_s=round(ips, 1), speedup=round(ips / base, 2)))
                print(f"  step {norm} {layout_name:<13} {precision}: {ips:7.0f} img/s", file=sys.stderr)
    return rows


# GroupNorm (8 groups) is the slowest of the three on the CPU: other ways to compute the same thing.
class GroupNormFp32Input(torch.nn.GroupNorm):
    """PyTorch's kernel on a float32 copy of the bf16 input (its channels_last path is faster in fp32)."""
    def forward(self, x):
        return F.group_norm(x.float(), self.num_groups, self.weight, self.bias, self.eps)


class GroupNormViaBatchNorm(torch.nn.GroupNorm):
    """Statistics per (sample, group) from batch_norm on a (1, N*G, rest) view, then gamma and beta."""
    def forward(self, x):
        n, c, h, w = x.shape
        y = F.batch_norm(x.reshape(1, n * self.num_groups, -1), None, None, training=True, eps=self.eps)
        return torch.addcmul(self.bias.view(1, c, 1, 1), y.view(n, c, h, w), self.weight.view(1, c, 1, 1))


class GroupNormFromReductions(torch.nn.GroupNorm):
    """Mean and variance from plain tensor reductions over a channels-last (N, HW, G, C/G) view, in fp32."""
    def forward(self, x):
        n, c, h, w = x.shape
        xg = x.float().permute(0, 2, 3, 1).reshape(n, h * w, self.num_groups, c // self.num_groups)
        var, mean = torch.var_mean(xg, dim=(1, 3), keepdim=True, correction=0)
        y = ((xg - mean) * torch.rsqrt(var + self.eps)).reshape(n, h, w, c) * self.weight + self.bias
        return y.permute(0, 3, 1, 2)


def group_norm_table() -> list[dict]:
    """The bare GN step (in TRAINS_IN) with each GroupNorm implementation and layout."""
    rows = []
    for impl, cls in (("PyTorch GroupNorm", None), ("GroupNorm on fp32 input", GroupNormFp32Input),
                      ("via batch_norm", GroupNormViaBatchNorm), ("tensor reductions", GroupNormFromReductions)):
        for layout_name, layout in (("NCHW", torch.contiguous_format), ("channels_last", torch.channels_last)):
            if cls is GroupNormViaBatchNorm and layout is torch.channels_last:
                continue                                  # the (1, N*G, rest) view needs NCHW memory
            ips = step_images_per_s("gn", layout, TRAINS_IN, group_norm=cls)
            rows.append(dict(implementation=impl, layout=layout_name, images_per_s=round(ips, 1)))
            print(f"  step gn {impl:<24} {layout_name:<13}: {ips:7.0f} img/s", file=sys.stderr)
    return rows


def activation_table(repeats=2, steps=30) -> list[dict]:
    """The bare step of each norm (TRAINS_IN, lib's layout) with each activation: what the activation costs.
    The best of `repeats` interleaved measurements, since a shared 2-core machine is noisy."""
    rows = []
    for norm in lib.NORMS:
        layout = lib.fast_memory_format(norm, torch.device("cpu"))
        best = {a: 0.0 for a in lib.ACTIVATIONS}
        for _ in range(repeats):
            for a in lib.ACTIVATIONS:
                best[a] = max(best[a], step_images_per_s(norm, layout, TRAINS_IN, steps=steps, activation=a))
        for a, ips in best.items():
            rows.append(dict(norm=norm, activation=a, images_per_s=round(ips, 1),
                             vs_relu=round(ips / best["relu"], 3)))
            print(f"  step {norm} {a:<10}: {ips:7.0f} img/s", file=sys.stderr)
    return rows


def compile_table(repeats=2, steps=30) -> list[dict]:
    """The bare step of each norm (TRAINS_IN, lib's layout) eager and under torch.compile (Inductor's C++ code),
    the best of `repeats` interleaved measurements, with the compile's one-off cost: the seconds the
    first compiled measurement's 3 warm-up steps took, from an empty compile cache (a fresh machine's
    case; the cache it leaves makes later compiles of the same model fast)."""
    import tempfile
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="normbook-inductor-")
    rows = []
    for norm in lib.NORMS:
        layout = lib.fast_memory_format(norm, torch.device("cpu"))
        eager = compiled = 0.0
        first = {}
        for i in range(repeats):
            torch._dynamo.reset()
            eager = max(eager, step_images_per_s(norm, layout, TRAINS_IN, steps=steps))
            compiled = max(compiled, step_images_per_s(norm, layout, TRAINS_IN, steps=steps, compiled=True,
                                                       warm_up=first if i == 0 else None))
        rows.append(dict(norm=norm, eager_images_per_s=round(eager, 1), compiled_images_per_s=round(compiled, 1),
                         speedup=round(compiled / eager, 2), compile_seconds=round(first["seconds"], 1)))
        print(f"  step {norm} eager {eager:7.0f} img/s, compiled {compiled:7.0f} img/s "
              f"(compiling took {first['seconds']:.0f} s)", file=sys.stderr)
    torch._dynamo.reset()
    return rows


def lib_images_per_s(norm, data, n_images, batch_size=128) -> tuple[float, str]:
    run = lambda subset: lib.train(lib.RunSpec(norm, epochs=1, batch_size=batch_size, subset=subset), data,
                                   progress=False)
    run(batch_size * 8)                                 # warm-up
    m = run(n_images).metrics
    return m["train_images_per_s"], f"{m['precision']}, {m['memory_format']}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=12_800, help="training images timed per pipeline and norm")
    ap.add_argument("--data-dir", default="data")
    ap.add_argument("--out", default=str(lib.ROOT / "bench" / "results.json"))
    args = ap.parse_args()

    data = lib.load_cifar10(args.data_dir)
    ghz = cpu_clock_ghz()
    cores = os.cpu_count()
    peak = cores * 32 * ghz          # fp32: 2 AVX-512 FMA pipes x 16 lanes x 2 FLOPs = 32 FLOP/cycle/core (Zen 4)
    results = []
    for norm in lib.NORMS:
        # The best of two interleaved measurements of each pipeline: this shared machine's speed drifts
        # by up to ~20 % over minutes, and the fastest run is the one least disturbed.
        ours = tutorial = 0.0
        for _ in range(2):
            ours_now, setting = lib_images_per_s(norm, data, args.images)
            ours, tutorial = max(ours, ours_now), max(tutorial, tutorial_images_per_s(norm, data, args.images))
        gflops = ours * training_flops_per_image(norm) / 1e9
        r = dict(norm=norm, lib_images_per_s=round(ours, 1), tutorial_images_per_s=round(tutorial, 1),
                 ratio=round(ours / tutorial, 2), gflops=round(gflops, 1), peak_fp32_gflops=round(peak, 1),
                 fraction_of_fp32_peak=round(gflops / peak, 3), lib_setting=setting, batch_size=128,
                 images_timed=args.images, threads=torch.get_num_threads(), cores=cores, clock_ghz=round(ghz, 3),
                 torch=torch.__version__, device=lib.device_name(torch.device("cpu")))
        results.append(r)
        print(json.dumps(r), flush=True)

    print(f"\n{'norm':<5}{'lib img/s':>11}{'tutorial img/s':>16}{'ratio':>7}{'GFLOP/s':>9}{'of fp32 peak':>14}  lib setting")
    for r in results:
        print(f"{r['norm']:<5}{r['lib_images_per_s']:>11.0f}{r['tutorial_images_per_s']:>16.0f}{r['ratio']:>7.2f}"
              f"{r['gflops']:>9.1f}{100 * r['fraction_of_fp32_peak']:>13.0f}%  {r['lib_setting']}")
    print(f"fp32 peak: {cores} cores x 32 FLOP/cycle x {ghz:.2f} GHz = {peak:.0f} GFLOP/s")
    options = options_table()
    group_norm = group_norm_table()
    activations = activation_table()
    compiled = compile_table()
    lib.atomic_write(Path(args.out), lambda f: f.write(json.dumps(
        dict(pipelines=results, options=options, group_norm=group_norm, activations=activations,
             compiled=compiled, recipe=lib.RECIPE), indent=1).encode()))


if __name__ == "__main__":
    main()
