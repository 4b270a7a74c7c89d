"""Experiment plans on a Ray cluster (loopback only, started and stopped here): the records equal the
serial runner's bit for bit on the CPU, and a failed run is reported by name while the others land."""
import shutil
import socket
import subprocess

import pytest
import torch

import experiments
import lib

pytestmark = pytest.mark.cluster
TIMINGS = {"seconds", "images_per_s", "train_seconds", "train_images_per_s"}


def plan(folder, variants, runs):
    lib.write_json(dict(title="t", device="cpu", precision="fp32", data={"n_train": 200}, epochs=1, baseline={},
                        variants=variants, parts=[{"seeds": [0, 1], "runs": runs}]), folder / "plan.json")
    return folder


def record(path):
    m = lib.read_json(path)
    m["history"] = [{k: v for k, v in h.items() if k != "seconds"} for h in m["history"]]
    return {k: v for k, v in m.items() if k not in TIMINGS}


@pytest.fixture
def cluster():
    ray = shutil.which("ray")
    assert ray, "Ray is needed: `make test` installs it (pip install -e .[cluster])"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run([ray, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
                    "--include-dashboard=false", "--disable-usage-stats"], check=True, capture_output=True, timeout=180)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([ray, "stop", "--force"], capture_output=True, timeout=120)


def test_a_plan_on_a_ray_cluster_gives_the_serial_runners_records(cluster, tiny_data, tmp_path, capsys):
    variants = {"batch 50": {"batch_size": 50}, "batch 25": {"batch_size": 25}, "diverges": {"peak_lr": 1e9}}
    runs = [["bn", "batch 50"], ["gn", "batch 25"]]
    serial = plan(tmp_path / "serial" / "sweep", variants, runs)                 # one folder name: it is recorded
    on_ray = plan(tmp_path / "ray" / "sweep", variants, runs + [["ln", "diverges"]])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)                         # what each Ray task gets with cpus_per_run=1
    try:
        assert experiments.run_plan(serial, data=tiny_data) == 4
    finally:
        torch.set_num_threads(threads)
    assert experiments.run_plan_ray(on_ray, cluster, cpus_per_run=1, data=tiny_data) == 4     # 2 more diverge
    out = capsys.readouterr().out
    assert "ln-diverges-s0.json diverged: the loss became non-finite" in out        # reported and recorded
    assert [r["seed"] for r in experiments.diverged_runs(on_ray)] == [0, 1]
    assert sorted(p.name for p in on_ray.glob("*-s*.json") if "diverges" not in p.name) == \
        sorted(p.name for p in serial.glob("*-s*.json"))
    for path in serial.glob("*-s*.json"):
        assert record(on_ray / path.name) == record(path), path.name
    assert experiments.missing(on_ray) == []
