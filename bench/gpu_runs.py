"""The three 20-epoch runs on one GPU, timed with and without CUDA graphs (all three in <= 60 s).

Trains BN, GN and LN once each (seed 0, all 50,000 training images, 20 epochs, lib.RECIPE, per-epoch
test evaluation as in the report) with lib.train(), one after another in one process on the first CUDA
device, twice: with each step replayed as a CUDA graph (lib.train's default on a GPU) and eagerly
(cuda_graphs=False), for comparison on the same machine. Writes bench/gpu_runs.json (atomically): each
run's wall time (the whole train() call, CUDA start-up of the first run included), lib's own timings
and its final test accuracy. Needs a CUDA GPU; `make report` never runs it.

    python bench/gpu_runs.py [--data data] [--out bench/gpu_runs.json]
"""
import argparse
import json
import time
from pathlib import Path

import torch

import lib

KEPT = ("norm", "params", "seed", "epochs", "batch_size", "n_train", "n_test", "final_train_acc", "final_test_acc",
        "final_test_acc_tta", "seconds", "train_seconds", "train_images_per_s", "precision", "memory_format",
        "device", "torch", "recipe", "data")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="data", help="CIFAR-10 folder, as for lib.load_cifar10")
    ap.add_argument("--out", default=str(lib.ROOT / "bench" / "gpu_runs.json"))
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench/gpu_runs.py needs a CUDA GPU; none is visible to PyTorch")

    data = lib.load_cifar10(args.data)
    result = dict(what="three 20-epoch runs (seed 0), one after another in one process, per mode",
                  device=lib.device_name(torch.device("cuda")), torch=torch.__version__, modes={})
    for mode, graphs in (("cuda graphs", True), ("eager", False)):
        runs = []
        for norm in lib.NORMS:
            start = time.perf_counter()
            m = lib.train(lib.RunSpec(norm, seed=0), data, device="cuda", progress=False, cuda_graphs=graphs).metrics
            run = {k: m[k] for k in KEPT}
            run["wall_seconds"] = time.perf_counter() - start
            runs.append(run)
            print(mode, json.dumps({k: run[k] for k in ("norm", "wall_seconds", "seconds", "final_test_acc")}), flush=True)
        result["modes"][mode] = dict(total_wall_seconds=sum(r["wall_seconds"] for r in runs), runs=runs)
        lib.write_json(result, Path(args.out))       # after each mode: a later failure keeps this one

    print(f"\n{'mode':12} {'norm':4} {'wall s':>7} {'train s':>8} {'img/s':>8} {'test %':>7}")
    for mode, res in result["modes"].items():
        for r in res["runs"]:
            print(f"{mode:12} {r['norm']:4} {r['wall_seconds']:7.1f} {r['train_seconds']:8.1f} "
                  f"{r['train_images_per_s']:8.0f} {r['final_test_acc']:7.2f}")
        print(f"{mode}: all three in {res['total_wall_seconds']:.1f} s on {result['device']}")


if __name__ == "__main__":
    main()
