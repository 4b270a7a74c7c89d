"""What the report publishes besides the book: the README's generated results block (`make readme`) and
the Colab cell at the top of every notebook (`make analysis`), both from the artifacts and _config.yml."""
from __future__ import annotations

from pathlib import Path

from lib import NORM_NAMES, NORMS, ROOT, NormbookError, atomic_write, confusion_matrix
from report import answer, findings, mean_std_text, predictions

README_START, README_END = "<!-- results:start (make readme) -->", "<!-- results:end -->"


def readme_results() -> str:
    """The README's generated block: headline table, figures and findings, from the artifacts."""
    a, site = answer(), site_url()
    rows, rep = a["rows"], a["reported"]
    link = lambda page, label: f"{site}{page}.html" + (f"#{label}" if label else "")
    colab = f"https://colab.research.google.com/github/{'/'.join(repository()[-2:])}/blob/main/book/intro.ipynb"
    lines = [f"**Read it:** [{site}]({site}) · [![Open in Colab](https://colab.research.google.com/assets/colab-badge.svg)]({colab})",
             "", a["text"], "", "**Which should I use?**", ""]
    lines += [f"- {r['short']} ([evidence]({link(*r['link'])}))" for r in a["recs"]]
    lines += ["", a["recipes"]] if a["recipes"] else []
    lines += ["", f"![Left: final test accuracy per norm; right: each norm's test accuracy against batch size, in "
              f"a shorter budget]({'book/figures/answer.png'})", ""]
    lines += [] if all(r["full"] for r in rows) else [
        "> **Smoke runs** (a data subset or fewer than 20 epochs): these numbers say nothing about the norms.", ""]
    lines += [f"Final-epoch accuracy on {'; '.join(sorted({r['data'] for r in rows}))}; "
             f"{'; '.join(sorted({r['device'] for r in rows}))}.", "",
             "| model | parameters | train acc. (%) | test acc. (%) | test acc., mean ± std over seeds (%) |",
             "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['model']} | {r['params']:,} | {r['train_acc']:.2f} | {r['test_acc']:.2f} | "
              f"{mean_std_text(r)} (n={r['seeds']}) |" for r in rows]
    out = rep.left_out
    lines += ["", "Train and test accuracy: seed 0. Train: running accuracy on the augmented batches of the last "
              "epoch; test: all 10,000 test images, evaluation mode, no augmentation."
              + (f" Left out of the means, as not trained like seed 0: {', '.join(out)}." if out else ""),
              "", "**Findings**", ""]
    lines += [f"{i}. **{f['title']}**: {f['text']}" for i, f in enumerate(
        findings(rep, {n: confusion_matrix(**p) for n, p in predictions(rep.main).items()}, a["batch_runs"], a["robustness"]), 1)]
    lines += ["", "![Training curves](book/figures/curves.png)", ""]
    lines += [f"![{NORM_NAMES[n]}: its ten most confident mistakes](book/figures/misclassified_{n}.png)" for n in NORMS]
    return "\n".join(lines) + "\n"


def repository() -> list[str]:
    """The repository's URL in _config.yml, split at its slashes (its last two parts: owner, name)."""
    import yaml
    return yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"].rstrip("/").split("/")


def site_url() -> str:
    """The published site of the repository named in _config.yml: GitHub Pages' address for it."""
    owner, repo = repository()[-2:]
    return f"https://{owner}.github.io/{repo}/"


def update_readme(path: Path = ROOT / "README.md") -> None:
    text = path.read_text()
    if README_START not in text or README_END not in text:
        raise NormbookError(f"{path} lacks the markers {README_START} and {README_END}")
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    new = f"{head}{README_START}\n{readme_results()}{README_END}{tail}"
    atomic_write(path, lambda f: f.write(new.encode()))



COLAB_HEAD = "# Only where the repository is not around this notebook (e.g. in Colab): fetch it once, install what it needs."


def colab_cell() -> str:
    """The first cell of every notebook: where this repository is not around it (e.g. in Colab), fetch it
    and install what the book needs on top of Colab's PyTorch; elsewhere it does nothing. It recognises the
    repository by its own pyproject.toml (not by any module called lib), and a re-run after a runtime
    restart finds the earlier clone instead of cloning again. The URL comes from _config.yml."""
    import yaml
    url = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]
    return (f"{COLAB_HEAD}\n"
            f"import os, subprocess, sys\n"
            f"def _normbook(d):\n"
            f"    p = os.path.join(d, \"pyproject.toml\")\n"
            f"    return os.path.exists(p) and 'name = \"normbook\"' in open(p).read()\n"
            f"if not (_normbook(\".\") or _normbook(\"..\")):\n"
            f"    if not _normbook(\"normbook\"):\n"
            f"        subprocess.run([\"git\", \"clone\", \"--depth\", \"1\", \"{url}\", \"normbook\"], check=True)\n"
            f"        subprocess.run([sys.executable, \"-m\", \"pip\", \"install\", \"-q\", \"torchinfo\", \"myst-nb\"], check=True)\n"
            f"    os.chdir(\"normbook\")   # lib.py is importable from here")


def write_colab_cells(paths=None) -> None:
    """Make the first cell of each notebook colab_cell() (hidden on the site)."""
    import nbformat
    for path in paths or sorted((ROOT / "book").glob("**/*.ipynb")):
        if "_build" in path.parts:
            continue
        nb = nbformat.read(path, as_version=4)
        cell = nbformat.v4.new_code_cell(colab_cell(), metadata={"tags": ["remove-cell"]})
        first = nb.cells[0]
        if first.cell_type == "code" and first.source.startswith("# Only where the repository is not around"):
            if first.source == cell.source:
                continue
            nb.cells[0] = cell
        else:
            nb.cells.insert(0, cell)
        nbformat.write(nb, path)


def tidy_run_page(path: str | Path) -> None:
    """A run page as the book shows it (make run calls this on the executed notebook): papermill's injected
    parameters cell is removed from the page (the page's settings table says them once) and the model
    summary folds away behind a toggle. Only cell tags change; no output is touched."""
    import nbformat
    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        tags = cell.metadata.setdefault("tags", [])
        if "injected-parameters" in tags and "remove-cell" not in tags:
            tags.append("remove-cell")
        if cell.cell_type == "code" and "summary(model" in cell.source and "hide-output" not in tags:
            tags.append("hide-output")
    atomic_write(path, lambda f: f.write((nbformat.writes(nb) + "\n").encode()))


def main(argv=None) -> None:
    """make readme, make analysis and make run call this: `python3 publish.py readme | colab | tidy PAGE`;
    the project's errors end it in one line."""
    import sys
    args = sys.argv[1:] if argv is None else argv
    try:
        if args[:1] == ["readme"]:
            update_readme()
        elif args[:1] == ["colab"]:
            write_colab_cells()
        elif args[:1] == ["tidy"] and len(args) == 2:
            tidy_run_page(args[1])
        else:
            sys.exit("usage: publish.py readme | colab | tidy PAGE")
    except (NormbookError, OSError) as e:
        sys.exit(f"publish.py: {e}")


if __name__ == "__main__":
    main()
