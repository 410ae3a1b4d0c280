"""The HTML report and history, opened in a real browser (Debian's Chromium, headless):
every image decodes, nothing is fetched from elsewhere, and a screenshot is taken."""
import os
import shutil
from pathlib import Path

import pytest
from test_aggregation import _frame

from xtp_ray.results.history import write_history
from xtp_ray.results.report import render_figures, render_html
from xtp_ray.results.rows import aggregate_frame

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if not CHROMIUM:
    if os.environ.get("CI"):  # the project's set-up installs it; in CI its absence is a failure
        raise RuntimeError("chromium is not installed: `make install` installs it (Debian package chromium)")
    pytest.skip("no chromium here (`make install` installs it as root)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")

# no background services: the machine has no network, and the page must need none
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


def _open(path: Path, screenshot: Path) -> tuple[list[int], list[str]]:
    """(natural width of every <img>, URLs requested that are not the page itself or data:)."""
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            elsewhere = []
            page.on("request", lambda r: elsewhere.append(r.url)
                    if not r.url.startswith(("data:", path.as_uri())) else None)
            page.goto(path.as_uri(), wait_until="load")
            widths = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)")
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return widths, elsewhere


def test_report_html_renders_every_figure(tmp_path):
    report = {"run_id": "browser", **aggregate_frame(_frame())}
    figures = render_figures(report)
    page = tmp_path / "report.html"
    page.write_text(render_html(report, figures), encoding="utf-8")
    widths, elsewhere = _open(page, tmp_path / "report.png")
    assert len(widths) == len(figures) and all(w > 0 for w in widths), widths
    assert elsewhere == []
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_history_html_renders(tmp_path):
    from test_history import _report, _write_run

    out = tmp_path / "runs"
    _write_run(out, "n1", 1.0, _report("n1", 0.4, 0.8, applied=0.5))
    _write_run(out, "n2", 2.0, _report("n2", 0.5, 0.9, applied=0.6))
    write_history(str(out))
    widths, elsewhere = _open(out / "history" / "history.html", tmp_path / "history.png")
    assert widths and all(w > 0 for w in widths) and elsewhere == []
