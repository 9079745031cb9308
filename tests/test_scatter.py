from __future__ import annotations

import pytest
import torch

from hyperlapse.scatter import WITH_TORCH_SCATTER, scatter, scatter_softmax


@pytest.mark.parametrize("reduce", ["sum", "mean", "amax", "amin"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_scatter_matches_python_loop(reduce, dtype):
    g = torch.Generator().manual_seed(0)
    src = torch.randn(50, 3, generator=g, dtype=dtype)
    index = torch.randint(0, 7, (50,), generator=g)
    index[index == 4] = 5  # bucket 4 stays empty
    out = scatter(src, index, 8, reduce)
    for b in range(8):
        rows = src[index == b]
        if len(rows) == 0:
            expected = torch.zeros(3, dtype=dtype)
        else:
            expected = {"sum": rows.sum(0), "mean": rows.mean(0),
                        "amax": rows.amax(0), "amin": rows.amin(0)}[reduce]
        torch.testing.assert_close(out[b], expected)


def test_scatter_softmax_groups_sum_to_one_and_are_shift_invariant():
    g = torch.Generator().manual_seed(1)
    src = torch.randn(40, 2, generator=g, dtype=torch.float64) * 30
    index = torch.randint(0, 6, (40,), generator=g)
    a = scatter_softmax(src, index, 6)
    sums = scatter(a, index, 6, "sum")
    present = torch.bincount(index, minlength=6) > 0
    torch.testing.assert_close(sums[present], torch.ones_like(sums[present]))
    shifted = scatter_softmax(src + 100.0 * index.unsqueeze(1), index, 6)
    torch.testing.assert_close(a, shifted)


def test_bad_index_is_explained():
    with pytest.raises(ValueError, match="larger than 2"):
        scatter(torch.ones(3), torch.tensor([0, 1, 5]), 3)


@pytest.mark.skipif(not WITH_TORCH_SCATTER, reason="torch-scatter not installed")
@pytest.mark.parametrize("reduce", ["sum", "mean", "amax", "amin"])
def test_backends_agree(reduce):
    src = torch.randn(100, 4)
    index = torch.randint(0, 9, (100,))
    torch.testing.assert_close(
        scatter(src, index, 10, reduce, backend="torch"),
        scatter(src, index, 10, reduce, backend="torch_scatter"),
    )
