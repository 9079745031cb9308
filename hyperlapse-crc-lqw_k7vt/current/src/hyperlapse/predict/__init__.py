"""Learn from a collection of recorded runs: features of trajectories and predictors."""

from __future__ import annotations

from .encoder import EncoderFeatures
from .features import FEATURES, FeatureExtractor, register_features
from .predictor import Predictor, cross_validate, fit_predictor

__all__ = ["FEATURES", "EncoderFeatures", "FeatureExtractor", "Predictor", "cross_validate",
           "fit_predictor", "register_features"]
