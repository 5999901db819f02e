"""Token merging kernels: order-preserving local merge and the ToMe-SD baseline (batched, no loops over tokens).

Both cut a ``(T, H, W)`` raster grid of ``N`` tokens into ``(st, sh, sw)`` windows and give each
window one *destination* token (its first patch in eval; a random member when ``random_dst``; with
``destination="typical"`` the member most similar to the rest of its window, deterministic). The
other tokens are *sources*; the ``r`` sources most similar to a destination (cosine on ``metric``,
e.g. ViT keys or the features themselves) merge into it.

- ``local_merge`` (ours, after ToMe-SD): a source may only join the destination of its own window
  (or, with ``neighbours``, of the adjacent windows); merges are size-weighted averages with sizes
  carried; the survivors stay in ascending raster order, each at its original index. ``r = 0`` is the
  identity; with uniform sizes, ``r = N - N/(st*sh*sw)`` is ``(st, sh, sw)`` average pooling.
- ``tome_sd_merge`` (the baseline, ToMe-SD's ``bipartite_soft_matching_random2d``): matching is
  global (a source may join any window's destination), merged destinations are plain means, and the
  output is ``[unmerged sources in similarity order, destinations]``, so raster order is lost.

Both return ``ReducerOutput`` (tokens, original positions, sizes, per-patch group ids).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from llava_wb.model.reducer_base import (
    REDUCERS,
    Grid,
    ReducerOutput,
    TokenReducer,
    check_budget,
    check_grid,
    gather_kept,
    num_windows,
    window_partition,
)


def pick_destinations(
    group: torch.Tensor,
    first: torch.Tensor,
    batch: int,
    random_dst: bool,
    generator: torch.Generator | None = None,
    typical: torch.Tensor | None = None,
) -> torch.Tensor:
    """``[B, M]`` patch index of each window's destination: its first patch, a uniform random member
    (``random_dst``), or, given ``typical`` (``[B, N, D]`` metric), the member whose summed cosine
    similarity to its window's members is largest (the window's medoid; ties go to the first)."""
    m, n = first.numel(), group.numel()
    if random_dst:
        score = torch.rand(batch, n, generator=generator, device=group.device)
    elif typical is not None:
        with torch.no_grad():  # a choice, not a value: nothing to differentiate
            unit = F.normalize(typical.float(), dim=-1)
            window_sum = torch.zeros(batch, m, unit.shape[-1], device=unit.device).index_add_(1, group, unit)
            score = (unit * window_sum[:, group]).sum(-1)  # [B, N]
    else:
        return first.expand(batch, m)
    groups = group.expand(batch, -1)
    best = torch.full((batch, m), -torch.inf, device=group.device).scatter_reduce(1, groups, score, "amax")
    is_dst = score == best.gather(1, groups)
    idx = torch.arange(n, device=group.device).expand(batch, -1)
    return torch.full((batch, m), n, dtype=torch.long, device=group.device).scatter_reduce(
        1, groups, torch.where(is_dst, idx, n), "amin"
    )


def check_destination(destination: str) -> str:
    """A destination mode, ``first`` or ``typical``, or a ``ValueError`` naming it."""
    if destination not in ("first", "typical"):
        raise ValueError(f"destination must be 'first' or 'typical', got {destination!r}")
    return destination


def typical_metric(metric: torch.Tensor, destination: str) -> torch.Tensor | None:
    """``pick_destinations``' ``typical`` argument for a ``destination`` mode."""
    return metric if check_destination(destination) == "typical" else None


def neighbour_windows(grid: Grid, window: Grid, reach: int, device: torch.device | str | None = None) -> torch.Tensor:
    """``[M, K]`` window indices within ``reach`` windows along each axis (``-1`` pads the edges);
    column 0 is the window itself."""
    t, h, w = grid
    st, sh, sw = (min(a, b) for a, b in zip(window, grid))
    nt, nh, nw = -(-t // st), -(-h // sh), -(-w // sw)
    wt, wh, ww = torch.meshgrid(torch.arange(nt), torch.arange(nh), torch.arange(nw), indexing="ij")
    coords = torch.stack([wt.flatten(), wh.flatten(), ww.flatten()], 1)  # [M, 3]
    span = range(-reach, reach + 1)
    offsets = [(0, 0, 0)] + [
        (a, b, c) for a in (span if nt > 1 else [0]) for b in span for c in span if (a, b, c) != (0, 0, 0)
    ]
    off = torch.tensor(offsets)  # [K, 3]
    cand = coords[:, None, :] + off[None]  # [M, K, 3]
    valid = ((cand >= 0) & (cand < torch.tensor([nt, nh, nw]))).all(-1)
    index = (cand[..., 0] * nh + cand[..., 1]) * nw + cand[..., 2]
    return torch.where(valid, index, -1).to(device)


def _windows(x: torch.Tensor, grid: Grid, window: Grid, r: int, who: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``window_partition`` of ``grid`` after checking that ``r`` merges fit (one destination per window)."""
    n = x.shape[1]
    group, first, _ = window_partition(check_grid(grid), check_grid(window), device=x.device)
    m = first.numel()
    if not 0 <= r <= n - m:
        raise ValueError(f"{who}: r={r} but only {n - m} of {n} tokens are sources ({m} windows of {tuple(window)})")
    return group, first


def local_merge(
    x: torch.Tensor,
    metric: torch.Tensor,
    grid: Grid,
    window: Grid,
    r: int,
    *,
    sizes: torch.Tensor | None = None,
    random_dst: bool = False,
    neighbours: int = 0,
    generator: torch.Generator | None = None,
    destination: str = "first",
) -> ReducerOutput:
    """Merge ``r`` sources per item into nearby destinations; keep raster order (module docstring)."""
    b, n, d = x.shape
    group, first = _windows(x, grid, window, r, "local_merge")
    arange = torch.arange(n, device=x.device).expand(b, n)
    if r == 0:
        ones = torch.ones(b, n, dtype=torch.long, device=x.device)
        return ReducerOutput(x, arange, ones if sizes is None else sizes, arange)
    dst = pick_destinations(group, first, b, random_dst, generator, typical_metric(metric, destination))
    is_dst = torch.zeros(b, n, dtype=torch.bool, device=x.device).scatter_(1, dst, True)
    cand_windows = neighbour_windows(grid, window, neighbours, x.device)[group]  # [N, K]
    cand = dst.gather(1, cand_windows.clamp(min=0).reshape(1, -1).expand(b, -1)).view(b, n, -1)  # [B, N, K]
    unit = F.normalize(metric.float(), dim=-1)
    sim = (
        unit.unsqueeze(2)
        * unit.gather(1, cand.reshape(b, -1, 1).expand(-1, -1, unit.shape[-1])).view(b, n, -1, unit.shape[-1])
    ).sum(-1)  # [B, N, K]
    sim = sim.masked_fill((cand_windows < 0).unsqueeze(0), float("-inf"))
    score, best = sim.max(-1)
    score = score.masked_fill(is_dst, float("-inf"))
    merged = torch.topk(score, r, dim=1, sorted=False).indices  # [B, r] sources that merge
    target = arange.clone().scatter_(1, merged, cand.gather(2, best.unsqueeze(-1)).squeeze(-1).gather(1, merged))
    return gather_kept(x, target, sizes, n - r)


def tome_sd_merge(
    x: torch.Tensor,
    metric: torch.Tensor,
    grid: Grid,
    window: Grid,
    r: int,
    *,
    random_dst: bool = False,
    generator: torch.Generator | None = None,
    destination: str = "first",
) -> ReducerOutput:
    """ToMe-SD bipartite soft matching (global; output ``[unmerged sources, destinations]``)."""
    b, n, d = x.shape
    group, first = _windows(x, grid, window, r, "tome_sd")
    m = first.numel()
    dst = pick_destinations(group, first, b, random_dst, generator, typical_metric(metric, destination))  # [B, M]
    arange = torch.arange(n, device=x.device).expand(b, n)
    is_dst = torch.zeros(b, n, dtype=torch.bool, device=x.device).scatter_(1, dst, True)
    src = torch.sort(torch.where(is_dst, arange + n, arange), dim=1).values[:, : n - m]  # [B, S] ascending
    unit = F.normalize(metric.float(), dim=-1)
    a = unit.gather(1, src.unsqueeze(-1).expand(-1, -1, unit.shape[-1]))
    bdst = unit.gather(1, dst.unsqueeze(-1).expand(-1, -1, unit.shape[-1]))
    node_max, node_idx = (a @ bdst.transpose(1, 2)).max(-1)  # [B, S]: best destination of each source
    edge = node_max.argsort(dim=-1, descending=True, stable=True)
    unm, merged = edge[:, r:], edge[:, :r]
    target = arange.clone().scatter_(1, src.gather(1, merged), dst.gather(1, node_idx.gather(1, merged)))
    kept = torch.cat([src.gather(1, unm), dst], 1)  # ToMe-SD's output order
    out_index = torch.full((b, n), -1, dtype=torch.long, device=x.device).scatter_(
        1, kept, torch.arange(n - r, device=x.device).expand(b, -1)
    )
    sums = torch.zeros_like(x).scatter_add_(1, target.unsqueeze(-1).expand(-1, -1, d), x)
    count = torch.zeros(b, n, dtype=torch.long, device=x.device).scatter_add_(1, target, torch.ones_like(target))
    tokens = (sums / count.clamp(min=1).unsqueeze(-1).to(x.dtype)).gather(1, kept.unsqueeze(-1).expand(-1, -1, d))
    return ReducerOutput(tokens, kept, count.gather(1, kept), out_index.gather(1, target))


class MergeReducer(TokenReducer):
    """Shared options of the merging reducers. Give ``ratio`` (fraction of the N tokens removed) or
    ``tokens`` (tokens kept); ``window`` is ``(st, sh, sw)``; ``random_dst`` draws destinations at
    random in training (eval is always deterministic); ``seed`` makes those draws repeatable;
    ``destination``: ``first`` (each window's first patch) or ``typical`` (its medoid on the metric),
    used in eval and, without ``random_dst``, in training.
    ``placement``: ``after`` the tower (default) or ``tower``: inside it, before its last ``layers``
    layers (ToMe-style, proportional attention), so the tower's compute drops too. ``metric``:
    ``features`` (after placement) or ``keys`` of the layer where merging happens (tower placement;
    ``auto`` picks these)."""

    def __init__(
        self,
        ratio: float | None = None,
        tokens: int | None = None,
        window: tuple[int, int, int] | list[int] = (2, 2, 2),
        random_dst: bool = False,
        seed: int | None = None,
        placement: str = "after",
        layers: int = 1,
        metric: str = "auto",
        destination: str = "first",
        **common: Any,
    ):
        super().__init__(**common)
        self.destination = check_destination(destination)
        if placement not in ("after", "tower"):
            raise ValueError(f"placement must be 'after' or 'tower', got {placement!r}")
        if not (isinstance(layers, int) and layers >= 1):
            raise ValueError(f"layers must be an int >= 1, got {layers!r}")
        metric = ("keys" if placement == "tower" else "features") if metric == "auto" else metric
        if metric not in ("features", "keys") or (metric == "keys" and placement == "after"):
            raise ValueError(f"metric must be 'features' or 'auto' (or 'keys' with placement='tower'), got {metric!r}")
        self.placement, self.layers, self.metric = placement, layers, metric
        check_budget(ratio, tokens)
        self.ratio, self.tokens, self.window = ratio, tokens, check_grid(tuple(window))
        self.random_dst = bool(random_dst)
        self.generator = None if seed is None else torch.Generator().manual_seed(int(seed))

    def merges(self, grid: Grid) -> int:
        """``r``: how many tokens merge away for this grid (content-independent)."""
        t, h, w = check_grid(grid)
        n = t * h * w
        r = n - self.tokens if self.tokens is not None else int(round(self.ratio * n))
        most = n - num_windows(grid, self.window)
        if not 0 <= r <= most:
            raise ValueError(
                f"{type(self).__name__}: {n - r} tokens asked for a {t}x{h}x{w} grid, but with "
                f"window {self.window} at most {most} of {n} can merge (>= {n - most} remain)"
            )
        return r

    def output_len(self, grid: Grid) -> int:
        t, h, w = check_grid(grid)
        return t * h * w - self.merges(grid)

    def _random(self) -> bool:
        return self.random_dst and self.training


@REDUCERS.register("local_merge")
class LocalMergeReducer(MergeReducer):
    """Order-preserving window-local merging (``local_merge``); ``neighbours=1`` lets a source join
    an adjacent window's destination too."""

    def __init__(self, neighbours: int = 0, **options: Any):
        super().__init__(**options)
        if not (isinstance(neighbours, int) and neighbours >= 0):
            raise ValueError(f"neighbours must be an int >= 0, got {neighbours!r}")
        self.neighbours = neighbours

    def reduce(
        self, x: torch.Tensor, grid: Grid, metric: torch.Tensor | None = None, sizes: torch.Tensor | None = None
    ) -> ReducerOutput:
        gen = self.generator if self.generator is None or self.generator.device == x.device else None
        return local_merge(
            x,
            x if metric is None else metric,
            grid,
            self.window,
            self.merges(grid),
            sizes=sizes,
            random_dst=self._random(),
            neighbours=self.neighbours,
            generator=gen,
            destination=self.destination,
        )


@REDUCERS.register("tome_sd")
class ToMeSDReducer(MergeReducer):
    """ToMe-SD's global bipartite matching (the baseline; output order is not raster order)."""

    preserves_order = False

    def reduce(
        self, x: torch.Tensor, grid: Grid, metric: torch.Tensor | None = None, sizes: torch.Tensor | None = None
    ) -> ReducerOutput:
        gen = self.generator if self.generator is None or self.generator.device == x.device else None
        return tome_sd_merge(
            x,
            x if metric is None else metric,
            grid,
            self.window,
            self.merges(grid),
            random_dst=self._random(),
            generator=gen,
            destination=self.destination,
        )
