"""Instruction-aware spatio-temporal resampling: keep the visual tokens the question is about.

``instruct_resample`` scores every visual token of an image or clip by the sum of

- **relevance** to the instruction: for each instruction token ``q_j`` (``instruction_mask`` from the
  conversation template: every non-answer text token; it never marks an answer token, so answers
  cannot influence which tokens are kept), the dot product of ``q_j`` with every visual token as the
  model's own projector would put it into the LLM's embedding space, **standardised over the
  item's visual tokens** (so each word ranks the tokens whatever its overall closeness to them; a
  word equally close to all of them ranks none, but every other word, "the" as much as "triangle",
  gets an equal say); a token's relevance is its best rank over the words. Only the instruction
  rows of the sequence are used (a training sequence is long, its question short). With a
  projector that ends in a linear layer (``linear``, ``mlp2x_gelu``) the last layer is pulled back
  onto the query instead of applied to every visual token (``<W h_i + b, q> = <h_i, W^T q> + <b, q>``,
  the last term the same for every token), so scoring costs the projector minus its last layer;
- ``saliency`` x **distinctiveness**: ``1 - cos`` of a token to its frame's mean tower feature,
  standardised like relevance: an instruction-blind prior for "something is there" (VisionZip keeps
  such dominant tokens without any instruction);
- in ``mode="learned"``, a bilinear score ``<W_v x_i, W_q mean(q)>`` (zero at init, so it starts as
  the zero-parameter mode) that trains end to end through a straight-through gate
  ``g = 1 + s - stop_grad(s)`` (``s = sigmoid(score)``), 1 in value, the score's gradient in
  backward: on each token's weight in the average of the group it merges into (so a merged token's
  score learns whether more of it would have helped) and on each kept token as a whole;
- ``novelty`` x **temporal novelty**, standardised over the clip: ``1 - cos`` to the same patch in the
  previous frame (the first frame gets the clip's mean), so a static background, or a static
  distinct object, is not kept frame after frame;

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

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from llava_wb.model.reducer_base import (
    REDUCERS,
    Grid,
    ReducerOutput,
    TokenReducer,
    check_budget,
    check_grid,
    gather_kept,
)

RESAMPLE_MODES = ("zero", "learned")


def standardize(scores: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit std over the visual tokens (dim 1); 0 where they are equal up to rounding
    (a spread below 1e-4 of the scores' size is not amplified)."""
    scores = scores.float()
    centred = scores - scores.mean(1, keepdim=True)
    spread = centred.pow(2).mean(1, keepdim=True).sqrt()
    floor = 1e-4 * scores.abs().amax(1, keepdim=True) + 1e-12
    return torch.where(spread > floor, centred / spread.clamp(min=1e-30), torch.zeros_like(centred))


def instruction_rows(query: torch.Tensor, query_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Only the instruction tokens of ``query [B, L, D]``, left-aligned and padded to the largest
    count: ``([B, Lq, D], mask [B, Lq])`` (a whole training sequence is long; its question is short)."""
    mask = query_mask.bool()
    count = mask.sum(1)
    order = torch.sort((~mask).to(torch.int8), dim=1, stable=True).indices[:, : max(int(count.max()), 1)]
    rows = query.gather(1, order.unsqueeze(-1).expand(-1, -1, query.shape[-1]))
    return rows, torch.arange(order.shape[1], device=query.device) < count.unsqueeze(1)


def split_last_linear(
    project: Callable[[torch.Tensor], torch.Tensor],
) -> tuple[Callable[[torch.Tensor], torch.Tensor], nn.Linear | None]:
    """``(head, last)`` with ``project(x) == last(head(x))`` when the projector ends in ``nn.Linear``;
    ``(project, None)`` otherwise."""
    if isinstance(project, nn.Linear):
        return nn.Identity(), project
    if isinstance(project, nn.Sequential) and len(project) and isinstance(project[-1], nn.Linear):
        return project[:-1], project[-1]
    return project, None


def instruction_dots(
    x: torch.Tensor, query: torch.Tensor, project: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """``[B, N, L]``: ``<project(x_i), q_j>`` up to a constant per ``j`` (see the module docstring)."""
    head, last = split_last_linear(project)
    weight = next(project.parameters(), None) if isinstance(project, nn.Module) else None
    hidden = head(x if weight is None else x.to(weight.dtype))
    pulled = query.to(last.weight.dtype) @ last.weight if last is not None else query  # [B, L, D_hidden]
    return hidden.float() @ pulled.float().transpose(1, 2)


def relevance(dots: torch.Tensor, query_mask: torch.Tensor) -> torch.Tensor:
    """``[B, N]``: max over instruction tokens of their standardised dot products ``dots [B, N, L]``
    with the visual tokens; 0 for an item without any instruction token."""
    ranked = standardize(dots).masked_fill(~query_mask.bool().unsqueeze(1), float("-inf"))
    best = ranked.max(-1).values
    return torch.where(torch.isfinite(best), best, torch.zeros_like(best))


def distinctiveness(x: torch.Tensor, grid: Grid) -> torch.Tensor:
    """``[B, N]``: 1 - cos(token, mean tower feature of its frame)."""
    t, h, w = grid
    frames = x.float().view(x.shape[0], t, h * w, -1)
    return (1.0 - F.cosine_similarity(frames, frames.mean(2, keepdim=True), dim=-1)).reshape(x.shape[0], -1)


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


def resample(
    x: torch.Tensor,
    scores: torch.Tensor,
    keep: int,
    metric: torch.Tensor | None = None,
    sizes: torch.Tensor | None = None,
) -> ReducerOutput:
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
    ``mode`` (``zero``: no parameters | ``learned``), ``relevance`` (its weight; 0 = instruction-blind),
    ``saliency`` (weight of distinctiveness), ``novelty`` (weight of temporal novelty), ``dim`` (the
    learned scorer's width; its input sizes are set by the model with ``bind``)."""

    needs_instruction = True
    calls_vary_per_rank = True  # what it calls depends on each rank's batch (the instructions it reads)

    def __init__(
        self,
        ratio: float | None = None,
        tokens: int | None = None,
        mode: str = "zero",
        novelty: float = 0.5,
        saliency: float = 1.0,
        relevance: float = 1.0,
        dim: int = 64,
        **common: Any,
    ):
        super().__init__(**common)
        check_budget(ratio, tokens)
        if mode not in RESAMPLE_MODES:
            raise ValueError(f"mode must be one of {', '.join(RESAMPLE_MODES)}, got {mode!r}")
        self.ratio, self.tokens, self.mode, self.dim = ratio, tokens, mode, int(dim)
        self.novelty, self.saliency, self.relevance = float(novelty), float(saliency), float(relevance)
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

    def score(
        self,
        x: torch.Tensor,
        grid: Grid,
        project: Callable[[torch.Tensor], torch.Tensor] | None,
        query: torch.Tensor | None,
        query_mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(selection scores ``[B, N]``, the learned part or None)."""
        b, n, _ = x.shape
        scores = torch.zeros(b, n, device=x.device)
        learned = None
        has_query = query is not None and query_mask is not None and bool(query_mask.any())
        if has_query and project is not None and self.relevance:
            rows, rows_mask = instruction_rows(query.detach(), query_mask)
            with torch.no_grad(), torch.autocast(x.device.type, enabled=False):  # scores in fp32, even under amp
                rel = relevance(instruction_dots(x.detach(), rows, project), rows_mask)
            scores = scores + self.relevance * standardize(rel)
        if self.saliency:
            scores = scores + self.saliency * standardize(distinctiveness(x.detach(), grid))
        if self.mode == "learned":  # computed even without an instruction (0 then): its weights are always used
            if self.visual_proj is None:
                raise RuntimeError("instruct_resample mode='learned' needs bind(visual_dim, query_dim) first")
            weight = self.visual_proj.weight
            if has_query:
                w = query_mask.to(weight.dtype).unsqueeze(-1)
                mean_q = (query.to(weight.dtype) * w).sum(1) / w.sum(1).clamp(min=1.0)
            else:
                mean_q = x.new_zeros(b, self.query_proj.in_features, dtype=weight.dtype)
            learned = (self.visual_proj(x.to(weight.dtype)) @ self.query_proj(mean_q).unsqueeze(-1)).squeeze(
                -1
            ) / self.dim**0.5
            scores = scores + learned.float()
        if self.novelty and grid[0] > 1:
            scores = scores + self.novelty * standardize(temporal_novelty(x.detach(), grid))
        return scores, learned

    def reduce(
        self,
        x: torch.Tensor,
        grid: Grid,
        metric: torch.Tensor | None = None,
        sizes: torch.Tensor | None = None,
        *,
        query: torch.Tensor | None = None,
        query_mask: torch.Tensor | None = None,
        project: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> ReducerOutput:
        scores, learned = self.score(x, grid, project, query, query_mask)
        if learned is None or not torch.is_grad_enabled():
            return resample(x, scores.detach(), self.output_len(grid), metric, sizes)
        # straight-through gate, 1 in value: on every token's weight in its group's average (a merged
        # token learns whether more of it would have helped, so a dropped needle can climb), and on
        # each kept token as a whole
        s = torch.sigmoid(learned.float())
        gate = (s - s.detach()) + 1.0  # exactly 1 in value (1 + s - s would round)
        weights = gate * (torch.ones_like(gate) if sizes is None else sizes.to(gate.dtype))
        out = resample(x, scores.detach(), self.output_len(grid), metric, weights)
        out.tokens = out.tokens * gate.gather(1, out.positions).unsqueeze(-1).to(out.tokens.dtype)
        return out
