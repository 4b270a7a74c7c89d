"""The site: `jupyter-book build book/` succeeds with warnings as errors, and headless Chromium, at desktop
and at phone width, sees the answer on the first screen, every image load, every internal link resolve,
every table padded, and no page wider than the phone."""
import base64
import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urldefrag, urlparse

import pytest

import lib
from conftest import ROOT

CHAPTERS = ["intro", "theory", "architecture", "runs/bn", "runs/gn", "runs/ln", "results", "experiments", "why",
            "tuning", "performance", "reproducibility", "glossary"]
# Words about how the work was organised, which a reader of the report should never meet outside code.
INTERNAL = re.compile(r"(?i:\b(?:mission|issues?|sessions?|lent|seed-style|round \d|waits? for|still to (?:run|come)|to-?do|"
                      r"planned|we had set|our targets?|targets? we|so far|not yet|yet to|for now|at the moment|"
                      r"currently|today's|earlier recipe)\b)|\blib\.[A-Z][A-Z_]+\b")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    jb = shutil.which("jupyter-book") or str(Path(sys.executable).parent / "jupyter-book")
    done = subprocess.run([jb, "build", "book/", "--path-output", str(out), "-W", "-n", "--keep-going"],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-5000:]
    return out / "_build" / "html"


def reader_text(html: str) -> str:
    """A page's prose: without code cells, code, scripts and the navigation."""
    from bs4 import BeautifulSoup
    soup = BeautifulSoup(html, "html.parser")
    for tag in soup.select("div.cell_input, pre, code, script, style, nav, .bd-sidebar-primary, .bd-header, footer"):
        tag.decompose()
    main = soup.select_one("main") or soup
    return main.get_text(" ")


def test_every_chapter_is_built_without_errors_or_internal_language(site):
    for page in CHAPTERS:
        html = (site / f"{page}.html").read_text()
        assert "Traceback" not in html, page
        found = INTERNAL.findall(reader_text(html))
        assert not found, f"{page}: {sorted(set(found))}"


def test_no_table_without_a_class(site):
    for page in CHAPTERS:
        bare = re.findall(r"<table(?![^>]*class=)[^>]*>", (site / f"{page}.html").read_text())
        assert not bare, f"{page}: {bare[:2]}"


def test_run_pages_are_titled_by_their_norm(site):
    for norm in lib.NORMS:
        html = (site / f"runs/{norm}.html").read_text()
        title = re.search(r"<title>(.*?)</title>", html, re.S).group(1)
        assert f"Run: {lib.NORM_NAMES[norm].split(' ')[0]}" in title, title


def _chromium(tmp_path, width, height):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver, "Debian's chromium and chromium-driver are needed: `make test` installs them"
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                f"--user-data-dir={tmp_path / f'profile{width}'}", f"--window-size={width},{height}"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})     # the page's JavaScript errors
    if width < 500:
        opts.add_experimental_option("mobileEmulation", {"deviceMetrics": {"width": width, "height": height, "pixelRatio": 2}})
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


def each_page(site, tmp_path, width, height, pages, label):
    """Open each page in headless Chromium at this size; yield (page, browser); save a screenshot after, into
    the folder NORMBOOK_SCREENSHOTS names (to look at them), else into the test's temporary folder."""
    browser = _chromium(tmp_path, width, height)
    shots = Path(os.environ.get("NORMBOOK_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    try:
        for page in pages:
            browser.get((site / f"{page}.html").as_uri())          # returns after the load event
            yield page, browser
            browser.save_screenshot(str(shots / f"{page.replace('/', '_')}-{label}.png"))
    finally:
        browser.quit()


def png_text_px(src: str, shown_width: float) -> float:
    """How tall, in CSS px, the smallest text of a figure is drawn: its size in points (MinFontPt, recorded
    by report.png_bytes) at the PNG's resolution, scaled by the width the page gives the image."""
    from PIL import Image
    data = base64.b64decode(src.split(",", 1)[1]) if src.startswith("data:") else Path(unquote(urlparse(src).path)).read_bytes()
    image = Image.open(io.BytesIO(data))
    assert "MinFontPt" in image.info, "a figure made without report.figure / report.save_figure (its text size is unknown)"
    return float(image.info["MinFontPt"]) * image.info["dpi"][0] / 72 * shown_width / image.size[0]


def test_desktop_answer_first_images_and_links(site, tmp_path):
    for page, browser in each_page(site, tmp_path, 1366, 768, CHAPTERS, "desktop"):
        images = browser.execute_script(
            "return Array.from(document.images).map(i => [i.currentSrc || i.src, i.complete, i.naturalWidth])")
        assert not [src for src, ok, w in images if not ok or w == 0], f"{page}: images that did not load"
        links = browser.execute_script("return Array.from(document.querySelectorAll('a[href]')).map(a => a.href)")
        problems = [p for p in map(_check_internal_link, sorted(l for l in links if l.startswith("file://"))) if p]
        assert not problems, f"{page}: broken internal links: {problems}"
        if page == "intro":
            # The answer on the first screen: the headline numbers and the whole "Which should I use?" list
            # end within the first 768 px of the page; the key figure follows.
            where = browser.execute_script("""
                const main = document.querySelector('main');
                const strong = Array.from(main.querySelectorAll('strong')).find(s => s.textContent.includes('±'));
                const which = Array.from(main.querySelectorAll('strong')).find(s => s.textContent.includes('Which should I use'));
                const list = which ? which.closest('p').nextElementSibling : null;
                const img = main.querySelector('picture img');
                const box = (e) => e ? e.getBoundingClientRect() : {bottom: 1e9, top: 1e9};
                return [box(strong).bottom, box(list).bottom, box(img).top, window.innerHeight];""")
            assert max(where[:2]) < where[3], f"headline numbers and recommendations end at {where[:2]} px, beyond " \
                                              f"the first screen ({where[3]} px)"
            assert where[1] <= where[2] < 1e9, f"the key figure ({where[2]} px) does not follow the recommendations"
        if page == "results":
            assert len(images) >= 8, f"results page shows only {len(images)} images"
        scripts = [e["message"] for e in browser.get_log("browser")          # a CDN out of reach is no page error
                   if e["level"] == "SEVERE" and ("Uncaught" in e["message"] or "SyntaxError" in e["message"])]
        assert not scripts, f"{page}: JavaScript errors: {scripts}"
        wide = browser.execute_script("""return Array.from(document.querySelectorAll('main table.dataframe'))
            .filter(t => t.scrollWidth > t.clientWidth + 1).map(t => t.querySelector('th, td').textContent.trim())""")
        assert not wide, f"{page}: tables wider than their box at 1366 px (a column hides): {wide}"


def test_phone_pages_do_not_overflow(site, tmp_path):
    for page, browser in each_page(site, tmp_path, 390, 844, ["intro", "results", "why", "tuning"], "phone"):
        width = browser.execute_script("return [document.documentElement.scrollWidth, window.innerWidth]")
        assert width[0] <= width[1] + 1, f"{page}: the page is {width[0]} px wide on a {width[1]} px phone"


def test_phone_figures_draw_their_text_no_smaller_than_the_pages_small_print(site, tmp_path):
    for page, browser in each_page(site, tmp_path, 390, 844, CHAPTERS, "phone-figures"):
        small, figures = browser.execute_script("""
            const cell = document.querySelector('main table.dataframe td');
            const small = cell ? parseFloat(getComputedStyle(cell).fontSize) : 0.85 * parseFloat(getComputedStyle(document.documentElement).fontSize);
            const imgs = Array.from(document.querySelectorAll('main img')).filter(i => !(i.currentSrc || i.src).includes('/_static/'));
            return [small, imgs.map(i => [i.currentSrc || i.src, i.clientWidth])];""")
        for src, shown in figures:
            px = png_text_px(src, shown)
            assert px >= small - 0.05, f"{page}: a figure's smallest text is {px:.1f} px on a phone, below the page's " \
                                       f"small print ({small:.1f} px): {src[:60]}"
