"""Learn from a collection of recorded runs: features of trajectories and predictors."""

from __future__ import annotations

from .encoder import EncoderFeatures
from .features import FEATURES, FeatureExtractor, register_features
from .predictor import Predictor, cross_validate, fit_predictor
from .sweep_forecast import SweepForecast, SweepForecaster, TooFewFinishedRunsError, forecast_sweep

__all__ = ["FEATURES", "EncoderFeatures", "FeatureExtractor", "Predictor", "cross_validate",
           "SweepForecast", "SweepForecaster", "TooFewFinishedRunsError", "fit_predictor",
           "forecast_sweep", "register_features"]
