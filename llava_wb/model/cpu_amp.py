"""bf16 mixed precision on the CPU without torch's slow bf16 attention: the ``sdpa_fp32`` attention.

Under ``torch.autocast("cpu", torch.bfloat16)`` (``train.bf16`` on a CPU) linear layers run in bf16,
2.2x faster than fp32 on a CPU with AVX512-BF16 (the demo's shapes, one core), but torch's CPU
flash-attention kernel is slower in bf16 than in fp32: forward + backward of the demo's attention
(11 rows x 96 positions, 8 heads of 16) takes 20.9 ms in bf16 against 6.2 ms in fp32, and the whole
stage-2 step came out 50% slower than fp32 (docs/packing.md, "bf16 autocast on the CPU").

``sdpa_fp32`` is transformers' own SDPA function with query, key and value cast to fp32 while CPU
autocast is on (anywhere else it is ``sdpa`` unchanged); its output goes on into the bf16 output
projection. It is registered in transformers' ``AttentionInterface`` with SDPA's mask function
(``AttentionMaskInterface``: an implementation without one would get no causal mask at all), so
padding, packed rows and 4D masks behave exactly as with ``sdpa``. It is a runtime setting, like the
attention implementation itself, never written to a saved config.json.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

SDPA_FP32 = "sdpa_fp32"
# x86 instruction sets with bf16 dot products: where bf16 matmuls beat fp32 (without them torch emulates bf16)
NATIVE_BF16 = ("avx512_bf16", "amx_bf16")


def cpu_has_native_bf16() -> bool:
    """True when this CPU computes bf16 matmuls natively (``NATIVE_BF16``; ARM's bf16 is unmeasured, so no)."""
    caps = torch.cpu.get_capabilities()
    return any(caps.get(name) for name in NATIVE_BF16)


def sdpa_fp32_forward(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *args, **kwargs):
    """``sdpa_attention_forward`` with fp32 query, key and value under CPU autocast."""
    if query.device.type != "cpu" or not torch.is_autocast_enabled("cpu"):
        return sdpa_attention_forward(module, query, key, value, *args, **kwargs)
    with torch.autocast("cpu", enabled=False):
        return sdpa_attention_forward(module, query.float(), key.float(), value.float(), *args, **kwargs)


AttentionInterface.register(SDPA_FP32, sdpa_fp32_forward)
AttentionMaskInterface.register(SDPA_FP32, sdpa_mask)


def use_fp32_attention(model: torch.nn.Module) -> list[str]:
    """Switch every sub-model of ``model`` that attends with ``sdpa`` to ``sdpa_fp32``; returns their
    class names (the others keep theirs: eager, flex and flash-attention have no such bf16 penalty here)."""
    switched = []
    for sub in model.modules():
        if isinstance(sub, PreTrainedModel) and sub.config._attn_implementation == "sdpa":
            sub.config._attn_implementation_internal = SDPA_FP32  # this config only (the setter recurses)
            switched.append(type(sub).__name__)
    return switched
