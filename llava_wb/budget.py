"""Token budget calculator: what a tower, a reducer and an LLM cost per sample, before any weights exist.

From the tower's config (resolution, patch size, width, depth), frames per sample, the reducer
(name + options, the same as ``model.reducer``) and the LLM's config, ``estimate`` gives:

- visual tokens per sample (``llava_wb.model.tokens``, the functions the model itself uses);
- sequence length (visual + text tokens);
- LLM FLOPs per sample: forward (``2 x matmul parameters x tokens`` + causal attention scores
  ``2 x layers x seq^2 x hidden`` + the LM head) and training (``3 x`` forward);
- KV-cache bytes per sample (``2 x layers x seq x kv_heads x head_dim x bytes``);
- vision tower FLOPs per sample (lower with ``placement: tower``: the last layers see fewer tokens);
  a clip of ``frames`` frames runs the tower once per frame, and its reducer cuts the ``(frames, H, W)``
  grid, plus one separator per time slice (``separators``, as ``model.video.separators``; a clip
  keeps no CLS token, as in the model);
- audio: ``audio_seconds`` of audio as whole clips of the audio tower's window, each pooled to
  ``tokens_per_second`` (``model.audio``), and the audio encoder's FLOPs.

``budget_table`` lays several reducers side by side; ``to_markdown`` prints it. The merge notebook
and ``benchmarks/bench_merge.py`` use these; the formulas are the usual dense-transformer counts
(no FlashAttention recomputation, no padding).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

# LLaVA-1.5-7B: CLIP ViT-L/14-336 (feature layer -2 = 23 of 24 layers) + Vicuna-7B.
CLIP_L14_336 = {
    "image_size": 336,
    "patch_size": 14,
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "feature_layer": -2,
}
WHISPER_LARGE_ENCODER = {
    "d_model": 1280,
    "encoder_layers": 32,
    "encoder_ffn_dim": 5120,
    "max_source_positions": 1500,
    "num_mel_bins": 128,
    "tokens_per_second": 25,
}
VICUNA_7B = {
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "vocab_size": 32000,
    "gated_mlp": True,
}


@dataclass
class Budget:
    """Per-sample costs of one configuration (see the module docstring)."""

    name: str
    visual_tokens: int
    text_tokens: int
    seq_len: int
    llm_flops_forward: float
    llm_flops_train: float
    kv_cache_bytes: int
    tower_flops_forward: float
    audio_tokens: int = 0
    audio_flops_forward: float = 0.0


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    return cfg.get(key, default) if isinstance(cfg, Mapping) else getattr(cfg, key, default)


class _Attrs:
    """A mapping read as attributes (what the audio tower classes take: a transformers config)."""

    def __init__(self, cfg: Any):
        self._cfg = cfg

    def __getattr__(self, key: str) -> Any:
        return _get(self._cfg, key)


def llm_forward_flops(cfg: Any, seq: int) -> float:
    """Forward FLOPs of a decoder LLM over ``seq`` tokens (causal attention counted once)."""
    h, layers = _get(cfg, "hidden_size"), _get(cfg, "num_hidden_layers")
    heads = _get(cfg, "num_attention_heads")
    kv = _get(cfg, "num_key_value_heads") or heads
    inter = _get(cfg, "intermediate_size") or 4 * h
    gated = _get(cfg, "gated_mlp", _get(cfg, "model_type", "llama") in ("llama", "mistral", "qwen2"))
    head_dim = h // heads
    attn_params = h * h * 2 + 2 * h * kv * head_dim  # q, o + k, v
    mlp_params = (3 if gated else 2) * h * inter
    matmul = 2 * seq * layers * (attn_params + mlp_params)
    scores = 2 * layers * seq * seq * h  # QK^T and AV, causal half of 2 x 2 x seq^2 x h
    head = 2 * seq * h * (_get(cfg, "vocab_size") or 32000)
    return float(matmul + scores + head)


def kv_cache_bytes(cfg: Any, seq: int, bytes_per_value: int = 2) -> int:
    h, layers, heads = _get(cfg, "hidden_size"), _get(cfg, "num_hidden_layers"), _get(cfg, "num_attention_heads")
    kv = _get(cfg, "num_key_value_heads") or heads
    return int(2 * layers * seq * kv * (h // heads) * bytes_per_value)


def tower_forward_flops(cfg: Any, tokens_per_layer: list[int]) -> float:
    """ViT forward FLOPs when layer ``i`` sees ``tokens_per_layer[i]`` tokens (full attention)."""
    h = _get(cfg, "hidden_size")
    inter = _get(cfg, "intermediate_size") or 4 * h
    return float(sum(2 * n * (4 * h * h + 2 * h * inter) + 4 * n * n * h for n in tokens_per_layer))


def audio_tower_flops(audio: Any) -> float:
    """Forward FLOPs of a Whisper-style encoder on one clip (conv stem + layers, full attention)."""
    d, n = _get(audio, "d_model"), _get(audio, "max_source_positions")
    stem = 2 * (2 * n) * _get(audio, "num_mel_bins", 80) * d * 3 + 2 * n * d * d * 3  # two k=3 convs
    return float(
        stem
        + _get(audio, "encoder_layers") * (2 * n * (4 * d * d + 2 * d * _get(audio, "encoder_ffn_dim")) + 4 * n * n * d)
    )


def estimate(
    name: str,
    tower: Any,
    llm: Any,
    reducer: str = "identity",
    options: Mapping[str, Any] | None = None,
    *,
    text_tokens: int = 128,
    frames: int = 1,
    images: int = 1,
    cls: bool = False,
    kv_bytes: int = 2,
    separators: bool = False,
    audio_seconds: float = 0.0,
    audio: Any = None,
) -> Budget:
    """The budget of one configuration; ``tower`` needs image/patch size, width, depth (and
    ``feature_layer``, default -2); ``cls`` counts a kept CLS token per image; ``images`` items of
    ``frames`` frames each; ``audio`` (an audio encoder config plus ``tokens_per_second`` and
    optionally its ``type``, default ``whisper``, e.g. ``WHISPER_LARGE_ENCODER``) with
    ``audio_seconds`` > 0 adds the audio tokens."""
    import math

    from llava_wb.model.reducers import build_reducer
    from llava_wb.model.tokens import image_tokens, video_tokens
    from llava_wb.model.towers import patch_grid

    grid = patch_grid(tower)
    red = build_reducer(reducer, dict(options or {}))
    if frames == 1:
        per_item = image_tokens(grid, red, prefix=int(cls))
    else:  # a clip: patches only (the model drops a CLS token from every frame)
        per_item = video_tokens(frames, grid, red, separators)
    visual = per_item * images
    layers = _get(tower, "num_hidden_layers")
    run = _get(tower, "feature_layer", -2) % (layers + 1)
    patches = grid[0] * grid[1] + 1  # per frame, + CLS (computed by the tower even when dropped)
    per_layer = [patches] * run
    if getattr(red, "placement", "after") == "tower" and frames == 1:
        merged = image_tokens(grid, red, prefix=1)  # + CLS, which the tower's layers always carry
        per_layer = [patches] * (run - red.layers) + [merged] * red.layers
    audio_tokens, audio_flops = 0, 0.0
    if audio is not None and audio_seconds > 0:
        from llava_wb.model.audio import AUDIO_TOWERS
        from llava_wb.model.tokens import audio_tokens as clip_tokens

        tower_cls = AUDIO_TOWERS.get(_get(audio, "type", "whisper"))
        window = tower_cls.frames_of(_Attrs(audio)) / tower_cls.frames_per_second
        clips = math.ceil(audio_seconds / window - 1e-9)
        audio_tokens = clips * clip_tokens(tower_cls, _Attrs(audio), _get(audio, "tokens_per_second", 25))
        audio_flops = clips * audio_tower_flops(audio)
    seq = visual + audio_tokens + text_tokens
    fwd = llm_forward_flops(llm, seq)
    return Budget(
        name=name,
        visual_tokens=visual,
        text_tokens=text_tokens,
        seq_len=seq,
        llm_flops_forward=fwd,
        llm_flops_train=3 * fwd,
        kv_cache_bytes=kv_cache_bytes(llm, seq, kv_bytes),
        tower_flops_forward=tower_forward_flops(tower, per_layer) * frames * images,
        audio_tokens=audio_tokens,
        audio_flops_forward=audio_flops,
    )


def budget_table(
    tower: Any, llm: Any, reducers: Mapping[str, tuple[str, Mapping[str, Any]]], **kw: Any
) -> list[Budget]:
    """``estimate`` for each ``name -> (reducer, options)``."""
    return [estimate(name, tower, llm, r, o, **kw) for name, (r, o) in reducers.items()]


TABLE_HEADERS = (
    "config",
    "visual tokens",
    "seq len",
    "LLM TFLOPs fwd",
    "LLM TFLOPs train",
    "x first",
    "KV cache MiB",
    "tower GFLOPs",
)


def table_rows(rows: list[Budget]) -> list[list[str]]:
    """Formatted cells under ``TABLE_HEADERS``, with training FLOPs as a ratio to the first row."""
    base = rows[0]
    return [
        [
            r.name,
            str(r.visual_tokens),
            str(r.seq_len),
            f"{r.llm_flops_forward / 1e12:.2f}",
            f"{r.llm_flops_train / 1e12:.2f}",
            f"{r.llm_flops_train / base.llm_flops_train:.2f}",
            f"{r.kv_cache_bytes / 2**20:.1f}",
            f"{r.tower_flops_forward / 1e9:.0f}",
        ]
        for r in rows
    ]


def to_markdown(rows: list[Budget]) -> str:
    """A table with ratios to the first row (the baseline)."""
    out = ["| " + " | ".join(TABLE_HEADERS) + " |", "|---|" + "---:|" * (len(TABLE_HEADERS) - 1)]
    return "\n".join(out + ["| " + " | ".join(cells) + " |" for cells in table_rows(rows)])


def as_dicts(rows: list[Budget]) -> list[dict[str, Any]]:
    return [asdict(r) for r in rows]
