"""Shared pieces of the synthetic data generator: palette, config, task registry, the shape renderer and small helpers.

``make_synthetic`` (driver, CLI, image and text tasks) and the modality plugins (``synth_av``: video
and audio) both import from here, so no plugin has to import the driver (no import cycle). Everything
is re-exported by ``make_synthetic``, so ``from data_tools.make_synthetic import COLOURS`` keeps working.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 90, 225),
    "yellow": (240, 205, 30),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
BACKGROUND = (200, 200, 200)
COUNT_WORDS: tuple[str, ...] = ("zero", "one", "two", "three")
ROW_NAMES = {2: ("top", "bottom"), 3: ("top", "middle", "bottom")}
COL_NAMES = {2: ("left", "right"), 3: ("left", "center", "right")}
IMAGE_FORMATS = {"png": "PNG", "jpg": "JPEG"}
SAVE_OPTIONS: dict[str, dict[str, int]] = {"png": {"compress_level": 1}, "jpg": {"quality": 95}}  # level 1: 2x faster
MIN_AUDIO_SECONDS = 1.6  # four 0.25 s beeps, three 0.15 s gaps and the margins must fit
MIN_VIDEO_SIZE = 32  # below this the moving shapes no longer fit without touching


# ----------------------------------------------------------------------------- config and registry
@dataclass(frozen=True)
class SynthConfig:
    """What a record depends on besides its split and index (validated on creation)."""

    seed: int = 0
    image_size: int = 64  # also the video frame side
    image_format: str = "png"
    grid: int = 2
    noise: int = 6  # amplitude of the gray pixel noise (images and video frames)
    mix: tuple[tuple[str, float], ...] = (("image", 0.95), ("text", 0.05))  # qa splits
    video_frames: int = 8
    video_fps: int = 8
    audio_seconds: float = 2.0

    def __post_init__(self) -> None:
        uses = {m for m, w in self.mix if w > 0}
        checks = [
            (self.seed >= 0, f"seed must be >= 0, got {self.seed}"),
            (
                self.image_format in IMAGE_FORMATS,
                f"image_format must be one of {sorted(IMAGE_FORMATS)}, got {self.image_format!r}",
            ),
            (self.grid in ROW_NAMES, f"grid must be one of {sorted(ROW_NAMES)}, got {self.grid}"),
            (
                self.image_size >= 8 * self.grid,
                f"image_size must be >= 8 * grid = {8 * self.grid}, got {self.image_size}",
            ),
            (0 <= self.noise <= 64, f"noise must be in [0, 64], got {self.noise}"),
            (
                isinstance(self.video_frames, (int, np.integer)) and 4 <= self.video_frames <= 64,
                f"video_frames must be an integer in [4, 64], got {self.video_frames!r}",
            ),
            (
                isinstance(self.video_fps, (int, np.integer)) and 1 <= self.video_fps <= 60,
                f"video_fps must be an integer in [1, 60], got {self.video_fps!r}",
            ),
            (
                MIN_AUDIO_SECONDS <= self.audio_seconds <= 30.0,
                f"audio_seconds must be in [{MIN_AUDIO_SECONDS}, 30] (four beeps with gaps need "
                f"{MIN_AUDIO_SECONDS} s), got {self.audio_seconds}",
            ),
            (
                "video" not in uses or self.image_size >= MIN_VIDEO_SIZE,
                f"video needs image_size >= {MIN_VIDEO_SIZE} (room for shapes to move), got {self.image_size}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


@dataclass(frozen=True)
class SampleContext:
    """Everything a task needs to build record ``index`` of ``split`` (its own seeded RNG included)."""

    split: str
    index: int
    style: str  # "caption" (pretrain) or "qa" (instruct / heldout)
    rng: np.random.Generator
    cfg: SynthConfig

    def media_path(self, folder: str, ext: str) -> str:
        """Path of this record's media file, relative to the media root."""
        return f"{folder}/{self.split}/{self.index:06d}.{ext}"


@dataclass
class Sample:
    """A generated record before writing: LLaVA fields, conversation, meta and media bytes."""

    conversations: list[dict[str, str]]
    meta: dict[str, Any]
    fields: dict[str, str] = field(default_factory=dict)  # e.g. {"image": "images/x/000001.png"}
    files: dict[str, bytes] = field(default_factory=dict)  # relative path -> bytes


@dataclass(frozen=True)
class TaskSpec:
    """One modality's generator: ``make(ctx)``, the styles it supports, its answers per qtype.

    ``describe(cfg)``, if given, goes to ``dataset_info.json`` under ``render.<modality>`` when the
    mix uses the modality (how its media are made: sizes, rates, rules behind the answers).
    """

    modality: str
    make: Callable[[SampleContext], Sample]
    styles: tuple[str, ...]
    vocab: Mapping[str, Sequence[str]]
    describe: Callable[[SynthConfig], dict[str, Any]] | None = None


TASKS: dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec) -> TaskSpec:
    """Add (or replace) the generator for ``spec.modality``."""
    TASKS[spec.modality] = spec
    return spec


# ----------------------------------------------------------------------------- helpers
def draw_shape(draw: ImageDraw.ImageDraw, shape: str, bbox: Sequence[int], fill: Any) -> None:
    """Draw a filled circle / square / triangle in ``bbox`` = ``[x0, y0, x1, y1]`` (exclusive ends)."""
    x0, y0, x1, y1 = bbox
    if shape == "circle":
        draw.ellipse([x0, y0, x1 - 1, y1 - 1], fill=fill)
    elif shape == "square":
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=fill)
    else:
        draw.polygon([((x0 + x1 - 1) / 2, y0), (x0, y1 - 1), (x1 - 1, y1 - 1)], fill=fill)


def render_image(
    objects: Sequence[Mapping[str, Any]], size: int, noise: int, rng: np.random.Generator, image_format: str
) -> bytes:
    """Draw the objects on a light-gray background with slight gray noise; return encoded bytes."""
    img = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(img)
    for o in objects:
        draw_shape(draw, o["shape"], o["bbox"], COLOURS[o["colour"]])
    if noise > 0:
        arr = np.asarray(img, dtype=np.int16) + rng.integers(-noise, noise + 1, size=(size, size, 1))
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    img.save(buf, format=IMAGE_FORMATS[image_format], **SAVE_OPTIONS[image_format])
    return buf.getvalue()


def pick_qtypes(
    rng: np.random.Generator,
    available: Sequence[str],
    max_turns: int = 3,
    weights: Mapping[str, float] | None = None,
) -> list[str]:
    """1..max_turns distinct question types from ``available``: uniformly, or drawn in proportion to
    ``weights`` (one per available type) without replacement."""
    k = min(int(rng.integers(1, max_turns + 1)), len(available))
    p = None
    if weights is not None:
        w = np.array([float(weights[t]) for t in available])
        p = w / w.sum()
    return [available[i] for i in rng.choice(len(available), size=k, replace=False, p=p)]


def _with_placeholder(text: str, tag: str, rng: np.random.Generator) -> str:
    """Put the placeholder before the text (usual) or after it (as LCS-558K sometimes does)."""
    return f"{tag}\n{text}" if rng.random() < 0.5 else f"{text}\n{tag}"


def _turns(pairs: Sequence[tuple[str, str]]) -> list[dict[str, str]]:
    return [turn for q, a in pairs for turn in ({"from": "human", "value": q}, {"from": "gpt", "value": a})]
