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

``output_len(grid)`` must be exact and independent of the content: the model derives the number
of ``<image>`` placeholders per image from it (``LlavaWBForCausalLM.tokens_per_image``) and checks
the reducer's real output against it. Reducers register in ``REDUCERS`` and are built with
``build_reducer(name, options)``; ``identity`` is the default. Order-preserving local merging,
ToMe-SD and average pooling join here later.
"""

from __future__ import annotations

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


class TokenReducer(nn.Module):
    """Base class: subclasses implement ``reduce`` and ``output_len``; ``forward`` checks shapes."""

    def output_len(self, grid: Grid) -> int:
        """Number of tokens ``forward`` returns per item for a ``(T, H, W)`` grid."""
        raise NotImplementedError

    def reduce(self, x: torch.Tensor, grid: Grid) -> ReducerOutput:
        """Reduce ``x [B, T*H*W, D]``; called by ``forward`` after the shape checks."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, grid: Grid) -> ReducerOutput:
        grid = check_grid(grid)
        if x.dim() != 3 or x.shape[1] != grid[0] * grid[1] * grid[2]:
            raise ValueError(f"{type(self).__name__}: expected [B, {grid[0] * grid[1] * grid[2]}, D] for grid {grid}, got {tuple(x.shape)}")
        out = self.reduce(x, grid)
        expected = self.output_len(grid)
        if out.tokens.shape[1] != expected:
            raise RuntimeError(f"{type(self).__name__} returned {out.tokens.shape[1]} tokens, output_len says {expected}")
        return out


REDUCERS: Registry[type[TokenReducer]] = Registry("token reducer")


@REDUCERS.register("identity")
class IdentityReducer(TokenReducer):
    """Keeps every patch, in order: positions ``arange``, sizes 1, group ids ``arange``."""

    def output_len(self, grid: Grid) -> int:
        t, h, w = check_grid(grid)
        return t * h * w

    def reduce(self, x: torch.Tensor, grid: Grid) -> ReducerOutput:
        b, n, _ = x.shape
        index = torch.arange(n, device=x.device).expand(b, n)
        return ReducerOutput(tokens=x, positions=index, sizes=torch.ones_like(index), group_ids=index)


def check_grid(grid: Any) -> Grid:
    """Validate a ``(T, H, W)`` grid of positive ints and return it as a tuple."""
    if not isinstance(grid, (tuple, list)) or len(grid) != 3 or not all(isinstance(g, int) and g > 0 for g in grid):
        raise ValueError(f"grid must be (T, H, W) positive ints, got {grid!r}")
    return (int(grid[0]), int(grid[1]), int(grid[2]))


def build_reducer(name: str, options: dict[str, Any] | None = None) -> TokenReducer:
    """Instantiate the reducer registered as ``name`` (``UnknownNameError`` lists known names)."""
    cls = REDUCERS.get(name)
    try:
        return cls(**(options or {}))
    except TypeError as exc:
        raise ValueError(f"bad options for token reducer {name!r}: {options!r} ({exc})") from None
