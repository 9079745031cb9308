"""A sequence of parameter graphs over one node set, read lazily from a trajectory."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from ..errors import ArchitectureError, ConfigError
from .links import top_fraction
from .parameter_graph import ParameterGraph, mlp_topology
from .state import check_architecture, check_state

__all__ = ["TemporalParameterGraph", "TrajectoryLike"]


class TrajectoryLike(Protocol):
    """What :meth:`TemporalParameterGraph.from_trajectory` needs (e.g. a ``Trajectory``)."""

    architecture: dict[str, Any] | None
    steps: np.ndarray

    def __len__(self) -> int: ...

    def __getitem__(self, t: int) -> dict[str, Tensor]: ...


class _States:
    """A list of state dicts posing as a trajectory."""

    def __init__(self, states: Sequence[dict[str, Tensor]], architecture: Any, steps: Any):
        self.states = list(states)
        self.architecture = architecture
        steps = np.arange(len(self.states)) if steps is None else np.asarray(steps)
        if steps.shape != (len(self.states),):
            raise ConfigError(
                f"Expected one step per state ({len(self.states)}), got steps of shape "
                f"{steps.shape}."
            )
        self.steps = steps.astype(np.int64)

    def __len__(self) -> int:
        return len(self.states)

    def __getitem__(self, t: int) -> dict[str, Tensor]:
        return self.states[t]


class TemporalParameterGraph:
    """Snapshots ``t = 0..T-1`` of one MLP as parameter graphs over a fixed node set.

    Nothing is read from the source until a snapshot is asked for; the last ``cache`` snapshots
    read are kept. With ``stop=None`` on a trajectory the length follows ``len(traj)``, so a
    trajectory that is refreshed while a run is written shows its new snapshots.

    Snapshot ``t`` of this object is ``traj[start + t * stride]``.

    Example:
        >>> from torch import nn
        >>> from hyperlapse import describe_mlp
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
        >>> states = []
        >>> for _ in range(3):
        ...     states.append({k: v.clone() for k, v in net.state_dict().items()})
        ...     with torch.no_grad():
        ...         _ = net[0].weight.mul_(-1.5)
        >>> tg = TemporalParameterGraph.from_states(states, describe_mlp(net), steps=[0, 10, 20])
        >>> len(tg), tg.steps.tolist(), tg.num_nodes, tuple(tg.edge_index.shape)
        (3, [0, 10, 20], 9, (2, 20))
        >>> bool(tg.new_links(0).any()), tg[1].edge_weight.shape
        (False, torch.Size([20]))
    """

    def __init__(
        self,
        source: TrajectoryLike,
        architecture: dict[str, Any],
        *,
        start: int = 0,
        stop: int | None = None,
        stride: int = 1,
        cache: int = 2,
    ) -> None:
        self.widths, _ = check_architecture(architecture)
        if stride < 1 or start < 0 or (stop is not None and stop < start):
            raise ConfigError(
                f"Expected 0 <= start <= stop and stride >= 1, got start={start}, stop={stop}, "
                f"stride={stride}."
            )
        if cache < 0:
            raise ConfigError(f"Expected cache >= 0 snapshots, got {cache}.")
        self.source = source
        self.architecture = architecture
        self.start, self.stop, self.stride = int(start), stop, int(stride)
        self._cache_size = cache
        self._cache: OrderedDict[int, ParameterGraph] = OrderedDict()
        self._topology = mlp_topology(self.widths)
        self._topologies = {self._topology["edge_index"].device: self._topology}

    # ----------------------------------------------------------------------------- building
    @classmethod
    def from_trajectory(
        cls, traj: TrajectoryLike, start: int = 0, stop: int | None = None, stride: int = 1
    ) -> TemporalParameterGraph:
        """Snapshots ``traj[start:stop:stride]``, read lazily.

        Raises:
            ArchitectureError: the trajectory has no MLP architecture (``architecture`` None).
        """
        architecture = getattr(traj, "architecture", None)
        if architecture is None:
            raise ArchitectureError(
                "The trajectory has no architecture (architecture is None): it was recorded "
                "from a model that hyperlapse.describe_mlp does not recognise as an MLP, so its "
                "snapshots cannot be turned into parameter graphs. Only feed-forward MLPs of "
                "nn.Linear layers are supported."
            )
        return cls(traj, architecture, start=start, stop=stop, stride=stride)

    @classmethod
    def from_states(
        cls,
        states: Sequence[dict[str, Tensor]],
        architecture: dict[str, Any],
        steps: Sequence[int] | np.ndarray | None = None,
    ) -> TemporalParameterGraph:
        """Snapshots from in-memory state dicts (steps default to ``0..T-1``)."""
        return cls(_States(states, architecture, steps), architecture)

    # ----------------------------------------------------------------------------- sizes
    def _range(self) -> range:
        n = len(self.source)
        stop = n if self.stop is None else min(self.stop, n)
        return range(self.start, max(stop, self.start), self.stride)

    def __len__(self) -> int:
        return len(self._range())

    def _source_index(self, t: int) -> int:
        r = self._range()
        try:
            return r[t]
        except IndexError:
            raise IndexError(
                f"Snapshot {t} is out of range for a temporal graph of {len(r)} snapshots."
            ) from None

    @property
    def steps(self) -> np.ndarray:
        """``[T]`` int64 optimizer step of each snapshot."""
        r = self._range()
        return np.asarray(self.source.steps)[r.start : r.stop : r.step].astype(np.int64)

    @property
    def num_nodes(self) -> int:
        """N, the same for every snapshot."""
        return sum(self.widths)

    @property
    def num_edges(self) -> int:
        """E, the same for every snapshot."""
        return int(self._topology["edge_index"].shape[1])

    @property
    def edge_index(self) -> Tensor:
        """``[2, E]`` int64, fixed over time (layout of :class:`ParameterGraph`)."""
        return self._topology["edge_index"]

    @property
    def edge_layer(self) -> Tensor:
        """``[E]`` int64 weight-layer of each edge."""
        return self._topology["edge_layer"]

    # ----------------------------------------------------------------------------- snapshots
    def __getitem__(self, t: int | slice) -> ParameterGraph | TemporalParameterGraph:
        """The parameter graph of snapshot ``t`` (negative ``t`` counts from the end).

        A slice gives a lazy :class:`TemporalParameterGraph` over those snapshots (its length is
        fixed at slicing time).
        """
        if isinstance(t, slice):
            r = self._range()[t]
            if r.step < 0:
                raise ConfigError(f"Expected a forward slice, got step {r.step}.")
            return TemporalParameterGraph(
                self.source,
                self.architecture,
                start=r.start,
                stop=max(r.stop, r.start),
                stride=r.step,
                cache=self._cache_size,
            )
        index = self._source_index(t)
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        state = self.source[index]
        check_state(state, self.architecture)
        device = torch.as_tensor(state[self.architecture["layers"][0]["weight"]]).device
        if device not in self._topologies:
            self._topologies[device] = mlp_topology(self.widths, device)
        topology = self._topologies[device]
        graph = ParameterGraph.from_state_dict(state, self.architecture, topology=topology)
        if self._cache_size:
            self._cache[index] = graph
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return graph

    def __iter__(self) -> Iterator[ParameterGraph]:
        for t in range(len(self)):
            yield self[t]

    def edge_weights(self, t: int) -> Tensor:
        """``[E]`` float32 edge weights of snapshot ``t``."""
        return self[t].edge_weight

    def links(self, t: int, q: float = 0.2) -> Tensor:
        """``[E]`` bool links of snapshot ``t`` (see :meth:`ParameterGraph.links`)."""
        weight = self.edge_weights(t)
        return top_fraction(weight, self.edge_layer.to(weight.device), len(self.widths) - 1, q)

    def new_links(self, t: int, q: float = 0.2) -> Tensor:
        """``[E]`` bool: links at ``t`` that were not links at ``t - 1`` (all False at t = 0)."""
        t = self._normalise(t)
        now = self.links(t, q)
        if t == 0:
            return torch.zeros_like(now)
        return now & ~self.links(t - 1, q).to(now.device)

    def _normalise(self, t: int) -> int:
        n = len(self)
        if not -n <= t < n:
            raise IndexError(f"Snapshot {t} is out of range for a temporal graph of {n} snapshots.")
        return t % n

    def __repr__(self) -> str:
        return (
            f"TemporalParameterGraph(widths={self.widths}, snapshots={len(self)}, "
            f"start={self.start}, stop={self.stop}, stride={self.stride})"
        )
