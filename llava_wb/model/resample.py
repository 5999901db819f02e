"""Instruction-aware spatio-temporal resampling: keep the visual tokens the question is about.

``instruct_resample`` scores every visual token of an image or clip by

- **relevance** to the instruction: the highest cosine similarity between the token, projected into
  the LLM's embedding space by the model's own projector, and the embeddings of the instruction
  tokens (``instruction_mask`` from the conversation template: every non-answer text token, i.e.
  the human turns and the template's own words such as role tags and the system prompt, which are
  the same for every sample; it never marks an answer token, so answers cannot influence which
  tokens are kept). Narrowing it to the human turns' own words is a known refinement. ``mode="learned"`` adds a
  bilinear score ``<W_v x_i, W_q mean(q)>`` (zero at init, so it starts as the cosine mode) that
  trains end to end through a straight-through gate: kept tokens are multiplied by
  ``1 + s - stop_grad(s)`` (``s = sigmoid(score)``), 1 in value, the score's gradient in backward;
- plus ``novelty`` x **temporal novelty**: ``1 - cos`` to the same patch in the previous frame (the
  first frame gets the clip's mean), so a static background is not kept frame after frame;

keeps the top ``K`` (``ratio`` or ``tokens``; a fixed count per item, so batches stay dense and the
``<image>`` placeholders are known in advance) in ascending (t, h, w) order, and merges every other
token into its most similar kept token (size-weighted, sizes and per-patch group ids carried, as
``local_merge``). Batched, no loop over tokens, no LLM attention maps (works with SDPA / flash).

Multi-turn rule: one selection per image, conditioned on the **union of the human turns present in
the sequence** (in training the whole conversation's questions; in a generation prompt the
questions up to the one being answered); earlier answers never count, in training or in prompts.
Without any instruction token (captions with an empty prompt) relevance is 0 and novelty decides.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from llava_wb.model.reducers import REDUCERS, Grid, ReducerOutput, TokenReducer, check_budget, check_grid, gather_kept

RESAMPLE_MODES = ("cosine", "learned")


def relevance(projected: torch.Tensor, query: torch.Tensor, query_mask: torch.Tensor) -> torch.Tensor:
    """``[B, N]``: max over instruction tokens of cos(projected token, query token); 0 without any."""
    sim = F.normalize(projected.float(), dim=-1) @ F.normalize(query.float(), dim=-1).transpose(1, 2)  # [B, N, L]
    sim = sim.masked_fill(~query_mask.bool().unsqueeze(1), float("-inf"))
    best = sim.max(-1).values
    return torch.where(torch.isfinite(best), best, torch.zeros_like(best))


def temporal_novelty(x: torch.Tensor, grid: Grid) -> torch.Tensor:
    """``[B, N]``: 1 - cos(token, same patch one frame earlier); the first frame, which has no
    earlier frame, gets the clip's mean novelty (neither favoured nor left out); 0 for one frame."""
    t, h, w = grid
    if t == 1:
        return x.new_zeros(x.shape[0], h * w, dtype=torch.float32)
    frames = F.normalize(x.float(), dim=-1).view(x.shape[0], t, h * w, -1)
    later = 1.0 - (frames[:, 1:] * frames[:, :-1]).sum(-1)  # [B, T-1, HW]
    first = later.mean(dim=(1, 2), keepdim=True).expand(-1, 1, h * w)
    return torch.cat([first, later], 1).reshape(x.shape[0], -1)


def resample(x: torch.Tensor, scores: torch.Tensor, keep: int, metric: torch.Tensor | None = None,
             sizes: torch.Tensor | None = None) -> ReducerOutput:
    """Keep the ``keep`` best-scoring tokens in ascending index order; merge each other token into
    its most similar kept token (cosine on ``metric``, default ``x``)."""
    b, n, _ = x.shape
    kept = torch.topk(scores, keep, dim=1).indices  # [B, K]
    is_kept = torch.zeros(b, n, dtype=torch.bool, device=x.device).scatter_(1, kept, True)
    unit = F.normalize((x if metric is None else metric).float(), dim=-1)
    sim = unit @ unit.gather(1, kept.unsqueeze(-1).expand(-1, -1, unit.shape[-1])).transpose(1, 2)  # [B, N, K]
    nearest = kept.gather(1, sim.argmax(-1))
    arange = torch.arange(n, device=x.device).expand(b, n)
    return gather_kept(x, torch.where(is_kept, arange, nearest), sizes, keep)


@REDUCERS.register("instruct_resample")
class InstructResampler(TokenReducer):
    """See the module docstring. Options: ``ratio`` (fraction removed) or ``tokens`` (kept per item),
    ``mode`` (``cosine`` | ``learned``), ``novelty`` (weight of temporal novelty), ``dim`` (the
    learned scorer's width; its input sizes are set by the model with ``bind``)."""

    needs_instruction = True

    def __init__(self, ratio: float | None = None, tokens: int | None = None, mode: str = "cosine",
                 novelty: float = 0.5, dim: int = 64, **common: Any):
        super().__init__(**common)
        check_budget(ratio, tokens)
        if mode not in RESAMPLE_MODES:
            raise ValueError(f"mode must be one of {', '.join(RESAMPLE_MODES)}, got {mode!r}")
        self.ratio, self.tokens, self.mode, self.novelty, self.dim = ratio, tokens, mode, float(novelty), int(dim)
        self.visual_proj: nn.Module | None = None
        self.query_proj: nn.Module | None = None

    def bind(self, visual_dim: int, query_dim: int) -> None:
        """Create the learned scorer for these widths (``mode="learned"``; zero-initialised query side)."""
        if self.mode == "learned" and self.visual_proj is None:
            self.visual_proj = nn.Linear(visual_dim, self.dim, bias=False)
            self.query_proj = nn.Linear(query_dim, self.dim, bias=False)
            nn.init.zeros_(self.query_proj.weight)

    def output_len(self, grid: Grid) -> int:
        t, h, w = check_grid(grid)
        n = t * h * w
        keep = self.tokens if self.tokens is not None else n - int(round(self.ratio * n))
        if not 1 <= keep <= n:
            raise ValueError(f"instruct_resample: {keep} tokens asked for a {t}x{h}x{w} grid of {n}")
        return keep

    def score(self, x: torch.Tensor, grid: Grid, project: Callable[[torch.Tensor], torch.Tensor] | None,
              query: torch.Tensor | None, query_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(selection scores ``[B, N]``, the learned part or None)."""
        b, n, _ = x.shape
        scores = torch.zeros(b, n, device=x.device)
        learned = None
        has_query = query is not None and query_mask is not None and bool(query_mask.any())
        if has_query and project is not None:
            with torch.no_grad():
                weight = next(project.parameters(), None) if isinstance(project, nn.Module) else None
                projected = project(x if weight is None else x.to(weight.dtype))
                scores = scores + relevance(projected, query, query_mask)
        if self.mode == "learned":  # computed even without an instruction (0 then): its weights are always used
            if self.visual_proj is None:
                raise RuntimeError("instruct_resample mode='learned' needs bind(visual_dim, query_dim) first")
            weight = self.visual_proj.weight
            if has_query:
                w = query_mask.to(weight.dtype).unsqueeze(-1)
                mean_q = (query.to(weight.dtype) * w).sum(1) / w.sum(1).clamp(min=1.0)
            else:
                mean_q = x.new_zeros(b, self.query_proj.in_features, dtype=weight.dtype)
            learned = (self.visual_proj(x.to(weight.dtype)) @ self.query_proj(mean_q).unsqueeze(-1)).squeeze(-1) / self.dim ** 0.5
            scores = scores + learned.float()
        if self.novelty and grid[0] > 1:
            scores = scores + self.novelty * temporal_novelty(x, grid)
        return scores, learned

    def reduce(self, x: torch.Tensor, grid: Grid, metric: torch.Tensor | None = None, sizes: torch.Tensor | None = None,
               *, query: torch.Tensor | None = None, query_mask: torch.Tensor | None = None,
               project: Callable[[torch.Tensor], torch.Tensor] | None = None) -> ReducerOutput:
        scores, learned = self.score(x, grid, project, query, query_mask)
        out = resample(x, scores.detach(), self.output_len(grid), metric, sizes)
        if learned is not None and torch.is_grad_enabled():
            gate = torch.sigmoid(learned.gather(1, out.positions))
            out.tokens = out.tokens * (1.0 + gate - gate.detach()).unsqueeze(-1).to(out.tokens.dtype)
        return out
