"""An optional tqdm progress bar (silent when disabled or when tqdm is not installed)."""

from __future__ import annotations

from typing import Any

__all__ = ["progress_bar"]


def progress_bar(iterable: Any, enabled: bool, desc: str) -> Any:
    """``tqdm(iterable, desc=desc)`` when ``enabled`` and tqdm is installed, else ``iterable``.

    Example:
        >>> list(progress_bar(range(3), False, "x"))
        [0, 1, 2]
    """
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is optional
        return iterable
    return tqdm(iterable, desc=desc)
