"""Thin adapters that plug the :class:`hyperlapse.TrajectoryRecorder` into trainers.

Installed as ``hyperlapse.integrations`` (the code lives in the repository's ``integrations/``
folder; ``pyproject.toml`` maps it). Each adapter only translates a trainer's events into
recorder calls; every decision (schedule, storage, ranks) stays in :mod:`hyperlapse`.

* :mod:`hyperlapse.integrations.lightning`: ``HyperlapseCallback`` for PyTorch Lightning
  (``pip install -e '.[lightning]'`` in a clone).
* :mod:`hyperlapse.integrations.transformers`: ``HyperlapseCallback`` for Hugging Face
  ``transformers.Trainer`` (``pip install -e '.[transformers]'`` in a clone).

Plain PyTorch loops need no adapter: ``recorder.attach(optimizer)`` or ``recorder.capture()``
(see ``integrations/README.md``).
"""
