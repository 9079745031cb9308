"""Shared fixtures of the nn tests, imported by name (a second conftest.py would clash under
--doctest-modules with other test folders)."""

from __future__ import annotations

import functools

import pytest
import torch

from hyperlapse.nn.encoder import TemporalEncoder
from hyperlapse.train.synthetic import toy_run


@functools.lru_cache(maxsize=1)
def tiny_run():
    """A 6-snapshot run of a 4-8-8-3 MLP (cached)."""
    return toy_run(snapshots=6, seed=0)


def make_encoder(run, *, dtype=torch.float64, seed=0, **overrides):
    g = run[0]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        settings = {"in_features": g.x.shape[1], "num_identities": g.num_identities, "d": 4}
        enc = TemporalEncoder(**{**settings, **overrides})
    return enc.to(dtype)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny graphs: one thread avoids thread contention on a shared machine (restored after)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
