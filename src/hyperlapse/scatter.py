"""Every scatter in hyperlapse goes through this one door.

torch's native ``scatter_reduce``/``index_add_`` are used by default; when the optional
``torch-scatter`` package is installed (``pip install -e '.[scatter]' in the hyperlapse clone``) and
``HYPERLAPSE_SCATTER`` is not ``"torch"``, its kernels are used instead. A test checks both agree.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

try:  # pragma: no cover - depends on the optional backend
    if os.environ.get("HYPERLAPSE_SCATTER", "auto") == "torch":
        raise ImportError
    import torch_scatter  # type: ignore[import-not-found]

    WITH_TORCH_SCATTER = True
except ImportError:  # pragma: no cover - depends on the optional backend
    torch_scatter = None
    WITH_TORCH_SCATTER = False

_REDUCES = ("sum", "mean", "amax", "amin")


def _check(src: Tensor, index: Tensor, dim_size: int) -> None:
    if index.dtype != torch.long or index.dim() != 1 or index.numel() != src.shape[0]:
        raise ValueError(
            f"Expected 'index' to be a 1-D int64 tensor with one entry per row of 'src' "
            f"({src.shape[0]}), got dtype {index.dtype} and shape {tuple(index.shape)}."
        )
    if index.numel() and int(index.max()) >= dim_size:
        raise ValueError(
            f"Found indices in 'index' that are larger than {dim_size - 1} "
            f"(got {int(index.max())}). Please ensure 'dim_size' covers every node."
        )


def scatter(
    src: Tensor, index: Tensor, dim_size: int, reduce: str = "sum", *, backend: str = "auto"
) -> Tensor:
    """Reduce rows of ``src`` into ``dim_size`` buckets given by ``index``.

    Empty buckets are 0 for every reduction.

    Shapes:
        src: ``[E, *]``, index: ``[E]`` (int64), returns ``[dim_size, *]``.

    Example:
        >>> scatter(torch.tensor([1.0, 2.0, 4.0]), torch.tensor([0, 0, 2]), 3, "sum")
        tensor([3., 0., 4.])
    """
    if reduce not in _REDUCES:
        raise ValueError(f"Expected reduce to be one of {_REDUCES}, got {reduce!r}.")
    _check(src, index, dim_size)
    if backend == "auto":
        backend = "torch_scatter" if WITH_TORCH_SCATTER else "torch"
    if backend == "torch_scatter":
        if torch_scatter is None:
            raise ImportError("backend='torch_scatter' needs: pip install torch-scatter")
        op = {"sum": "sum", "mean": "mean", "amax": "max", "amin": "min"}[reduce]
        return torch_scatter.scatter(src, index, dim=0, dim_size=dim_size, reduce=op)
    shape = (dim_size, *src.shape[1:])
    idx = index.view(-1, *([1] * (src.dim() - 1))).expand_as(src)
    out = src.new_zeros(shape)
    if reduce == "sum":
        return out.index_add_(0, index, src)
    return out.scatter_reduce_(0, idx, src, reduce=reduce, include_self=False)


def scatter_softmax(src: Tensor, index: Tensor, dim_size: int) -> Tensor:
    """Softmax of ``src`` over the rows that share an ``index`` (e.g. incoming edges of a node).

    Shapes:
        src: ``[E, *]``, index: ``[E]``, returns ``[E, *]``; each group sums to 1.
    """
    _check(src, index, dim_size)
    shift = scatter(src.detach(), index, dim_size, "amax")[index]
    ex = (src - shift).exp()
    return ex / scatter(ex, index, dim_size, "sum")[index].clamp_min(torch.finfo(src.dtype).tiny)
