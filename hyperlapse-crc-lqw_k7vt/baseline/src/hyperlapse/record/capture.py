"""The training-thread side of a capture: one copy of all tensors into a preallocated buffer.

:class:`CaptureLayout` maps every recorded tensor to a slice of one flat buffer per stored dtype
(floating tensors are cast to the recording dtype during the copy; integer and bool buffers keep
their own). A capture is one ``torch._foreach_copy_`` per flat buffer. On CUDA the buffers live in
pinned host memory, the copy is ``non_blocking`` and a CUDA event is recorded per device; the
writer thread waits on the events, so the training thread never synchronises.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import ConfigError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class CaptureBuffer:
    """One preallocated snapshot: a flat tensor per stored dtype and the views into them."""

    flats: list[torch.Tensor]
    views: list[list[torch.Tensor]]
    events: list[object] = field(default_factory=list)
    #: name -> numpy view of ``views`` (made once: the writer asks for it at every snapshot)
    arrays: dict[str, np.ndarray] | None = None

    def wait(self) -> None:
        """Block until the (possibly asynchronous) copy into this buffer has finished."""
        for event in self.events:
            event.synchronize()  # type: ignore[attr-defined]
        self.events = []


class CaptureLayout:
    """Where each tensor goes in a :class:`CaptureBuffer`.

    Args:
        names: qualified names, in capture order.
        tensors: the live tensors (parameters/buffers); only their dtype, shape and device are
            read here.
        dtype: recording dtype for floating tensors ("float32", "float16", "bfloat16").
    """

    def __init__(self, names: Sequence[str], tensors: Sequence[torch.Tensor], dtype: str) -> None:
        if dtype not in DTYPES:
            raise ConfigError(
                f"Expected dtype to be one of {sorted(DTYPES)}, but got {dtype!r}. float32 "
                f"keeps weights bit-exact; float16/bfloat16 halve the store."
            )
        self.names = list(names)
        self.dtype = dtype
        groups: dict[torch.dtype, list[int]] = {}
        self.target: list[torch.dtype] = []
        for i, t in enumerate(tensors):
            if t.is_complex():
                raise ConfigError(
                    f"Expected real tensors, but '{names[i]}' is {t.dtype}. Record a model "
                    f"without complex parameters."
                )
            target = DTYPES[dtype] if t.is_floating_point() else t.dtype
            self.target.append(target)
            groups.setdefault(target, []).append(i)
        self.groups = list(groups.items())  # [(dtype, [tensor indices])]
        self.shapes = [tuple(t.shape) for t in tensors]
        self.devices = sorted({t.device for t in tensors}, key=str)
        self.pinned = any(d.type == "cuda" for d in self.devices) and torch.cuda.is_available()
        self.logical_dtypes = [_logical(d) for d in self.target]
        self._nbytes: int | None = None

    @property
    def nbytes(self) -> int:
        """Bytes of one snapshot (computed once: the writer thread asks at every snapshot)."""
        if self._nbytes is None:
            self._nbytes = sum(
                int(np.prod(s, dtype=np.int64)) * torch.empty((), dtype=d).element_size()
                for s, d in zip(self.shapes, self.target, strict=True)
            )
        return self._nbytes

    def new_buffer(self) -> CaptureBuffer:
        flats, views = [], []
        for dtype, idx in self.groups:
            numel = sum(int(np.prod(self.shapes[i], dtype=np.int64)) for i in idx)
            flat = torch.empty(numel, dtype=dtype, pin_memory=self.pinned)
            out, offset = [], 0
            for i in idx:
                n = int(np.prod(self.shapes[i], dtype=np.int64))
                out.append(flat[offset : offset + n].view(self.shapes[i]))
                offset += n
            flats.append(flat)
            views.append(out)
        return CaptureBuffer(flats, views)

    def copy_into(self, buf: CaptureBuffer, tensors: Sequence[torch.Tensor]) -> None:
        """Copy ``tensors`` into ``buf`` (the only work done on the training thread).

        On CUDA the copy is asynchronous; an event per device marks its end (see
        :meth:`CaptureBuffer.wait`). No ``.item()``, no device synchronisation.
        """
        # Grad mode off as a plain call (no context-manager object) and no per-tensor
        # ``detach()``: every torch call here releases and retakes the GIL, and retaking it
        # while the writer thread runs Python can cost far more than the copy itself.
        grad = torch.is_grad_enabled()
        torch.set_grad_enabled(False)
        try:
            for (_, idx), dst in zip(self.groups, buf.views, strict=True):
                src = [tensors[i] for i in idx] if len(idx) != len(tensors) else tensors
                if self.pinned:  # device -> pinned host, asynchronous: per tensor, any device
                    for d, t in zip(dst, src, strict=True):
                        d.copy_(t, non_blocking=True)
                else:  # host tensors (or devices without pinned memory): one fused copy
                    torch._foreach_copy_(dst, src)
        finally:
            torch.set_grad_enabled(grad)
        if self.pinned:
            events = []
            for device in self.devices:
                if device.type == "cuda":
                    event = torch.cuda.Event()
                    event.record(torch.cuda.current_stream(device))
                    events.append(event)
            buf.events = events

    def to_numpy(self, buf: CaptureBuffer) -> dict[str, np.ndarray]:
        """Name -> numpy view of ``buf`` in the stored dtype (bfloat16 as uint16 bits)."""
        if buf.arrays is None:
            out: dict[str, np.ndarray] = {}
            for (_, idx), views in zip(self.groups, buf.views, strict=True):
                for i, v in zip(idx, views, strict=True):
                    out[self.names[i]] = _numpy_view(v)
            buf.arrays = out
        return buf.arrays

    def to_tensors(self, buf: CaptureBuffer) -> dict[str, torch.Tensor]:
        """Name -> an independent tensor copy of ``buf`` (for listeners that keep them)."""
        out: dict[str, torch.Tensor] = {}
        for (_, idx), flat, views in zip(self.groups, buf.flats, buf.views, strict=True):
            copy = flat.clone()
            offset = 0
            for i, v in zip(idx, views, strict=True):
                out[self.names[i]] = copy[offset : offset + v.numel()].view(v.shape)
                offset += v.numel()
        return out


def _numpy_view(t: torch.Tensor) -> np.ndarray:
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy()


def _logical(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")
