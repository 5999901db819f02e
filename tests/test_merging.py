"""``local_merge`` and ``tome_sd``: properties (hypothesis), pooling equivalences, the ToMe-SD reference."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_reducers import check_contract

from llava_wb.model.reducers import build_reducer, num_windows, window_partition

grids = st.tuples(st.integers(1, 3), st.integers(1, 7), st.integers(1, 7))
windows = st.tuples(st.integers(1, 2), st.integers(1, 3), st.integers(1, 3))


def merger(name="local_merge", **options):
    return build_reducer(name, options).eval()


@settings(max_examples=60, deadline=None)
@given(
    grid=grids,
    window=windows,
    frac=st.floats(0, 1),
    b=st.integers(1, 3),
    neighbours=st.integers(0, 1),
    seed=st.integers(0, 2**16),
    destination=st.sampled_from(["first", "typical"]),
)
def test_local_merge_contract_on_any_grid_and_budget(grid, window, frac, b, neighbours, seed, destination):
    n = grid[0] * grid[1] * grid[2]
    tokens = n - int(frac * (n - num_windows(grid, window)))
    x = torch.randn(b, n, 6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    reducer = merger(tokens=tokens, window=list(window), neighbours=neighbours, destination=destination)
    check_contract(reducer, x, grid)
    out = reducer(x, grid)
    # every token is the mean of its group (uniform input sizes)
    for j in range(out.tokens.shape[1]):
        members = (out.group_ids[0] == j).nonzero().flatten()
        torch.testing.assert_close(out.tokens[0, j], x[0, members].mean(0))
    if neighbours == 0:  # local: every patch's group lies inside its own window
        group, _, _ = window_partition(grid, window)
        assert torch.equal(group[out.positions.gather(1, out.group_ids)], group.expand(b, -1))


@settings(max_examples=30, deadline=None)
@given(grid=grids, b=st.integers(2, 4))
def test_batched_equals_per_sample_and_eval_is_deterministic(grid, b):
    n = grid[0] * grid[1] * grid[2]
    x = torch.randn(b, n, 5, dtype=torch.float64)
    reducer = merger(tokens=max(n - n // 3, num_windows(grid, (2, 2, 2))), random_dst=True)
    batched = reducer(x, grid)
    again = reducer(x, grid)
    assert torch.equal(batched.tokens, again.tokens) and torch.equal(batched.group_ids, again.group_ids)
    for i in range(b):
        single = reducer(x[i : i + 1], grid)
        torch.testing.assert_close(single.tokens, batched.tokens[i : i + 1])
        assert torch.equal(single.positions, batched.positions[i : i + 1])


def test_r0_is_identity_and_full_merge_is_average_pooling():
    x = torch.randn(3, 64, 8, dtype=torch.float64)
    out = merger(ratio=0.0)(x, (1, 8, 8))
    assert torch.equal(out.tokens, x) and torch.equal(out.positions[0], torch.arange(64))
    pooled = merger(ratio=0.75)(x, (1, 8, 8))  # r = 3N/4 with 2x2 windows
    avg = build_reducer("avgpool")(x, (1, 8, 8))
    torch.testing.assert_close(pooled.tokens, avg.tokens)
    assert torch.equal(pooled.positions, avg.positions) and torch.equal(pooled.sizes, avg.sizes)
    v = torch.randn(2, 4 * 6 * 6, 8, dtype=torch.float64)
    video = merger(ratio=7 / 8)(v, (4, 6, 6))  # r = 7N/8 with 2x2x2 windows
    torch.testing.assert_close(video.tokens, build_reducer("avgpool")(v, (4, 6, 6)).tokens)


def test_random_destinations_in_training_keep_the_contract():
    reducer = build_reducer("local_merge", {"ratio": 0.5, "random_dst": True, "seed": 3}).train()
    x = torch.randn(4, 64, 8)
    check_contract(reducer, x, (1, 8, 8))
    a, b = reducer(x, (1, 8, 8)), reducer(x, (1, 8, 8))
    assert not torch.equal(a.positions, b.positions)  # a new draw each call in training


def test_gradients_reach_every_input_token():
    x = torch.randn(2, 64, 8, requires_grad=True)
    for name in ("local_merge", "tome_sd"):
        x.grad = None
        merger(name, ratio=0.5)(x, (1, 8, 8)).tokens.square().sum().backward()
        assert bool((x.grad.abs().sum(-1) > 0).all()), name


def test_sizes_weight_the_average():
    x = torch.tensor([[[0.0], [1.0], [2.0], [3.0]]])
    sizes = torch.tensor([[1, 3, 1, 1]])
    out = build_reducer("local_merge", {"tokens": 1, "window": [1, 2, 2]})(x, (1, 2, 2), sizes=sizes)
    torch.testing.assert_close(out.tokens, torch.tensor([[[(0 + 3 + 2 + 3) / 6.0]]]))
    assert out.sizes.tolist() == [[6]]


def reference_tome_sd(x: torch.Tensor, h: int, w: int, sy: int, sx: int, r: int):
    """ToMe-SD's matching with top-left destinations, written as plain loops over one image."""
    n = h * w
    dst = [(i * sy) * w + j * sx for i in range(-(-h // sy)) for j in range(-(-w // sx))]
    src = [k for k in range(n) if k not in dst]
    unit = torch.nn.functional.normalize(x, dim=-1)
    best, score = [], []
    for s in src:
        sims = [float(unit[s] @ unit[d]) for d in dst]
        j = max(range(len(dst)), key=lambda i: (sims[i], -i))
        best.append(j)
        score.append(sims[j])
    order = sorted(range(len(src)), key=lambda i: -score[i])  # stable: ties keep source order
    merged, unmerged = order[:r], order[r:]
    groups = {j: [dst[j]] for j in range(len(dst))}
    for i in merged:
        groups[best[i]].append(src[i])
    tokens = [x[src[i]] for i in unmerged] + [x[groups[j]].mean(0) for j in range(len(dst))]
    members = [[src[i]] for i in unmerged] + [sorted(groups[j]) for j in range(len(dst))]
    return torch.stack(tokens), members


@pytest.mark.parametrize("h,w,r", [(4, 4, 6), (6, 6, 20), (5, 7, 11), (8, 8, 48)])
def test_tome_sd_matches_a_reference_implementation(h, w, r):
    torch.manual_seed(h * w + r)
    x = torch.randn(1, h * w, 16, dtype=torch.float64)
    out = merger("tome_sd", tokens=h * w - r, window=[1, 2, 2])(x, (1, h, w))
    tokens, members = reference_tome_sd(x[0], h, w, 2, 2, r)
    torch.testing.assert_close(out.tokens[0], tokens)
    got = [sorted((out.group_ids[0] == j).nonzero().flatten().tolist()) for j in range(out.tokens.shape[1])]
    assert got == members


@pytest.mark.parametrize("name", ["local_merge", "tome_sd"])
def test_typical_destination_is_the_window_medoid(name):
    # one 2x2 window: an outlier first patch and three near-copies of another vector; merging 2 of 3
    e0, e1 = torch.eye(4, dtype=torch.float64)[:2]
    x = torch.stack([e0, e1, e1 + 0.01 * e0, e1 - 0.01 * e0]).unsqueeze(0)
    first = merger(name, tokens=2, window=[1, 2, 2])(x, (1, 2, 2))
    typical = merger(name, tokens=2, window=[1, 2, 2], destination="typical")(x, (1, 2, 2))
    # the first patch as destination pulls two of the copies into the outlier's token
    assert first.sizes[0, first.positions[0].tolist().index(0)] == 3
    # the medoid (one of the copies) takes the other two; the outlier stays alone, unchanged
    positions = typical.positions[0].tolist()
    assert positions[0] == 0 if name == "local_merge" else 0 in positions
    assert typical.sizes[0, positions.index(0)] == 1 and set(positions) - {0} <= {1, 2, 3}
    torch.testing.assert_close(typical.tokens[0, positions.index(0)], e0)


def test_tome_sd_breaks_raster_order_and_local_merge_keeps_it():
    torch.manual_seed(0)
    x = torch.randn(2, 64, 16)
    tome = merger("tome_sd", ratio=0.5)(x, (1, 8, 8))
    local = merger(ratio=0.5)(x, (1, 8, 8))
    assert not bool((tome.positions[:, 1:] > tome.positions[:, :-1]).all())
    assert bool((local.positions[:, 1:] > local.positions[:, :-1]).all())


def test_bad_budgets_and_options_are_named():
    with pytest.raises(ValueError, match="at most 48 of 64 can merge"):
        build_reducer("local_merge", {"tokens": 8}).output_len((1, 8, 8))
    with pytest.raises(ValueError, match="exactly one of ratio or tokens"):
        build_reducer("local_merge", {})
    with pytest.raises(ValueError, match="placement"):
        build_reducer("local_merge", {"ratio": 0.5, "placement": "inside"})
    with pytest.raises(ValueError, match="destination must be 'first' or 'typical'"):
        build_reducer("local_merge", {"ratio": 0.5, "destination": "centre"})
    from llava_wb.model.merging import local_merge

    with pytest.raises(ValueError, match="destination must be"):
        local_merge(torch.randn(1, 4, 2), torch.randn(1, 4, 2), (1, 2, 2), (1, 2, 2), 1, destination="centre")
    with pytest.raises(ValueError, match="raster order"):
        build_reducer("tome_sd", {"ratio": 0.5, "position_ids": "original"})
