"""The README's Python examples run, in order, as one script (a demo no test runs rots)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_the_record_encode_report_examples():
    text = "\n".join(_blocks())
    for name in ("TrajectoryRecorder", "fit_encoder", "LiveReport"):
        assert name in text


@pytest.mark.slow
def test_readme_examples_run_twice_without_gluing(tmp_path, monkeypatch, capsys):
    """Run twice in a row, as a user reruns a script: the second run prints what the first did
    (on 146d920 it printed 25: the new run was appended to the old store)."""
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        namespace: dict = {"__name__": "readme"}
        for block in _blocks():
            exec(compile(block, str(README), "exec"), namespace)
        out = capsys.readouterr().out.splitlines()
        assert out[0] == "13 [ 0  5 10 15]"
        assert out[2] == "(13, 27, 4)"
        assert (tmp_path / "runs" / "readme-report" / "report.html").is_file()
        assert out[-1].endswith("report.html")
