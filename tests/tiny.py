"""Test helper: the tiny CLIP + LLaMA model used wherever a test needs a real (untrained) model."""

from __future__ import annotations

from typing import Any

TINY_VISION = dict(
    image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4
)
TINY_LLAMA = dict(
    model_type="llama",
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
)
# a Whisper encoder with a 2 s window (100 frames at 50/s): 20 tokens per clip at 10 tokens/s
TINY_WHISPER = dict(
    d_model=32,
    encoder_layers=1,
    encoder_attention_heads=2,
    encoder_ffn_dim=64,
    max_source_positions=100,
    num_mel_bins=80,
)


def tiny_model(tokenizer: Any, seed: int = 0) -> Any:
    """A randomly initialised 32x32-input model (16 visual tokens per image) for ``tokenizer``."""
    import torch

    from llava_wb.model import ModelConfig, build_model

    torch.manual_seed(seed)
    cfg = ModelConfig.from_dict(
        {"vision": {"type": "clip", "config": dict(TINY_VISION)}, "llm": {"config": dict(TINY_LLAMA)}}
    )
    return build_model(cfg, tokenizer).eval()
