"""The site: `jupyter-book build book/` succeeds with warnings as errors, and headless Chromium sees
every image load and every internal link resolve on the index and results pages."""
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urldefrag, urlparse

import pytest

from conftest import ROOT

PAGES = ["index.html", "intro.html", "results.html"]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    jb = shutil.which("jupyter-book") or str(Path(sys.executable).parent / "jupyter-book")
    done = subprocess.run([jb, "build", "book/", "--path-output", str(out), "-W", "-n", "--keep-going"],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-5000:]
    html = out / "_build" / "html"
    assert (html / "intro.html").exists() and (html / "results.html").exists()
    return html


def test_every_chapter_is_built(site):
    for page in ["theory", "architecture", "runs/bn", "runs/gn", "runs/ln", "results", "experiments", "tuning",
                 "performance", "reproducibility"]:
        assert (site / f"{page}.html").exists(), page
    for page in ("intro", "results", "experiments", "tuning"):            # executed, and without errors
        html = (site / f"{page}.html").read_text()
        assert "Traceback" not in html, page
        assert page == "intro" or "<img" in html, f"{page} shows no figure"


def _chromium(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver, "Debian's chromium and chromium-driver are needed: `make test` installs them"
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1300,1000"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(driver), options=opts)


def _check_internal_link(url: str) -> str | None:
    """None if a file:// link points at an existing file (and anchor); else what is wrong."""
    target, fragment = urldefrag(url)
    path = Path(unquote(urlparse(target).path))
    if not path.exists():
        return f"{url}: no such file"
    if fragment and path.suffix == ".html" and f'id="{fragment}"' not in path.read_text(errors="replace"):
        return f"{url}: no element with id {fragment!r}"
    return None


def test_pages_load_images_and_links_in_chromium(site, tmp_path):
    browser = _chromium(tmp_path)
    shots = ROOT / "_build" / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    try:
        for page in PAGES:
            browser.get((site / page).as_uri())                          # returns after the load event
            title = browser.title
            assert "normbook" in title or "Normalization" in title or "Results" in title, title
            images = browser.execute_script(
                "return Array.from(document.images).map(i => [i.currentSrc || i.src, i.complete, i.naturalWidth])")
            broken = [src for src, complete, width in images if not complete or width == 0]
            assert not broken, f"{page}: images that did not load: {broken}"
            if page == "results.html":
                assert len(images) >= 6, f"results page shows only {len(images)} images"
            links = browser.execute_script("return Array.from(document.querySelectorAll('a[href]')).map(a => a.href)")
            internal = {l for l in links if l.startswith("file://")}
            assert internal, f"{page}: no internal links found"
            problems = [p for p in map(_check_internal_link, sorted(internal)) if p]
            assert not problems, f"{page}: broken internal links: {problems}"
            browser.save_screenshot(str(shots / page.replace(".html", ".png")))
    finally:
        browser.quit()
