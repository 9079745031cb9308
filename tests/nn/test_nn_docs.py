"""The python examples of docs/encoder.md run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from nn_helpers import one_thread  # noqa: F401 (autouse fixture)

DOC = Path(__file__).resolve().parents[2] / "docs" / "encoder.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_doc_example_runs(code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(
        compile(code.replace("/tmp/encoder.pt", str(tmp_path / "encoder.pt")), str(DOC), "exec"), {}
    )
