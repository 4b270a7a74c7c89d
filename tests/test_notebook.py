"""End to end: papermill runs book/train.ipynb on a tiny data tree for one epoch."""
import json
import subprocess
import sys

import nbformat
import pytest
import torch

import lib
from conftest import ROOT, make_image_folder


def papermill(out_nb, *params):
    args = [sys.executable, "-m", "papermill", "--no-progress-bar", str(ROOT / "book" / "train.ipynb"), str(out_nb)]
    for name, value in params:
        args += ["-p", name, str(value)]
    return subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=ROOT)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("data") / "cifar", train_per_class=6, test_per_class=3)


def test_papermill_smoke_run_produces_notebook_metrics_and_weights(tree, tmp_path):
    out = tmp_path / "run"
    done = papermill(tmp_path / "ln.ipynb", ("norm", "ln"), ("epochs", 1), ("subset", 40), ("data_dir", tree),
                     ("batch_size", 16), ("out_dir", out))
    assert done.returncode == 0, done.stderr[-3000:]

    nb = nbformat.read(tmp_path / "ln.ipynb", as_version=4)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o["output_type"] == "error"]
    assert not errors
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 3                              # curves, misclassified grid, confusion matrix
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert f"Total params: {lib.count_params(lib.build_model('ln')):,}" in text      # the torchinfo summary

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["norm"] == "ln" and metrics["epochs"] == 1 and metrics["n_train"] == 40
    assert len(metrics["history"]) == 1 and 0 <= metrics["final_test_acc"] <= 100
    state = torch.load(out / "model.pt", weights_only=True)
    model, _ = lib.load_run(out)
    assert set(state) == set(model.state_dict())


@pytest.mark.parametrize("param, value, words", [
    ("norm", "xn", "unknown norm 'xn'"),
    ("epochs", 25, "epochs=25 is out of range"),
])
def test_bad_parameter_fails_the_notebook_and_writes_nothing(tree, tmp_path, param, value, words):
    out = tmp_path / "run"
    done = papermill(tmp_path / "bad.ipynb", (param, value), ("subset", 20), ("data_dir", tree), ("out_dir", out))
    assert done.returncode != 0
    assert words in done.stderr + done.stdout
    assert not out.exists()
