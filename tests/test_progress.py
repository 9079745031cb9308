"""hyperlapse.progress: the one progress display (bar, lines above it, quiet off a terminal)."""

from __future__ import annotations

import ast
import io
from pathlib import Path

import pytest

import hyperlapse.progress as P
from hyperlapse.progress import Progress, progress_bar, write

SRC = Path(__file__).resolve().parents[1] / "src" / "hyperlapse"


class Clock:
    """A controllable ``time.monotonic``."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(P.time, "monotonic", c)
    return c


def test_silent_off_a_terminal_but_lines_still_print(capsys):
    out = io.StringIO()  # a pipe or a log file: isatty() is False
    bar = Progress(total=3, desc="x", stream=out, min_interval=0)
    assert [t for t in Progress(range(3), stream=out)] == [0, 1, 2]
    bar.update(2, total=5, lag=3)
    bar.write("a line")
    bar.close()
    assert out.getvalue() == ""
    assert capsys.readouterr().out == "a line\n"


def test_disabled_draws_nothing_even_on_a_terminal(terminal):
    bar = Progress(total=4, enabled=False, min_interval=0)
    for n in range(5):
        bar.update(n)
    bar.close()
    assert terminal.getvalue() == "" and not P._VISIBLE


def test_changing_total_postfix_and_eta(terminal, clock):
    bar = Progress(total=10, desc="watch", unit="snap", min_interval=0)
    clock.now += 2
    bar.update(4, lag=6)
    assert terminal.screen()[-1].split() == [
        "watch", "40%|########------------|", "4/10", "snap", "2.0", "snap/s", "elapsed",
        "0:02", "ETA", "0:03", "lag=6",
    ]
    clock.now += 2
    bar.update(8, total=20, lag=12)  # the store grew: a new total, the lag replaces the old one
    screen = terminal.screen()[-1]
    assert "40%" in screen and "8/20 snap" in screen and "ETA 0:06" in screen
    assert screen.endswith("lag=12") and "lag=6" not in screen
    bar.update(20, total=20, lag=0)
    bar.close()
    final = terminal.screen()
    assert len(final) == 1 and "100%" in final[0] and "20/20" in final[0]
    assert "ETA" not in final[0] and terminal.getvalue().endswith("\n")


def test_unknown_total_shows_count_and_rate(terminal, clock):
    bar = Progress(desc="follow", unit="snap", min_interval=0)
    clock.now += 4
    bar.update(2)
    assert terminal.screen()[-1].split()[:5] == ["follow", "2", "snap", "0.5", "snap/s"]
    assert "%" not in terminal.screen()[-1] and "ETA" not in terminal.screen()[-1]
    bar.close()


def test_resumed_work_counts_only_new_progress_in_rate_and_eta(terminal, clock):
    bar = Progress(total=10, unit="runs", start=5, min_interval=0)
    clock.now += 2
    bar.update(6.5)  # fractional progress within a block
    line = terminal.screen()[-1]
    assert "6.5/10 runs" in line and "0.8 runs/s" in line and "ETA 0:05" in line
    bar.close()


def test_write_prints_above_the_bar(terminal, clock):
    bar = Progress(range(3), desc="analyze", unit="snap", min_interval=0)
    seen = []
    for t in bar:
        write(f"line {t}")
        seen.append(terminal.screen())
    # each line lands above the bar, and the bar is redrawn below it
    assert seen[0][0] == "line 0" and seen[0][1].startswith("analyze")
    assert seen[2][:3] == ["line 0", "line 1", "line 2"] and "2/3 snap" in seen[2][3]
    assert terminal.screen()[-1].split()[:2] == ["analyze", "100%|####################|"]
    assert not P._VISIBLE


def test_iterating_closes_the_bar_even_on_break(terminal):
    bar = Progress(range(10), min_interval=0)
    for t in bar:
        if t == 2:
            break
    del t
    assert bar.closed and not P._VISIBLE
    assert terminal.getvalue().endswith("\n")
    with pytest.raises(TypeError, match="update"):
        iter(Progress(total=3)).__next__()


def test_the_line_never_wraps(terminal, monkeypatch):
    monkeypatch.setenv("COLUMNS", "30")
    bar = Progress(total=1000, desc="a long description", unit="snap", min_interval=0)
    bar.update(500, note="x" * 50)
    bar.update(501)
    bar.close()
    assert all(len(line) <= 29 for line in terminal.screen())


def test_redraws_are_throttled(terminal, clock):
    bar = Progress(total=100, min_interval=0.5)
    drawn = terminal.getvalue().count("\r")
    for n in range(50):
        bar.update(n)  # the clock stands still: no redraw
    assert terminal.getvalue().count("\r") == drawn
    clock.now += 1
    bar.update(50)
    assert terminal.getvalue().count("\r") == drawn + 1
    bar.close()


def test_progress_bar_shorthand_is_a_progress_with_a_postfix():
    bar = progress_bar(range(2), False, "fit")
    assert isinstance(bar, Progress) and list(bar) == [0, 1]
    bar.set_postfix(loss="0.1")
    assert bar.postfix == {"loss": "0.1"}


def test_progress_is_a_leaf_and_the_only_bar_in_the_package():
    imports = [
        node.module or "" for node in ast.walk(ast.parse((SRC / "progress.py").read_text()))
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith(
            "hyperlapse"))
    ]
    assert imports == []  # importable from every layer without reaching back up
    bars = ("from tqdm", "import tqdm", "class Progress", "class _Progress")
    others = [str(p.relative_to(SRC)) for p in SRC.rglob("*.py")
              if p.name != "progress.py" and any(b in p.read_text() for b in bars)]
    assert others == []
