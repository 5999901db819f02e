"""Placeholder tokens per media item: the one derivation of how many LLM tokens an image, a video
clip and an audio clip take.

Three small functions hold the arithmetic, and everything else calls them:

- ``image_tokens(grid, reducer, prefix)``: the kept prefix (CLS) + the reducer's ``output_len`` of
  the one-frame patch grid;
- ``video_tokens(frames, grid, reducer, separators)``: the reducer's ``output_len`` of the
  ``(frames, H, W)`` grid + one separator per time slice (``time_slices``);
- ``audio_tokens(tower_cls, config, tokens_per_second)``: what the audio tower class declares for a
  clip of its window (``AudioTower.clip_tokens``).

``llava_wb.model.build.media_token_counts(model_config)`` applies them to a ``ModelConfig`` from
configs alone (the vision tower's transformers config, reducers built from their options, the audio
tower's config): no weights are built, so the run checks (``llava_wb.train.checks``), the budget calculator
(``llava_wb.budget``) and a sequence packer get the numbers before any model exists. The built
model's ``tokens_per_image`` / ``tokens_per_video`` / ``tokens_per_audio`` call the same functions
with its own parts, and its ``media_tokens`` is what the loader expands placeholders to.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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
