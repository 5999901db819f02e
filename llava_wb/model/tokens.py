"""Placeholder tokens per media item: the one derivation of how many LLM tokens an image, a video
clip and an audio clip take.

Three small functions hold the arithmetic, and everything else calls them:

- ``image_tokens(grid, reducer, prefix)``: the kept prefix (CLS) + the reducer's ``output_len`` of
  the one-frame patch grid;
- ``video_tokens(frames, grid, reducer, separators)``: the reducer's ``output_len`` of the
  ``(frames, H, W)`` grid + one separator per time slice (``time_slices``);
- ``audio_tokens(tower_cls, config, tokens_per_second)``: what the audio tower class declares for a
  clip of its window (``AudioTower.clip_tokens``).

``media_token_counts(model_config)`` applies them to a ``ModelConfig`` from configs alone (the vision
tower's transformers config, reducers built from their options, the audio tower's config): no
weights are built, so the run checks (``llava_wb.train.checks``), the budget calculator
(``llava_wb.budget``) and a sequence packer get the numbers before any model exists. The built
model's ``tokens_per_image`` / ``tokens_per_video`` / ``tokens_per_audio`` call the same functions
with its own parts, and its ``media_tokens`` is what the loader expands placeholders to.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llava_wb.model.config import ModelConfig

Grid2 = tuple[int, int]


@dataclass(frozen=True)
class TokenCounts:
    """Placeholder tokens per image, per video clip and per audio clip (``None``: no audio tower),
    and the vision tower's input size (pixels per side)."""

    image: int
    video: int
    audio: int | None = None
    image_size: int = 0

    def as_dict(self) -> dict[str, int]:
        """``{"image": .., "video": .., "audio": ..}`` (no ``audio`` key without an audio tower), the
        form ``LlavaWBForCausalLM.media_tokens`` and the loader use."""
        tokens = {"image": self.image, "video": self.video}
        if self.audio is not None:
            tokens["audio"] = self.audio
        return tokens


def _get(cfg: Any, key: str) -> Any:
    return cfg[key] if isinstance(cfg, Mapping) else getattr(cfg, key)


def patch_grid(config: Any, strict: bool = False) -> Grid2:
    """Patch rows and columns of one image for a vision config (object or mapping with
    ``image_size`` and ``patch_size``); ``strict``: raise ``ValueError`` unless the patches tile it."""
    size, patch = int(_get(config, "image_size")), int(_get(config, "patch_size"))
    if strict and size % patch:
        raise ValueError(f"image_size {size} is not a multiple of patch_size {patch}")
    return (size // patch, size // patch)


def time_slices(frames: int, reducer: Any) -> tuple[int, int]:
    """``(frames per slice, number of slices)`` of a ``frames``-long clip for ``reducer``: a slice is
    the frames one temporal window of the reducer spans (1 for reducers without a window)."""
    window = getattr(reducer, "window", (1, 1, 1))
    st = max(1, min(int(window[0]), frames))
    return st, -(-frames // st)


def image_tokens(grid: Grid2, reducer: Any, prefix: int = 0) -> int:
    """LLM tokens per image: ``prefix`` kept tokens (CLS) + the reducer's output on the patch grid."""
    return int(prefix + reducer.output_len((1, *grid)))


def video_tokens(frames: int, grid: Grid2, reducer: Any, separators: bool) -> int:
    """LLM tokens per clip: the reducer's output on the ``(frames, H, W)`` grid + one separator per
    time slice when ``separators`` (patches only: no CLS token in a clip)."""
    return int(reducer.output_len((frames, *grid)) + (time_slices(frames, reducer)[1] if separators else 0))


def audio_tokens(tower_cls: Any, config: Any, tokens_per_second: float) -> int:
    """LLM tokens per audio clip, as the audio tower class declares it for ``config``."""
    return int(tower_cls.clip_tokens(config, tokens_per_second))


class TokenCountError(ValueError):
    """A model config whose token counts cannot be derived; ``field`` names the config field."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


def media_token_counts(model_config: ModelConfig) -> TokenCounts:
    """Token counts of ``model_config`` from configs only (a local checkpoint's ``config.json``, or
    the ``config`` overrides over the transformers defaults); no weights. Raises
    ``TokenCountError`` naming the field (``UnknownNameError`` for an unregistered name)."""
    from llava_wb.model.audio import AUDIO_TOWERS
    from llava_wb.model.reducers import build_reducer
    from llava_wb.model.towers import TOWERS

    m = model_config
    tower_cls = TOWERS.get(m.vision.type)
    vision = _read_config(tower_cls.model_class().config_class, m.vision.path, m.vision.config, "model.vision")
    try:
        grid = patch_grid(vision, strict=True)
    except ValueError as exc:
        raise TokenCountError("model.vision", str(exc)) from None
    if m.vision.select == "cls_patch" and not tower_cls.has_cls:
        raise TokenCountError("model.vision.select", f"{m.vision.type!r} has no CLS token; use 'patch'")
    prefix = 1 if m.vision.select == "cls_patch" else 0
    reducer = _reducer(build_reducer, m.reducer.type, m.reducer.options, "model.reducer")
    try:
        image = image_tokens(grid, reducer, prefix)
    except ValueError as exc:
        raise TokenCountError("model.reducer", f"{exc} (tower grid {grid[0]}x{grid[1]})") from None
    if m.video.reducer is not None:
        reducer = _reducer(build_reducer, m.video.reducer.type, m.video.reducer.options, "model.video.reducer")
    try:
        video = video_tokens(m.video.frames, grid, reducer, m.video.separators)
    except ValueError as exc:
        raise TokenCountError("model.video", f"{exc} (clip grid {m.video.frames}x{grid[0]}x{grid[1]})") from None
    audio = None
    if m.audio is not None:
        audio_cls = AUDIO_TOWERS.get(m.audio.type)
        config = _read_config(audio_cls.config_class(), m.audio.path, m.audio.config, "model.audio")
        try:
            audio = audio_tokens(audio_cls, config, m.audio.tokens_per_second)
        except ValueError as exc:
            raise TokenCountError("model.audio.tokens_per_second", str(exc)) from None
    return TokenCounts(image=image, video=video, audio=audio, image_size=int(_get(vision, "image_size")))


def _reducer(build: Any, name: str, options: dict[str, Any], field: str) -> Any:
    from llava_wb.registry import UnknownNameError

    try:
        return build(name, options)
    except UnknownNameError:
        raise
    except (TypeError, ValueError) as exc:
        raise TokenCountError(field, str(exc)) from None


def _read_config(config_cls: Any, path: str | None, overrides: dict[str, Any], field: str) -> Any:
    """A transformers config: ``overrides`` over the defaults, or a local checkpoint's config.json."""
    if path is None:
        try:
            return config_cls(**overrides)
        except (TypeError, ValueError) as exc:
            raise TokenCountError(f"{field}.config", str(exc)) from None
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise TokenCountError(f"{field}.path", f"{path!r} is not a local checkpoint folder (no config.json)")
    return config_cls.from_pretrained(path, local_files_only=True, **overrides)
