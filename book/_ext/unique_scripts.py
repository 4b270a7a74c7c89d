"""A Sphinx extension with one job: each page's <head> loads every script once. sphinx-thebe and
sphinx-togglebutton add their inline configuration scripts twice in a Jupyter Book build, so every page
declared `const THEBE_JS_URL` twice and the browser logged an error; when the build finishes, a repeated,
identical script line in a page's head is dropped."""
from pathlib import Path


def drop_repeated_scripts(app, exception):
    if exception is not None or app.builder.format != "html":
        return
    for page in Path(app.outdir).rglob("*.html"):
        html = page.read_text(encoding="utf-8")
        head, sep, body = html.partition("</head>")
        seen, lines = set(), []
        for line in head.split("\n"):
            if line.strip().startswith("<script") and line.strip() in seen:
                continue
            seen.add(line.strip())
            lines.append(line)
        if len(lines) < head.count("\n") + 1:
            page.write_text("\n".join(lines) + sep + body, encoding="utf-8")


def setup(app):
    app.connect("build-finished", drop_repeated_scripts)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
