"""End to end: papermill runs book/train.ipynb on a tiny data tree for one epoch; a failed by-hand run
never replaces an executed notebook; every notebook can run in Colab."""
import subprocess
import sys

import nbformat
import pytest

import lib
import publish
from conftest import ROOT, make_image_folder


def papermill(out_nb, *params):
    args = [sys.executable, "-m", "papermill", "--no-progress-bar", str(ROOT / "book" / "train.ipynb"), str(out_nb)]
    for name, value in params:
        args += ["-p", name, str(value)]
    return subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=ROOT)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("data") / "cifar", train_per_class=6, test_per_class=3)


def test_papermill_smoke_run_produces_notebook_metrics_weights_and_predictions(tree, tmp_path):
    out = tmp_path / "run"
    done = papermill(tmp_path / "ln.ipynb", ("norm", "ln"), ("epochs", 1), ("subset", 40), ("data_dir", tree),
                     ("batch_size", 16), ("out_dir", out))
    assert done.returncode == 0, done.stderr[-3000:]
    nb = nbformat.read(tmp_path / "ln.ipynb", as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o["output_type"] == "error"]
    pictures = [o["data"]["text/html"] for o in outputs if '<picture class="responsive">' in o.get("data", {}).get("text/html", "")]
    assert len(pictures) == 3 and all(p.count("data:image/png;base64,") == 2 for p in pictures)   # curves, mistakes,
    assert not [o for o in outputs if "image/png" in o.get("data", {})]     # confusion: each in a desktop and a phone design
    assert nb.cells[1].source.startswith("# Run: {glue:text}`norm_title`")             # the title, glued from norm
    assert any(o.get("metadata", {}).get("scrapbook", {}).get("name") == "norm_title" and
               "LayerNorm" in str(o["data"]) for o in outputs)
    text = "".join(o.get("text", "") for o in outputs)
    assert f"Total params: {lib.count_params(lib.build_model('ln')):,}" in text      # the torchinfo summary
    model, metrics = lib.load_run(out)
    assert metrics["norm"] == "ln" and metrics["epochs"] == 1 and metrics["n_train"] == 40 and "trace" in metrics
    p = lib.load_predictions(out)
    assert lib.accuracy(p["probs"], p["labels"]) == metrics["final_test_acc"]


@pytest.mark.parametrize("param, value, words", [
    ("norm", "xn", "unknown norm 'xn'"),
    ("epochs", 25, "epochs=25 is invalid"),
    ("subset", -5, "subset=-5 is invalid"),
])
def test_bad_parameter_fails_the_notebook_and_writes_nothing(tree, tmp_path, param, value, words):
    out = tmp_path / "run"
    params = {"subset": 20, "batch_size": 10, "data_dir": tree, "out_dir": out, param: value}
    done = papermill(tmp_path / "bad.ipynb", *params.items())
    assert done.returncode != 0 and words in done.stderr + done.stdout
    assert not out.exists()


def test_a_failed_make_run_keeps_the_executed_notebooks(tmp_path):
    before = {p.name: p.read_bytes() for p in (ROOT / "book" / "runs").glob("*.ipynb")}
    done = subprocess.run(["make", "--no-print-directory", "run", "NORM=bn", f"DATA={tmp_path / 'no-such-folder'}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode != 0 and "no-such-folder" in done.stdout + done.stderr
    (ROOT / "book" / "runs" / ".bn.partial.ipynb").unlink(missing_ok=True)
    assert {p.name: p.read_bytes() for p in (ROOT / "book" / "runs").glob("*.ipynb")} == before


@pytest.mark.parametrize("setting, words", [
    ("NORM=bn;touch {x}", "NORM and NORMS take bn, gn or ln"), ("NORMS=bn gn;touch {x}", "NORM and NORMS take"),
    ("SEED=1;touch {x}", "SEED and SEEDS take whole numbers"), ("SEED=99999999999999999999", "below 10^18"),
    ("SEED=", "SEED takes one whole number"), ("DATA=data;touch {x}", "no shell characters"),
    ("ARGS=-p epochs 1 `touch {x}`", "no shell characters"), ("RAY=local|touch {x}", "no shell characters")])
def test_a_make_variable_outside_its_values_is_refused_in_one_line_before_anything_runs(setting, words, tmp_path):
    x = tmp_path / "x"
    name, value = setting.split("=", 1)
    listing = lambda: sorted(str(p) for d in (ROOT / "runs" / "scratch", ROOT / "book" / "runs") if d.exists()
                             for p in d.rglob("*"))
    before = listing()
    done = subprocess.run(["make", "--no-print-directory", "run", f"{name}={value.format(x=x)}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and words in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not x.exists() and listing() == before


def test_every_notebook_starts_with_the_colab_cell_and_needs_no_path_tricks():
    cell = publish.colab_cell()
    import yaml
    assert yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"] in cell
    for path in sorted((ROOT / "book").glob("**/*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        assert nb.cells[0].source == cell and "remove-cell" in nb.cells[0].metadata.get("tags", []), path.name
        assert not any("sys.path" in c.source for c in nb.cells), path.name


@pytest.mark.parametrize("command, words", [
    (["experiments.py", "run", "runs/no-such-plan"], "experiments.py: "),
    (["robustness.py", "--runs", "no-such-run-s0"], "robustness.py: "),
    (["publish.py", "tidy", "no-such-page.ipynb"], "publish.py: "),
    (["publish.py", "bogus"], "usage: publish.py")])
def test_every_entry_point_ends_a_project_error_in_one_line(command, words):
    done = subprocess.run([sys.executable, *command], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and done.stderr.startswith(words) and len(done.stderr.strip().splitlines()) == 1, \
        done.stderr[-500:]
