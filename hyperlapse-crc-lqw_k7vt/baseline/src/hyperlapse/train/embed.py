"""Refined embeddings of a run: the encoder's output, then Riemannian Adam per snapshot.

Refinement is a training stage (it optimises coordinates against a snapshot's targets), so it
lives here and builds on :meth:`hyperlapse.nn.encoder.TemporalEncoder.embed`: the layer package
never imports the training package.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ..nn.encoder import Embeddings, TemporalEncoder, as_graph_sequence
from ..progress import progress_bar
from .refine import refine_snapshot
from .targets import snapshot_targets

__all__ = ["embed_refined"]


def embed_refined(
    encoder: TemporalEncoder,
    data: Any,
    *,
    refine_steps: int = 20,
    refine_lr: float = 0.1,
    return_attention: bool = False,
    progress: bool = False,
) -> Embeddings:
    """Embed every snapshot of a run and refine the coordinates.

    The encoder runs without gradients; then (``refine_steps > 0``) each ``z_t`` is refined as a
    ``geoopt.ManifoldParameter`` by Riemannian Adam on snapshot ``t``'s links, signs and
    magnitudes, anchored to the refined ``z_{t-1}``
    (:func:`hyperlapse.train.refine.refine_snapshot`). Everything is deterministic.

    Args:
        encoder: a TemporalEncoder (not modified).
        data: a Trajectory, a TemporalParameterGraph or a list of ParameterGraphs.
        refine_steps: Riemannian Adam steps per snapshot (0: the encoder's output as is).
        refine_lr: their learning rate.
        return_attention: keep per-layer attention weights of every snapshot.
        progress: show a progress bar on stderr when it is a terminal
            (:mod:`hyperlapse.progress`).

    Returns:
        :class:`~hyperlapse.nn.encoder.Embeddings`: ``z`` refined, ``z_encoder`` the encoder's
        output and ``losses`` the refinement terms (both None when ``refine_steps == 0``).

    Example:
        >>> from torch import nn
        >>> from hyperlapse import ParameterGraph
        >>> _ = torch.manual_seed(0)
        >>> net = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))
        >>> g = ParameterGraph.from_module(net)
        >>> enc = TemporalEncoder(in_features=g.x.shape[1], num_identities=g.num_identities, d=4)
        >>> emb = embed_refined(enc, [g, g], refine_steps=2)
        >>> tuple(emb.z.shape), tuple(emb.z_encoder.shape), len(emb.losses)
        ((2, 10, 4), (2, 10, 4), 2)
    """
    raw = encoder.embed(data, return_attention=return_attention, progress=progress)
    if refine_steps <= 0:
        return raw
    graphs, _ = as_graph_sequence(data)
    zs, losses = [], []
    prev = None
    for t in progress_bar(range(len(graphs)), progress, "refine"):
        snap = encoder.prepare(graphs[t])
        targets = snapshot_targets(snap, q=encoder.config.link_q)
        z, terms = refine_snapshot(
            encoder, raw.z[t], targets, anchor=prev, steps=refine_steps, lr=refine_lr
        )
        zs.append(z.detach())
        losses.append(terms)
        prev = zs[-1]
    return dataclasses.replace(raw, z=torch.stack(zs), z_encoder=raw.z, losses=losses)
