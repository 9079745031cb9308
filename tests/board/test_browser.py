"""The board in a real browser: headless Debian chromium driven by Playwright, against a real
``hyperlapse board`` process while a recorder writes in another process.

Skipped only where chromium (or Playwright) is missing and ``CI`` is not ``"true"``; in CI it
must run (``.ci/run`` installs chromium).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from board_helpers import record

CHROMIUM = os.environ.get("HYPERLAPSE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
HELPERS = Path(__file__).with_name("board_helpers.py")

pytestmark = pytest.mark.slow


def _need_browser():
    missing = []
    if not os.path.exists(CHROMIUM):
        missing.append(f"chromium ({CHROMIUM})")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the playwright package")
    if not missing:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but {' and '.join(missing)} missing: the browser test must run "
                    f"in CI (.ci/run installs chromium with apt and playwright with pip)")
    pytest.skip(f"{' and '.join(missing)} not installed (set CI=true to make this a failure)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_up(url: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(f"the board exited early with status {proc.returncode}")
        try:
            urllib.request.urlopen(url + "/api/board", timeout=2).read()
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError("the board did not answer within 60 s")


def test_board_in_chromium_while_a_recorder_writes(tmp_path):
    _need_browser()
    from playwright.sync_api import sync_playwright

    runs = tmp_path / "runs"
    runs.mkdir()
    record(runs / "b.zarr", snapshots=6, seed=1)  # a finished run to compare with
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    logs = {name: open(tmp_path / f"{name}.log", "w+") for name in ("writer", "board")}  # noqa: SIM115
    writer = subprocess.Popen(  # a live run: 80 snapshots, one every 0.25 s, committed at once
        [sys.executable, str(HELPERS), str(runs / "a.zarr"), "80", "0.25"], env=env,
        stdout=subprocess.DEVNULL, stderr=logs["writer"])
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    board = subprocess.Popen(
        [sys.executable, "-m", "hyperlapse.cli", "board", str(runs), "--port", str(port),
         "--poll", "0.3"], env=env, stdout=subprocess.DEVNULL, stderr=logs["board"])
    errors: list[str] = []
    try:
        _wait_up(url, board)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("response", lambda r: errors.append(f"{r.status} {r.url}")
                    if r.status >= 400 else None)

            # the run list: the live run appears (the writer may start after the page)
            page.goto(url + "/")
            page.wait_for_selector('tr[data-run="a.zarr"]', timeout=60_000)
            page.wait_for_selector('tr[data-run="b.zarr"]')

            # the run page: the snapshot count grows without reload
            page.goto(url + "/run?name=a.zarr")
            page.wait_for_function("Number(document.getElementById('snapshots').textContent) > 0",
                                   timeout=30_000)
            first = int(page.text_content("#snapshots"))
            page.wait_for_function(
                f"Number(document.getElementById('snapshots').textContent) > {first}",
                timeout=30_000)
            assert page.evaluate("performance.getEntriesByType('navigation').length") == 1
            assert int(page.text_content("#snapshots")) > first

            # the time-lapse: once a few snapshots are analysed, the slider moves the disk
            page.wait_for_function("Number(document.getElementById('analysed').textContent) >= 4",
                                   timeout=90_000)
            page.wait_for_function(  # a frame past the first is drawn (following the newest)
                "Number((document.getElementById('frame').textContent.match(/^snapshot (\\d+) /)"
                " || [0, 0])[1]) >= 3", timeout=30_000)
            page.uncheck("#follow")
            page.wait_for_timeout(300)  # a frame requested before the uncheck may still land
            shown = page.evaluate("document.getElementById('disk').data[1].x")
            page.evaluate("""() => { const s = document.getElementById('slider');
                s.value = 0; s.dispatchEvent(new Event('input')); }""")
            page.wait_for_function(
                "document.getElementById('frame').textContent.startsWith('snapshot 1 ')",
                timeout=30_000)
            moved = page.evaluate("document.getElementById('disk').data[1].x")
            assert moved != shown, "the slider did not change the drawn points"
            assert page.evaluate("document.getElementById('disk').data.length") == 3  # layers
            assert page.evaluate("document.getElementById('metric-loss').data[0].x.length") > 0

            # the comparison overlays the two runs on one chart per metric
            page.goto(url + "/compare?runs=a.zarr&runs=b.zarr")
            page.wait_for_function(
                "document.querySelectorAll('#charts .js-plotly-plot').length > 0", timeout=30_000)
            names = page.evaluate("""() => [...document.querySelectorAll('#charts .js-plotly-plot')]
                .filter((d) => d.layout.title.text === 'loss')[0].data.map((t) => t.name)""")
            assert sorted(names) == ["a.zarr", "b.zarr"]
            browser.close()
        assert not errors, f"JavaScript errors in the browser console: {errors}"
    finally:
        writer.kill()
        writer.wait()
        board.send_signal(signal.SIGINT)  # Ctrl-C
        try:
            code = board.wait(timeout=30)
        except subprocess.TimeoutExpired:
            board.kill()
            raise AssertionError("the board did not stop within 30 s of Ctrl-C") from None
        for log in logs.values():
            log.seek(0)
        err = logs["board"].read()
        for log in logs.values():
            log.close()
    assert code in (0, 130), err
    assert "Traceback" not in err, err
