"""The versioned schema of a structure report (one JSON object per snapshot).

A report is a plain ``dict`` (JSON-ready: no tensors, no NaN - missing values are ``None``).
The fields are documented one by one in ``docs/reports.md``; :func:`check_report` validates the
top level and the types that readers rely on. Bump :data:`REPORT_SCHEMA_VERSION` when a field
changes meaning or disappears (adding a field is not a change).
"""

from __future__ import annotations

import math
from typing import Any

from ..errors import ConfigError

__all__ = [
    "REPORT_SCHEMA",
    "REPORT_SCHEMA_VERSION",
    "REPORT_FIELDS",
    "SCORE_FIELDS",
    "Report",
    "check_report",
    "jsonable",
]

#: Name written in every report's ``"schema"`` field.
REPORT_SCHEMA = "hyperlapse.report"
#: Version of the report schema (``"version"`` field).
REPORT_SCHEMA_VERSION = 2

#: A report: one snapshot's JSON object.
Report = dict[str, Any]

#: Top-level fields and their JSON types (``None`` allowed where the tuple includes it).
REPORT_FIELDS: dict[str, tuple[type, ...]] = {
    "schema": (str,),
    "version": (int,),
    "index": (int,),
    "step": (int,),
    "metrics": (dict,),
    "layers": (list,),
    "weights": (list,),
    "scores": (dict,),
    "hubs": (dict,),
    "geometry": (dict, type(None)),
    "neurons": (dict, type(None)),
    "encoder": (dict,),
    "timing": (dict,),
}

#: Keys of ``report["scores"]`` holding the model's forecast of snapshot ``t`` from ``t - 1``
#: (each a float in [0, 1], or None when not defined yet). Version 2: links, new links and sign
#: flips are scored over every candidate edge (:mod:`hyperlapse.train.forecast`), with the
#: baselines beside them under ``scores["baselines"]``; version 1 sampled the non-links.
SCORE_FIELDS = (
    "link_auc",
    "link_ap",
    "new_link_auc",
    "new_link_ap",
    "sign_flip_auc",
    "sign_flip_ap",
    "sign_acc",
)


def jsonable(value: Any) -> Any:
    """Turn floats/ints/tensors/arrays nested in dicts and lists into JSON values (NaN -> None).

    Example:
        >>> jsonable({"a": float("nan"), "b": [1, 2.5], "c": (True, None)})
        {'a': None, 'b': [1, 2.5], 'c': [True, None]}
    """
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()
        if isinstance(value, bool):
            return value
        if isinstance(value, int):
            return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    raise ConfigError(
        f"Expected a JSON-ready value in a report (number, str, bool, None, list, dict), but got "
        f"{type(value).__name__}. Convert tensors with .tolist() or float()."
    )


def check_report(report: Report, *, explain: bool = False):
    """Validate a report's top level. Raises ConfigError, or returns ``(ok, reason)``.

    Example:
        >>> check_report({"schema": "hyperlapse.report"}, explain=True)[0]
        False
    """
    reason = ""
    if report.get("schema") != REPORT_SCHEMA:
        reason = f"'schema' is {report.get('schema')!r}, expected {REPORT_SCHEMA!r}"
    elif report.get("version") != REPORT_SCHEMA_VERSION:
        reason = (
            f"'version' is {report.get('version')!r}, this hyperlapse reads version "
            f"{REPORT_SCHEMA_VERSION}"
        )
    else:
        for name, types in REPORT_FIELDS.items():
            if name not in report:
                reason = f"field {name!r} is missing"
                break
            if not isinstance(report[name], types):
                reason = (
                    f"field {name!r} is {type(report[name]).__name__}, expected "
                    f"{' or '.join(t.__name__ for t in types)}"
                )
                break
    ok = not reason
    if explain:
        return ok, reason
    if not ok:
        raise ConfigError(
            f"Expected a hyperlapse report (schema v{REPORT_SCHEMA_VERSION}), but {reason}. "
            f"Regenerate it with `hyperlapse analyze`."
        )
    return True
