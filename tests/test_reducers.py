"""Token reducers: the contract every reducer keeps (order, sizes, groups, output_len) and each one's maths.

``check_contract`` is the property every registered reducer must satisfy on any grid; the
per-reducer tests pin down what it computes.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from llava_wb.model.reducers import REDUCERS, build_reducer, window_partition
from llava_wb.registry import UnknownNameError

grids = st.tuples(st.integers(1, 4), st.integers(1, 9), st.integers(1, 9))


def check_contract(reducer, x: torch.Tensor, grid) -> None:
    out = reducer(x, grid)
    b, n, d = x.shape
    m = reducer.output_len(grid)
    assert out.tokens.shape == (b, m, d)
    assert out.positions.shape == out.sizes.shape == (b, m) and out.group_ids.shape == (b, n)
    assert bool((out.positions[:, 1:] > out.positions[:, :-1]).all()), "positions must strictly increase"
    assert bool((out.sizes.sum(1) == n).all()), "sizes must sum to N"
    # group ids partition the input: each output token's size is the number of patches sent to it
    counts = torch.zeros(b, m, dtype=torch.long).scatter_add_(1, out.group_ids, torch.ones_like(out.group_ids))
    assert torch.equal(counts, out.sizes)
    # each token's position is one of its own patches
    assert torch.equal(out.group_ids.gather(1, out.positions), torch.arange(m).expand(b, m))


@settings(max_examples=40, deadline=None)
@given(grid=grids, window=st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3)), b=st.integers(1, 3))
def test_avgpool_contract_and_means_on_any_grid(grid, window, b):
    n = grid[0] * grid[1] * grid[2]
    x = torch.randn(b, n, 5, dtype=torch.float64)
    reducer = build_reducer("avgpool", {"window": list(window)})
    check_contract(reducer, x, grid)
    out = reducer(x, grid)
    for j in range(out.tokens.shape[1]):  # every token is the plain mean of its group
        members = (out.group_ids[0] == j).nonzero().flatten()
        torch.testing.assert_close(out.tokens[:, j], x[:, members].mean(1))


@pytest.mark.parametrize("grid,window", [((1, 8, 8), (2, 2, 2)), ((4, 6, 6), (2, 2, 2)), ((1, 24, 24), (1, 2, 2))])
def test_avgpool_equals_torch_pooling_on_divisible_grids(grid, window):
    t, h, w = grid
    x = torch.randn(2, t * h * w, 7)
    out = build_reducer("avgpool", {"window": list(window)})(x, grid).tokens
    vol = x.transpose(1, 2).reshape(2, 7, t, h, w)
    ref = F.avg_pool3d(vol, kernel_size=tuple(min(a, g) for a, g in zip(window, grid)))
    torch.testing.assert_close(out, ref.flatten(2).transpose(1, 2))


@settings(max_examples=30, deadline=None)
@given(grid=grids)
def test_identity_contract(grid):
    x = torch.randn(2, grid[0] * grid[1] * grid[2], 3)
    reducer = build_reducer("identity")
    check_contract(reducer, x, grid)
    assert torch.equal(reducer(x, grid).tokens, x)


def test_window_partition_orders_windows_by_their_first_patch():
    group, first, sizes = window_partition((1, 3, 5), (1, 2, 2))
    assert first.tolist() == [0, 2, 4, 10, 12, 14] and sizes.tolist() == [4, 4, 2, 2, 2, 1]
    assert group.view(3, 5).tolist() == [[0, 0, 1, 1, 2], [0, 0, 1, 1, 2], [3, 3, 4, 4, 5]]


def test_reducer_errors_are_clear():
    with pytest.raises(UnknownNameError, match="avgpool"):
        REDUCERS.get("avgpol")
    with pytest.raises(ValueError, match="bad options for token reducer 'avgpool'"):
        build_reducer("avgpool", {"size": 2})
    with pytest.raises(ValueError, match="grid must be"):
        build_reducer("avgpool", {"window": [2, 0, 2]})
    with pytest.raises(ValueError, match=r"expected \[B, 64, D\]"):
        build_reducer("avgpool")(torch.randn(1, 60, 4), (1, 8, 8))
