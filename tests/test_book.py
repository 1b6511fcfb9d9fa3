"""The companion book as a reader sees it: built from executed notebooks, opened from disk in
headless Chromium (Debian's, driven by Playwright; never a downloaded browser).

The book is built once per session (``book/build.py``) from the session's small-profile runs of
every notebook (``small_runs``, the runs the notebook tests check, so nothing runs twice) and the
committed ``results/``; ``GSFH_BOOK_RUNS_DIR=build/runs`` renders the runs of ``make book``
instead (quicker when only these tests are run). Every page is then visited once: each request
that is not a local file is blocked and counted, and so are failed requests and console errors;
math must be typeset by the local MathJax (its startup promise resolved, every formula inside an
``mjx-container``, no raw ``$$``, ``\\(``, ``\\[`` or ``$x$`` left in the text); every image
must have loaded. A screenshot of each page goes to ``build/book-screenshots/``. The negative
tests break a copy of the built book in each of these ways and check that the same inspection
reports it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gsfh_utils.lab.io import REPOSITORY_ROOT
from gsfh_utils.lab.runner import find_notebooks

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOTS = REPOSITORY_ROOT / "build" / "book-screenshots"
LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:")
NOTEBOOKS = find_notebooks(REPOSITORY_ROOT / "notebooks")

#: The text of the page outside code, scripts and typeset math: what should hold no raw TeX.
PROSE_TEXT = """() => {
  const body = document.body.cloneNode(true);
  body.querySelectorAll('pre, code, script, style, mjx-container, .highlight')
      .forEach(node => node.remove());
  return body.textContent;
}"""
#: Formulas (Sphinx's .math elements) that MathJax did not turn into an mjx-container.
UNTYPESET = """() => [...document.querySelectorAll('.math')]
  .filter(node => !node.querySelector('mjx-container')).map(node => node.textContent.trim())"""
#: TeX left in the text: display or inline delimiters, or a single-dollar formula.
RAW_TEX = r"\$\$.{0,40}|\\\(.{0,40}|\\\[.{0,40}|\$[^\s$][^$\n]{0,40}\$"
BROKEN_IMAGES = """() => [...document.images]
  .filter(img => !(img.complete && img.naturalWidth > 0)).map(img => img.getAttribute('src'))"""
MATHJAX_READY = """() => window.MathJax && MathJax.startup && MathJax.startup.promise
  ? MathJax.startup.promise.then(() => true) : false"""


@dataclass
class PageReport:
    """What one page did in the browser."""

    page: str
    console_errors: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    remote_requests: list[str] = field(default_factory=list)
    untypeset: list[str] = field(default_factory=list)
    raw_tex: list[str] = field(default_factory=list)
    broken_images: list[str] = field(default_factory=list)
    formulas: int = 0
    images: int = 0
    text: str = ""


class Reader:
    """One browser tab that reads pages of a built book, every non-local request blocked."""

    def __init__(self, browser):
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.report = PageReport("")
        self.page.on("console", lambda message: message.type == "error"
                     and self.report.console_errors.append(message.text))
        self.page.on("pageerror", lambda error: self.report.console_errors.append(str(error)))
        self.page.on("requestfailed", lambda request: self.report.failed_requests.append(
            f"{request.url} ({request.failure})"))

    def _route(self, route):
        if route.request.url.startswith(LOCAL_SCHEMES):
            route.continue_()
        else:
            self.report.remote_requests.append(route.request.url)
            route.abort()

    def read(self, html: Path, path: Path, screenshot: Path | None = None) -> PageReport:
        """Open ``path`` (a page of the built book ``html``) and report what it did."""
        self.report = report = PageReport(path.relative_to(html).as_posix())
        page = self.page
        page.goto(path.as_uri(), wait_until="load")
        report.formulas = page.locator(".math").count()
        if report.formulas and not page.evaluate(MATHJAX_READY):
            report.untypeset.append("MathJax did not start")
        report.untypeset += page.evaluate(UNTYPESET)
        prose = page.evaluate(PROSE_TEXT)
        report.raw_tex = re.findall(RAW_TEX, prose)
        report.images = page.evaluate("() => document.images.length")
        report.broken_images = page.evaluate(BROKEN_IMAGES)
        report.text = page.inner_text("body")
        if screenshot is not None:
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot))
        page.goto("about:blank")  # late events of this page stay out of the next report
        return report

    def close(self):
        self.context.close()


def pages_of(html: Path) -> list[Path]:
    """The pages of the book (not the theme's template fragments in ``_static/``)."""
    return sorted(path for path in html.rglob("*.html")
                  if path.relative_to(html).parts[0] not in ("_static", "_sources"))


@pytest.fixture(scope="session")
def book(small_runs, tmp_path_factory) -> Path:
    """The book built from this session's small-profile runs (or ``$GSFH_BOOK_RUNS_DIR``) and the
    committed results: the folder of its HTML."""
    runs_dir = os.environ.get("GSFH_BOOK_RUNS_DIR")
    if not runs_dir:
        for notebook in NOTEBOOKS:
            assert small_runs(notebook).error is None, f"{notebook.stem} failed to run"
        runs_dir = small_runs.folder
    out = tmp_path_factory.mktemp("book")
    build = subprocess.run([sys.executable, str(REPOSITORY_ROOT / "book" / "build.py"),
                            "--runs-dir", str(runs_dir), "--out", str(out)],
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, f"the book does not build:\n{build.stdout}\n{build.stderr}"
    return out / "html"


@pytest.fixture(scope="session")
def browser():
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install --no-install-recommends chromium "
                    "chromium-driver (.ci/run does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def reports(book, browser) -> dict[str, PageReport]:
    """Every page of the book visited once, with a screenshot of each."""
    shutil.rmtree(SCREENSHOTS, ignore_errors=True)
    reader = Reader(browser)
    try:
        return {report.page: report for report in (
            reader.read(book, path, SCREENSHOTS / path.relative_to(book).with_suffix(
                ".png").as_posix().replace("/", "__"))
            for path in pages_of(book))}
    finally:
        reader.close()


def offenders(reports: dict[str, PageReport], attribute: str) -> dict[str, list]:
    return {page: getattr(r, attribute) for page, r in reports.items() if getattr(r, attribute)}


# --------------------------------------------------------------------------------------------
# The book as built.
# --------------------------------------------------------------------------------------------


def test_every_chapter_and_page_is_there(reports):
    expected = {"index.html", "claims.html", "api.html", "bibliography.html",
                *(f"notebooks/{notebook.stem}.html" for notebook in NOTEBOOKS)}
    assert expected <= set(reports), f"missing pages: {sorted(expected - set(reports))}"
    assert any(page.startswith("generated/gsfh_utils.lab.runner") for page in reports)


@pytest.mark.parametrize("attribute", ["remote_requests", "failed_requests", "console_errors"])
def test_no_page_requests_the_network_fails_a_request_or_logs_an_error(reports, attribute):
    assert not offenders(reports, attribute)


def test_math_is_typeset_on_every_page(reports):
    assert not offenders(reports, "untypeset")
    assert not offenders(reports, "raw_tex")
    for notebook in NOTEBOOKS:  # every chapter derives something
        assert reports[f"notebooks/{notebook.stem}.html"].formulas > 0, notebook.stem


def test_every_image_loads(reports):
    assert not offenders(reports, "broken_images")
    for notebook in NOTEBOOKS:  # every chapter draws figures
        assert reports[f"notebooks/{notebook.stem}.html"].images > 0, notebook.stem


def claim_ids(results_dir: Path) -> set[str]:
    ids = set()
    for path in results_dir.glob("*.json"):
        data = json.loads(path.read_text())
        ids |= {claim["id"] for claim in data["claims"]}
        ids |= {skipped["id"] for skipped in data.get("skipped", [])}
    return ids


def missing_claims(report: PageReport, results_dir: Path) -> set[str]:
    shown = set(re.findall(r"\S+", report.text))
    return claim_ids(results_dir) - shown


def test_the_claims_page_lists_every_claim(reports):
    assert claim_ids(REPOSITORY_ROOT / "results")
    assert not missing_claims(reports["claims.html"], REPOSITORY_ROOT / "results")


def test_screenshots_of_every_page():
    assert sorted(SCREENSHOTS.glob("*.png")), "no screenshot written"


# --------------------------------------------------------------------------------------------
# Each check catches what it is for: a copy of the book, broken one way at a time.
# --------------------------------------------------------------------------------------------


@pytest.fixture
def broken(book, tmp_path) -> Path:
    """A copy of the built book to break."""
    return Path(shutil.copytree(book, tmp_path / "html"))


@pytest.fixture
def reader(browser):
    reader = Reader(browser)
    yield reader
    reader.close()


def chapter_page(html: Path) -> Path:
    return html / "notebooks" / f"{NOTEBOOKS[0].stem}.html"


def insert(page: Path, snippet: str) -> None:
    text = page.read_text()
    page.write_text(text.replace("</article>", f"{snippet}</article>", 1))


def test_a_cdn_script_is_caught(broken, reader):
    page = chapter_page(broken)
    insert(page, '<script src="https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-chtml.js">'
                 "</script>")
    report = reader.read(broken, page)
    assert any("cdn.jsdelivr.net" in url for url in report.remote_requests)
    assert any("cdn.jsdelivr.net" in url for url in report.failed_requests)


def test_a_remote_stylesheet_and_image_are_caught(broken, reader):
    page = broken / "index.html"
    insert(page, '<link rel="stylesheet" href="http://fonts.example.org/a.css">'
                 '<img src="https://example.org/badge.svg">')
    report = reader.read(broken, page)
    assert {"http://fonts.example.org/a.css", "https://example.org/badge.svg"} <= set(
        report.remote_requests)
    assert report.broken_images == ["https://example.org/badge.svg"]


def test_a_raw_formula_is_caught(broken, reader):
    page = chapter_page(broken)
    # MathJax typesets $$ in any element it processes: the formula is left raw where it is told
    # to ignore the text, as it would be for math that never reaches a processed element.
    insert(page, '<p class="mathjax_ignore">$$J(\\pi) = \\mathbb{E}\\, r$$</p>')
    assert reader.read(broken, page).raw_tex == ["$$J(\\pi) = \\mathbb{E}\\, r$$"]


def test_a_raw_inline_formula_is_caught(broken, reader):
    page = broken / "bibliography.html"
    insert(page, "<p>from pairwise or $K$-wise comparisons</p>")
    assert reader.read(broken, page).raw_tex == ["$K$"]


def test_missing_mathjax_is_caught(broken, reader):
    (broken / "_static" / "mathjax" / "tex-chtml.js").unlink()
    report = reader.read(broken, chapter_page(broken))
    assert report.untypeset[0] == "MathJax did not start"
    assert len(report.untypeset) == 1 + report.formulas
    assert report.raw_tex and any("tex-chtml.js" in url for url in report.failed_requests)


def test_a_missing_figure_is_caught(broken, reader):
    page = chapter_page(broken)
    image = re.search(r'<img[^>]+src="([^"]+\.png)"', page.read_text()).group(1)
    (page.parent / image).unlink()
    report = reader.read(broken, page)
    assert report.broken_images == [image]
    assert report.failed_requests


def test_a_console_error_is_caught(broken, reader):
    page = broken / "claims.html"
    insert(page, "<script>console.error('broken'); undefined_function();</script>")
    errors = reader.read(broken, page).console_errors
    assert "broken" in errors and any("undefined_function" in error for error in errors)


def test_a_claim_missing_from_the_claims_page_is_caught(broken, reader, tmp_path):
    results = tmp_path / "results"
    shutil.copytree(REPOSITORY_ROOT / "results", results)
    path = sorted(results.glob("*.json"))[0]
    data = json.loads(path.read_text())
    data["claims"].append({**data["claims"][0], "id": "a_claim_not_on_the_page"})
    path.write_text(json.dumps(data))
    report = reader.read(broken, broken / "claims.html")
    assert missing_claims(report, results) == {"a_claim_not_on_the_page"}
