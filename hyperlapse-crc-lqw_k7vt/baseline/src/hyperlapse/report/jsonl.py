"""Append reports to a JSON-lines file (one flushed line per snapshot) and read them back."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ConfigError
from .schema import Report, check_report, jsonable

__all__ = ["ReportWriter", "read_reports"]


class ReportWriter:
    """Append-only writer of ``reports.jsonl``; each line is flushed as soon as it is written.

    A reader (``tail -f``, a browser refresh, another process) sees every completed snapshot.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "r.jsonl"
        >>> with ReportWriter(path) as w:
        ...     w.write({"a": 1.0})
        >>> path.read_text()
        '{"a": 1.0}\\n'
    """

    def __init__(self, path: str | Path, *, append: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a" if append else "w", encoding="utf-8")  # noqa: SIM115

    def write(self, report: Report) -> None:
        """Write one report as one line and flush it."""
        line = json.dumps(jsonable(report), allow_nan=False, separators=(", ", ": "))
        self._fh.write(line + "\n")
        self._fh.flush()

    def close(self) -> None:
        """Close the file (idempotent)."""
        if not self._fh.closed:
            self._fh.close()

    def __enter__(self) -> ReportWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_reports(path: str | Path, *, check: bool = True) -> list[Report]:
    """Read a ``reports.jsonl`` file; a torn last line (a writer killed mid-line) is skipped.

    Raises:
        ConfigError: a line other than the last is not JSON, or (``check=True``) a report does
            not follow the schema.
    """
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    out = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            report = json.loads(line)
        except json.JSONDecodeError as exc:
            if i == len(lines) - 1:
                break
            raise ConfigError(
                f"Expected one JSON object per line in {path}, but line {i + 1} is not JSON "
                f"({exc}). Regenerate the file with `hyperlapse analyze`."
            ) from None
        if check:
            check_report(report)
        out.append(report)
    return out
