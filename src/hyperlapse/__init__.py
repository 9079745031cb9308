"""hyperlapse: a time-lapse of an MLP's training, embedded in hyperbolic space.

Public names are imported lazily so that ``import hyperlapse`` (and the recorder on the
training side) never pays for the encoder, geoopt or plotting imports.
"""

from __future__ import annotations

import importlib
from typing import Any

from .arch import check_mlp, describe_mlp
from .errors import HyperlapseError

__version__ = "0.1.0"

_LAZY = {
    "TrajectoryRecorder": "hyperlapse.record.recorder",
    "RecorderConfig": "hyperlapse.record.config",
    "open_trajectory": "hyperlapse.store.reader",
    "open_trajectories": "hyperlapse.store.reader",
    "Trajectory": "hyperlapse.store.reader",
    "ParameterGraph": "hyperlapse.graph.parameter_graph",
    "TemporalParameterGraph": "hyperlapse.graph.temporal",
    "TemporalEncoder": "hyperlapse.nn.encoder",
    "Embeddings": "hyperlapse.nn.encoder",
    "fit_encoder": "hyperlapse.train.fit",
    "OnlineEncoder": "hyperlapse.online.analyzer",
    "LiveReport": "hyperlapse.online.live",
    "fit_predictor": "hyperlapse.predict.predictor",
    "Predictor": "hyperlapse.predict.predictor",
    "build_zoo": "hyperlapse.zoo.builders",
    "open_zoo": "hyperlapse.zoo.reader",
}

__all__ = ["HyperlapseError", "check_mlp", "describe_mlp", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hyperlapse' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
