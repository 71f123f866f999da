"""``notebooks/explore.ipynb`` in a real browser: Voilà serves it, headless Chromium drives it.

What it checks that ``tests/test_explore.py`` cannot: the page renders the widgets (Voilà's
kernel is detected as a live frontend), moving a sweep slider in the browser redraws the figure
the browser shows, and the button launches a real small run whose progress bar moves while the
run streams its metrics and ends green. Screenshots are kept under the pytest tmp directory and
copied to ``artifacts/tmp/browser/`` (git-ignored).

Skipped without Chromium (``/usr/bin/chromium``, or ``$PASO_CHROMIUM``), Voilà or playwright's
Python package (``pip install -e ".[browser]"``; playwright drives the system Chromium, no
browser download). Run with ``make test-browser``; about a minute on 2 CPU cores.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "explore.ipynb"
CHROMIUM = os.environ.get("PASO_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
#: Where screenshots are copied so they outlive the pytest tmp directory (git-ignored).
KEPT = ROOT / "artifacts" / "tmp" / "browser"
PAGE_TIMEOUT_MS = 180_000  # Voilà: kernel start and the whole notebook before the page shows


def _missing(reason: str) -> None:
    """Skip, or fail under ``make test-browser`` (``PASO_BROWSER_REQUIRED=1``), where a skip
    would read as a pass."""
    if os.environ.get("PASO_BROWSER_REQUIRED") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _fake_runs(root: Path) -> None:
    """Four PASO runs (P in {2, 4} x threshold in {0.1, 1.0}) and a serial one, with losses
    that differ by P, so the figure differs when the P slider moves."""
    for P in (2, 4):
        for threshold in (0.1, 1.0):
            _write_run(root / f"paso-P{P}-t{threshold}", {"method": "paso", "task": "synthetic", "P": P,
                                                          "threshold": threshold, "seed": 0},
                       scale=1.0 / P + threshold / 10)
    _write_run(root / "serial", {"method": "serial", "task": "synthetic", "seed": 0}, scale=1.5)


def _write_run(path: Path, config: dict, scale: float) -> None:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(config))
    (path / "summary.json").write_text(json.dumps({"status": "completed", "steps": 20}))
    rows = ["kind,steps_done,train_loss"] + [f"train,{s},{scale * 10 / s:.5f}" for s in range(1, 21)]
    (path / "metrics.csv").write_text("\n".join(rows) + "\n")


@pytest.fixture
def voila_url(tmp_path: Path):
    """A Voilà server on a free localhost port serving the explorer over the fake runs."""
    if not Path(CHROMIUM).exists():
        _missing(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set PASO_CHROMIUM)")
    for module, package in (("voila", "voila"), ("playwright.sync_api", "playwright")):
        try:
            __import__(module)
        except ImportError:
            _missing(f"no {package} (pip install -e '.[browser]')")
    artifacts = tmp_path / "artifacts"
    _fake_runs(artifacts / "runs")
    (tmp_path / "tmp").mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PASO_WIDGETS"}  # Voilà must be detected by itself
    env.update(PASO_ARTIFACTS=str(artifacts), PASO_SCALE="smoke", TMPDIR=str(tmp_path / "tmp"),
               JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"), MPLBACKEND="Agg")
    port, token = _free_port(), secrets.token_hex(16)
    log = (tmp_path / "voila.log").open("w")
    server = subprocess.Popen([sys.executable, "-m", "voila", str(NOTEBOOK), "--no-browser", f"--port={port}",
                               "--Voila.ip=127.0.0.1", f"--token={token}", "--show_tracebacks=True"],
                              cwd=ROOT / "notebooks", env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"Voilà did not start:\n{(tmp_path / 'voila.log').read_text()[-3000:]}")
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}/?token={token}"
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def _keep(path: Path) -> Path:
    KEPT.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy2(path, KEPT / path.name))


def test_slider_redraws_the_figure_and_the_button_runs_with_a_live_progress_bar(voila_url: str,
                                                                                  tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    timings: dict[str, float] = {}
    started = time.perf_counter()
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 1400})
        try:
            page = context.pages[0] if context.pages else context.new_page()
            page.goto(voila_url, timeout=PAGE_TIMEOUT_MS)
            plot = page.locator("img.paso-explore-plot")
            plot.wait_for(state="visible", timeout=PAGE_TIMEOUT_MS)
            page.wait_for_function("document.querySelector('img.paso-explore-plot').naturalWidth > 0",
                                   timeout=60_000)
            timings["page_ready_s"] = time.perf_counter() - started
            status = page.locator(".paso-explore-status")
            assert "5</b> of 5" in status.inner_html()  # all fake runs of the task shown
            before_src, before_png = plot.get_attribute("src"), plot.screenshot()
            page.screenshot(path=str(tmp_path / "explore_before.png"), full_page=True)

            # move the P slider one notch (any -> 2) with the keyboard, as a person would
            handle = page.locator(".paso-explore-slider-P .noUi-handle")
            handle.focus()
            handle.press("ArrowRight")
            page.wait_for_function("src => document.querySelector('img.paso-explore-plot').src !== src",
                                   arg=before_src, timeout=30_000)
            page.wait_for_function("document.querySelector('img.paso-explore-plot').naturalWidth > 0",
                                   timeout=30_000)
            assert "2</b> of 5" in status.inner_html()  # the two P=2 runs
            assert page.locator(".paso-explore-slider-P .widget-readout").inner_text().strip() == "2"
            assert plot.screenshot() != before_png
            timings["slider_redraw_s"] = time.perf_counter() - started - timings["page_ready_s"]
            page.screenshot(path=str(tmp_path / "explore_after_slider.png"), full_page=True)

            # launch a small real PASO run; the bar must show progress before it ends green
            tic = time.perf_counter()
            page.locator("button.paso-explore-launch").click()
            bar = page.locator(".paso-explore-progress .progress-bar")
            seen: set[str] = set()
            deadline = time.monotonic() + 240
            while "progress-bar-success" not in (bar.get_attribute("class") or ""):
                assert "progress-bar-danger" not in (bar.get_attribute("class") or ""), page.content()[-3000:]
                assert time.monotonic() < deadline, f"run did not finish; bar widths seen: {sorted(seen)}"
                seen.add(bar.evaluate("el => el.style.width"))
                time.sleep(0.1)
            timings["new_run_s"] = time.perf_counter() - tic
            partial = {w for w in seen if w not in ("", "0%", "100%")}
            assert partial, f"the bar never showed a partial value: {sorted(seen)}"
            assert bar.evaluate("el => el.style.width") == "100%"
            page.wait_for_function("document.querySelector('.paso-explore-status').innerText.includes('of 6')",
                                   timeout=30_000)  # the new run joined the list
            page.screenshot(path=str(tmp_path / "explore_after_run.png"), full_page=True)
        finally:
            context.close()
    kept = [_keep(tmp_path / name) for name in ("explore_before.png", "explore_after_slider.png",
                                                "explore_after_run.png")]
    timings["total_s"] = time.perf_counter() - started
    print(f"browser timings: {json.dumps({k: round(v, 1) for k, v in timings.items()})}; screenshots: "
          + ", ".join(map(str, kept)))
