"""What ``LlavaWBForCausalLM`` needs to compute packed rows (``llava_wb.data.packing``) exactly.

A packed row holds several samples; the collator marks them with ``position_ids`` that restart at 0
for every sample and passes no ``attention_mask``. transformers 5.x turns the restarts into a
block-diagonal causal mask (SDPA, eager, flex) or varlen boundaries (flash-attention 2), so the
LLM's own attention keeps samples apart; this module only

- refuses a model type or attention implementation that would not (``check_packing``);
- gives each token its sample's index in the row (``segment_ids``), so an instruction-aware
  reducer reads only its own sample's instruction (``restrict_to_sample``);
- for ``position_ids: original`` (image tokens numbered by their patch, so positions jump inside a
  sample and can no longer mark the boundaries) builds the block-diagonal causal mask from the
  segments as a 4D additive mask, which SDPA and eager take as given (``segment_mask``).
"""

from __future__ import annotations

import torch

from llava_wb.model.cpu_amp import SDPA_FP32

# LLM model types whose attention goes through transformers' ``create_causal_mask`` (restarting
# position ids -> block-diagonal mask); each is checked packed == padded in tests/test_packing_model.py.
PACKING_MODEL_TYPES = frozenset({"llama", "qwen2"})
PACKING_ATTENTION = frozenset({"sdpa", SDPA_FP32, "eager", "flex_attention", "flash_attention_2"})
SEGMENT_MASK_ATTENTION = frozenset({"sdpa", SDPA_FP32, "eager"})  # take a 4D additive mask as given


def check_packing(llm_config, original_positions: bool) -> None:
    """``ValueError`` naming what to change when the LLM cannot keep packed samples apart."""
    model_type = getattr(llm_config, "model_type", None)
    impl = getattr(llm_config, "_attn_implementation", None) or "eager"
    if model_type not in PACKING_MODEL_TYPES:
        raise ValueError(
            f"packed rows need an LLM whose attention isolates samples by restarting position_ids; "
            f"model type {model_type!r} is not one checked to do so ({sorted(PACKING_MODEL_TYPES)}): "
            "turn data.packing off"
        )
    allowed = SEGMENT_MASK_ATTENTION if original_positions else PACKING_ATTENTION
    if impl not in allowed:
        why = " with reducer position_ids 'original'" if original_positions else ""
        raise ValueError(
            f"packed rows{why} need attention implementation {sorted(allowed)}, the LLM uses {impl!r}: "
            "set model.llm.attn_implementation or turn data.packing off"
        )


def segment_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """``[R, L]`` index of each token's sample within its row (a new sample wherever positions restart at 0)."""
    return (position_ids == 0).long().cumsum(-1) - 1


def is_packed(position_ids: torch.Tensor) -> bool:
    """True when some row holds more than one sequence."""
    return bool((position_ids[:, 1:] == 0).any())


def restrict_to_sample(
    query_mask: torch.Tensor, segments: torch.Tensor, placeholders: torch.Tensor, per_item: int
) -> torch.Tensor:
    """Each item's ``query_mask`` row ``[N_items, L]`` cut to the sample its placeholders sit in.
    ``placeholders [R, L]``: the kind's placeholder mask (items in row-major order, ``per_item`` each)."""
    first = placeholders.reshape(-1).nonzero()[::per_item, 0]  # each item's first placeholder, flat
    row, col = first // placeholders.shape[1], first % placeholders.shape[1]
    own = segments[row] == segments[row, col].unsqueeze(1)
    return query_mask & own


def segment_mask(segments: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive causal mask ``[R, 1, L, L]`` (0 where a token may attend, the dtype's minimum
    elsewhere) that keeps every segment to itself."""
    length = segments.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=segments.device).tril()
    allowed = (segments.unsqueeze(2) == segments.unsqueeze(1)) & causal
    out = torch.zeros(allowed.shape, dtype=dtype, device=segments.device)
    return out.masked_fill_(~allowed, torch.finfo(dtype).min).unsqueeze(1)
