"""Every ```python block of the integration docs runs, top to bottom, in a temporary directory.

Blocks of one file share a namespace (like a notebook). Display-only snippets use ```py or
```bash fences and are not run.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FENCE = re.compile(r"^```python\n(.*?)^```", re.M | re.S)

DOCS = {
    "integrations/README.md": (),
    "docs/integrations.md": ("lightning", "transformers", "accelerate", "dask.array", "fsspec"),
}


def python_blocks(path: Path) -> list[str]:
    return FENCE.findall(path.read_text())


# Lightning's advice for real runs (workers, log interval) and its use of a deprecated torch
# pytree name are noise here.
@pytest.mark.filterwarnings("ignore:.*smaller than the logging interval.*")
@pytest.mark.filterwarnings("ignore:.*does not have many workers.*")
@pytest.mark.filterwarnings("ignore:.*LeafSpec.* is deprecated:FutureWarning")
@pytest.mark.parametrize(
    "doc",
    ["integrations/README.md", pytest.param("docs/integrations.md", marks=pytest.mark.slow)],
)
def test_examples_run(doc, tmp_path, monkeypatch, capsys):
    for module in DOCS[doc]:
        pytest.importorskip(module)
    blocks = python_blocks(ROOT / doc)
    assert blocks, f"no python examples found in {doc}"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__example__"}
    for i, code in enumerate(blocks):
        try:
            exec(compile(code, f"{doc}[block {i}]", "exec"), namespace)
        except Exception as exc:
            raise AssertionError(f"{doc}, python block {i} failed: {exc!r}\n{code}") from exc
