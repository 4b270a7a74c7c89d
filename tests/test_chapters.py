"""The chapters that read only run artifacts (no images) are executed afresh: every glued number, printed
text and table, and every figure they write must equal what the committed book shows. A change of code
that moves a number without a change of the artifacts fails here."""
import json
import re

import pytest

import lib

CHAPTERS = ("intro", "architecture", "experiments", "why", "tuning", "performance", "reproducibility")
DRAWS = {"intro", "experiments", "why", "tuning"}              # the chapters that save figures
BOOK = lib.ROOT / "book"


def outputs(path) -> list:
    """Every code cell's outputs as text, in order: glued values by name, markdown, HTML (tables and
    <picture>s) and printed text; the random ids pandas gives a table removed. Cells tagged
    `machine-dependent` (the versions and threads of the machine that executed the page) are skipped."""
    out = []
    for i, cell in enumerate(json.loads(path.read_text())["cells"]):
        if cell["cell_type"] != "code" or "machine-dependent" in cell.get("metadata", {}).get("tags", []):
            continue
        for o in cell.get("outputs", []):
            if o.get("output_type") == "error":
                out.append((i, "error", o["ename"]))
            if o.get("output_type") == "stream":
                out.append((i, o["name"], "".join(o["text"])))
            for kind, text in o.get("data", {}).items():
                if kind in ("text/markdown", "text/html", "application/papermill.record/text/plain"):
                    out.append((i, kind, re.sub(r"T_[0-9a-f_]+", "T_", "".join(text))))
    return out


@pytest.mark.chapters
@pytest.mark.parametrize("chapter", CHAPTERS)
def test_a_chapter_executed_afresh_prints_and_draws_what_the_book_shows(chapter, tmp_path, monkeypatch):
    papermill = pytest.importorskip("papermill")
    figures = tmp_path / "figures"
    monkeypatch.setenv("NORMBOOK_FIGURES", str(figures))
    executed = tmp_path / f"{chapter}.ipynb"
    papermill.execute_notebook(str(BOOK / f"{chapter}.ipynb"), str(executed), cwd=str(BOOK), progress_bar=False,
                               kernel_name="python3")
    committed, fresh = outputs(BOOK / f"{chapter}.ipynb"), outputs(executed)
    assert committed, "the committed chapter has no outputs: execute it with `make analysis`"
    for old, new in zip(committed, fresh):
        assert new == old, f"{chapter}: cell {old[0]}'s {old[1]} differs from the committed book"
    assert len(fresh) == len(committed)
    assert bool(list(figures.glob("*.png"))) == (chapter in DRAWS)
    for png in sorted(figures.glob("*.png")):
        assert png.read_bytes() == (BOOK / "figures" / png.name).read_bytes(), f"{png.name} differs from book/figures/"
