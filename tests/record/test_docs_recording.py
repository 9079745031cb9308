"""The examples in docs/recording.md run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

DOC = Path(__file__).parents[2] / "docs" / "recording.md"


@pytest.mark.slow
def test_first_example_runs(tmp_path, monkeypatch, capsys) -> None:
    if not DOC.exists():
        pytest.skip("docs/recording.md is not in this checkout")
    code = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)[0]
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # leave a core to the writer (see the doc's overhead section)
    try:
        exec(compile(code, str(DOC), "exec"), {"__name__": "__docs__"})
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert re.match(r"21 \[ 0 10 20 30\] \[ +nan [0-9.]+ ", out), out
    assert (tmp_path / "runs" / "mlp.zarr" / "zarr.json").is_file()
