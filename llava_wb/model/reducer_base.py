"""Token reducers: the slot between the vision tower and the projector that may cut visual tokens.

A reducer sees the patch features of a batch of images (or clips) laid out on a ``(T, H, W)``
grid in raster order (t, then h, then w) and returns a ``ReducerOutput``:

- ``tokens``    ``[B, M, D]``  the tokens handed to the projector and the LLM, in the order the
  LLM reads them;
- ``positions`` ``LongTensor[B, M]``  the original raster index of each output token (of its
  destination patch for a merged group);
- ``sizes``     ``LongTensor[B, M]``  how many input patches each output token stands for;
- ``group_ids`` ``LongTensor[B, N]``  for each input patch, the output index it went to (for
  overlays and unmerging).

This module holds the base class, the ``REDUCERS`` registry, the shared window helpers and the two
simplest reducers; it imports no other reducer. ``llava_wb.model.reducers`` is the public entry
point: importing it registers every built-in and gives ``build_reducer``.

``output_len(grid)`` must be exact and independent of the content: the model derives the number
of ``<image>`` placeholders per image from it (``LlavaWBForCausalLM.tokens_per_image``) and checks
the reducer's real output against it. Reducers register in ``REDUCERS`` and are built with
``build_reducer(name, options)``; ``identity`` is the default, ``avgpool`` averages fixed windows
(2x2 on images, 2x2x2 on clips); ``local_merge`` (order-preserving) and ``tome_sd`` (its baseline)
live in ``llava_wb.model.merging``.

Windows (``window_partition``) tile the grid in raster order of window coordinates; a grid that the
window does not divide gets smaller windows at its far edges, so nothing is dropped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from llava_wb.registry import Registry

Grid = tuple[int, int, int]


@dataclass
class ReducerOutput:
    """What a reducer returns (shapes in the module docstring)."""

    tokens: torch.Tensor
    positions: torch.Tensor
    sizes: torch.Tensor
    group_ids: torch.Tensor


POSITION_MODES = ("contiguous", "original")


class TokenReducer(nn.Module):
    """Base class: subclasses implement ``reduce`` and ``output_len``; ``forward`` checks shapes.

    Options every reducer takes, read by the model (``LlavaWBForCausalLM``):
    ``position_ids``: ``contiguous`` (default; the LLM numbers the visual tokens 0, 1, 2, ...) or
    ``original`` (each token gets its patch's raster index, so the positions skip what merged away);
    ``size_embedding``: add a learned, zero-initialised embedding of each token's size to its
    projected embedding. ``placement`` (``after`` the tower, or inside its last ``layers`` layers)
    only the merging reducers support."""

    preserves_order = True  # output positions strictly increase (tome_sd: False)
    placement = "after"
    needs_instruction = False  # True: ``forward`` takes the instruction (``instruct_resample``)
    calls_vary_per_rank = False  # True: its module calls depend on the batch (ZeRO-3 cannot gather them)

    def __init__(self, position_ids: str = "contiguous", size_embedding: bool = False):
        super().__init__()
        if position_ids not in POSITION_MODES:
            raise ValueError(f"position_ids must be one of {', '.join(POSITION_MODES)}, got {position_ids!r}")
        if position_ids == "original" and not self.preserves_order:
            raise ValueError(f"{type(self).__name__} does not keep raster order: position_ids='original' needs it")
        self.position_ids, self.size_embedding = position_ids, bool(size_embedding)

    def output_len(self, grid: Grid) -> int:
        """Number of tokens ``forward`` returns per item for a ``(T, H, W)`` grid."""
        raise NotImplementedError

    def reduce(
        self, x: torch.Tensor, grid: Grid, metric: torch.Tensor | None = None, sizes: torch.Tensor | None = None
    ) -> ReducerOutput:
        """Reduce ``x [B, T*H*W, D]`` (``metric``: what similarity is measured on, default ``x``;
        ``sizes``: patches each input token already stands for); called by ``forward``."""
        raise NotImplementedError

    def forward(
        self,
        x: torch.Tensor,
        grid: Grid,
        metric: torch.Tensor | None = None,
        sizes: torch.Tensor | None = None,
        **context: Any,
    ) -> ReducerOutput:
        """``context``: the instruction (``query``, ``query_mask``, ``project``) for reducers with
        ``needs_instruction``; the others take none."""
        grid = check_grid(grid)
        if x.dim() != 3 or x.shape[1] != grid[0] * grid[1] * grid[2]:
            raise ValueError(
                f"{type(self).__name__}: expected [B, {grid[0] * grid[1] * grid[2]}, D] for grid {grid}, got {tuple(x.shape)}"
            )
        out = (
            self.reduce(x, grid, metric, sizes, **context)
            if self.needs_instruction
            else self.reduce(x, grid, metric, sizes)
        )
        expected = self.output_len(grid)
        if out.tokens.shape[1] != expected:
            raise RuntimeError(
                f"{type(self).__name__} returned {out.tokens.shape[1]} tokens, output_len says {expected}"
            )
        return out


REDUCERS: Registry[type[TokenReducer]] = Registry("token reducer")


@REDUCERS.register("identity")
class IdentityReducer(TokenReducer):
    """Keeps every patch, in order: positions ``arange``, sizes 1, group ids ``arange``."""

    def output_len(self, grid: Grid) -> int:
        t, h, w = check_grid(grid)
        return t * h * w

    def reduce(
        self, x: torch.Tensor, grid: Grid, metric: torch.Tensor | None = None, sizes: torch.Tensor | None = None
    ) -> ReducerOutput:
        b, n, _ = x.shape
        index = torch.arange(n, device=x.device).expand(b, n)
        return ReducerOutput(tokens=x, positions=index, sizes=torch.ones_like(index), group_ids=index)


@REDUCERS.register("avgpool")
class AvgPoolReducer(TokenReducer):
    """Average of each ``window = (st, sh, sw)`` block of patches (default 2x2x2; on a one-frame
    image that is 2x2). Position of a token = its window's first patch; size = patches in the window."""

    def __init__(self, window: tuple[int, int, int] | list[int] = (2, 2, 2), **common: Any):
        super().__init__(**common)
        self.window = check_grid(tuple(window))

    def output_len(self, grid: Grid) -> int:
        return num_windows(check_grid(grid), self.window)

    def reduce(
        self, x: torch.Tensor, grid: Grid, metric: torch.Tensor | None = None, sizes: torch.Tensor | None = None
    ) -> ReducerOutput:
        b, _, d = x.shape
        group, positions, sizes = window_partition(grid, self.window, device=x.device)
        sums = x.new_zeros(b, positions.numel(), d).index_add_(1, group, x)
        tokens = sums / sizes.to(x.dtype).unsqueeze(-1)
        return ReducerOutput(
            tokens=tokens, positions=positions.expand(b, -1), sizes=sizes.expand(b, -1), group_ids=group.expand(b, -1)
        )


def num_windows(grid: Grid, window: Grid) -> int:
    """How many windows tile ``grid`` (partial windows at the far edges count)."""
    return math.prod(-(-g // w) for g, w in zip(grid, window))


def window_partition(
    grid: Grid, window: Grid, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(window_of_patch [N], first_patch_of_window [M], patches_per_window [M])`` for a raster
    ``(T, H, W)`` grid cut into ``(st, sh, sw)`` windows, windows numbered in raster order; the
    first patches are strictly increasing, so window order is the patches' reading order."""
    t, h, w = check_grid(grid)
    st, sh, sw = (min(a, b) for a, b in zip(check_grid(window), (t, h, w)))
    nt, nh, nw = -(-t // st), -(-h // sh), -(-w // sw)
    tt = torch.arange(t, device=device).view(t, 1, 1) // st
    hh = torch.arange(h, device=device).view(1, h, 1) // sh
    ww = torch.arange(w, device=device).view(1, 1, w) // sw
    group = ((tt * nh + hh) * nw + ww).reshape(-1)
    m = nt * nh * nw
    sizes = torch.zeros(m, dtype=torch.long, device=device).index_add_(0, group, torch.ones_like(group))
    first = torch.full((m,), t * h * w, dtype=torch.long, device=device)
    first = first.scatter_reduce(0, group, torch.arange(t * h * w, device=device), reduce="amin")
    return group, first, sizes


def gather_kept(x: torch.Tensor, target: torch.Tensor, sizes: torch.Tensor | None, keep: int) -> ReducerOutput:
    """Size-weighted sums into ``target`` (each token's destination, itself if kept), kept tokens in
    ascending index order."""
    b, n, d = x.shape
    # accumulated in fp32: bf16 cannot count past 256 patches nor average them exactly
    w = torch.ones(b, n, dtype=torch.float32, device=x.device) if sizes is None else sizes.float()
    sums = torch.zeros(b, n, d, dtype=torch.float32, device=x.device).scatter_add_(
        1, target.unsqueeze(-1).expand(-1, -1, d), x.float() * w.unsqueeze(-1)
    )
    mass = torch.zeros_like(w).scatter_add_(1, target, w)
    arange = torch.arange(n, device=x.device).expand(b, n)
    kept = target == arange
    order = torch.sort(torch.where(kept, arange, arange + n), dim=1).values[:, :keep]  # kept, ascending
    out_index = torch.full((b, n), -1, dtype=torch.long, device=x.device).scatter_(
        1, order, torch.arange(keep, device=x.device).expand(b, keep)
    )
    tokens = (sums / mass.clamp(min=1e-12).unsqueeze(-1)).gather(1, order.unsqueeze(-1).expand(-1, -1, d)).to(x.dtype)
    size_out = mass.gather(1, order).round().long()
    return ReducerOutput(tokens, order, size_out, out_index.gather(1, target))


def check_budget(ratio: float | None, tokens: int | None) -> None:
    """A reducer's budget: exactly one of ``ratio`` (fraction removed, in [0, 1)) or ``tokens`` (kept, > 0)."""
    if (ratio is None) == (tokens is None):
        raise ValueError(f"give exactly one of ratio or tokens (got ratio={ratio!r}, tokens={tokens!r})")
    if ratio is not None and not 0.0 <= float(ratio) < 1.0:
        raise ValueError(f"ratio must be in [0, 1), got {ratio!r}")
    if tokens is not None and not (isinstance(tokens, int) and tokens > 0):
        raise ValueError(f"tokens must be a positive int, got {tokens!r}")


def check_grid(grid: Any) -> Grid:
    """Validate a ``(T, H, W)`` grid of positive ints and return it as a tuple."""
    if not isinstance(grid, (tuple, list)) or len(grid) != 3 or not all(isinstance(g, int) and g > 0 for g in grid):
        raise ValueError(f"grid must be (T, H, W) positive ints, got {grid!r}")
    return (int(grid[0]), int(grid[1]), int(grid[2]))
