"""Notice when the recorded model's parameter set drifts from what the store was made for.

A store's parameter names and shapes are fixed when the recorder is created. After that a user
may replace a parameter with a new ``nn.Parameter``, add or remove a layer, or change a shape
through ``.data``. :class:`ModelWatch` checks, before each capture and without touching tensor
data (no device sync), that

* every captured tensor still has the shape it had (``.data`` assignments), and
* every module's ``_parameters`` / ``_modules`` (/ ``_buffers``) dict still holds the same
  objects (identity, compared in C with ``operator.is_``).

Only when that cheap check fails is the module walked again to say what changed.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from itertools import chain

import torch
from torch import nn

from ..errors import ConfigError

__all__ = ["ModelWatch", "recorded_tensors"]

_shape = operator.attrgetter("shape")


def recorded_tensors(module: nn.Module, buffers: bool) -> list[tuple[str, torch.Tensor]]:
    """The (name, tensor) pairs a recorder captures: parameters, then buffers if asked.

    Tied parameters appear once, under their first name (``named_parameters`` order).
    """
    named = list(module.named_parameters())
    if buffers:
        named += [(n, b) for n, b in module.named_buffers() if b is not None]
    return named


class ModelWatch:
    """Cheap per-capture check that ``tensors`` are still the module's recorded tensors.

    Args:
        module: the (unwrapped) recorded module.
        names, tensors: what the recorder captures, in order.
        buffers: whether buffers are recorded too.
    """

    def __init__(
        self,
        module: nn.Module,
        names: Sequence[str],
        tensors: list[torch.Tensor],
        buffers: bool,
    ) -> None:
        self.module = module
        self.names = list(names)
        self.tensors = tensors  # the recorder's own list: rebinding updates what it copies
        self.buffers = buffers
        self.shapes = [t.shape for t in tensors]
        self._remember()

    def _remember(self) -> None:
        dicts = []
        for m in self.module.modules():
            dicts += [m._parameters, m._modules] + ([m._buffers] if self.buffers else [])
        self._dicts = dicts
        self._lens = list(map(len, dicts))
        self._values = [v for d in dicts for v in d.values()]

    def changed(self) -> bool:
        """Whether anything may have changed (cheap: shapes and object identities only, each
        compared in one C-level pass: this runs on the training thread at every capture)."""
        return (
            list(map(_shape, self.tensors)) != self.shapes
            or list(map(len, self._dicts)) != self._lens
            or not all(map(operator.is_, chain.from_iterable(map(dict.values, self._dicts)),
                           self._values))
        )

    def check(self) -> list[str]:
        """Raise if the parameter set or a shape changed; follow replaced tensors.

        Returns:
            Names of tensors that were replaced by new objects of the same shape (the recorder
            now captures the new ones); empty when nothing changed.

        Raises:
            ConfigError: a parameter (or recorded buffer) was added or removed, or changed
                shape. Saying what changed and what to do.
        """
        if not self.changed():
            return []
        now = recorded_tensors(self.module, self.buffers)
        names = [n for n, _ in now]
        if names != self.names:
            added = [n for n in names if n not in self.names]
            removed = [n for n in self.names if n not in names]
            what = "; ".join(
                part
                for part in (
                    f"added {added}" if added else "",
                    f"removed {removed}" if removed else "",
                    "reordered" if not added and not removed else "",
                )
                if part
            )
            raise ConfigError(
                f"Expected the recorded model to keep the parameters the store was created for "
                f"({len(self.names)} tensors), but they changed after the recorder was created: "
                f"{what}. A store holds one fixed parameter set: close() this recorder and "
                f"record the changed model to a new path."
            )
        shapes = [
            (n, tuple(old), tuple(t.shape))
            for n, t, old in zip(names, (t for _, t in now), self.shapes, strict=True)
            if t.shape != old
        ]
        if shapes:
            desc = ", ".join(f"'{n}' {a} -> {b}" for n, a, b in shapes)
            raise ConfigError(
                f"Expected the recorded parameters to keep their shapes, but {desc} changed "
                f"after the recorder was created (e.g. through .data). A store holds fixed "
                f"shapes: close() this recorder and record the changed model to a new path."
            )
        replaced = [n for (n, t), old in zip(now, self.tensors, strict=True) if t is not old]
        self.tensors[:] = [t for _, t in now]
        self._remember()
        return replaced
