"""Training the encoder: targets, losses, Riemannian refinement, ``fit_encoder``, metrics.

* :mod:`.targets` -- links and deterministic non-links of a snapshot;
* :mod:`.losses` -- link BCE, magnitude MSE, sign BCE, temporal smoothness (separate terms);
* :mod:`.refine` -- node coordinates as ``geoopt.ManifoldParameter`` + ``RiemannianAdam``;
* :mod:`.fit` -- :func:`~hyperlapse.train.fit.fit_encoder`;
* :mod:`.embed` -- refined embeddings of a run (encoder output + Riemannian refinement);
* :mod:`.forecast` -- forecasting targets, candidates, baselines and the change-aware decoder's
  training: one definition for the benchmark and the online reports;
* :mod:`.metrics` -- ROC AUC, average precision, Spearman (no scikit-learn needed);
* :mod:`.synthetic` -- small in-memory MLP runs for tests, examples and benchmarks.
"""
