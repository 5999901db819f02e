"""Typed configuration of the streaming data pipeline (sources, image/video/audio preprocessing, batching).

``DataConfig.from_dict`` builds it from the ``data:`` section of a YAML config; the sections are
pydantic dataclasses (``llava_wb.validation``), so types and bounds are checked and unknown keys
rejected with a message naming the field, and a typo fails before any work starts.
"""

from __future__ import annotations

from dataclasses import field
from typing import Annotated, Any, Literal, get_args

from pydantic import Field, NonNegativeInt, PositiveFloat, PositiveInt, field_validator

from llava_wb.validation import dump, parse, section

from ..constants import CLIP_MEAN, CLIP_STD  # noqa: F401  (re-exported)
from .errors import DataConfigError


@section
class SourceConfig:
    """One shard source: a folder (uses its index.json when present), an index.json, a glob, a
    brace pattern (``shard-{000000..000009}.tar``), a list file (``.txt``/``.list``/``.shards``, one
    URL per line), or a URL (``pipe:CMD``, ``http(s)://``, ``gs://``, ``s3://``)."""

    path: Annotated[str, Field(min_length=1)]
    weight: PositiveFloat = 1.0
    name: str | None = None
    template: str | None = None  # conversation template for this source; None = data.template


@section
class ImageConfig:
    """How an image becomes a tensor: ``pad`` (LLaVA: expand to square with the mean colour, then
    resize) or ``resize`` (squash to square), then normalise with mean/std.

    ``pixels``: ``float32`` (default): decoders return normalised float32 ``[3, S, S]`` (video
    frames ``[T, 3, S, S]``). ``uint8``: decoders return uint8 ``[3, S, S]`` (frames
    ``[T, 3, S, S]``) un-normalised, a quarter of the bytes to batch and ship between processes;
    normalise with ``llava_wb.data.image.normalise_pixels`` (or ``normalise_batch``) on the device.
    The training loader uses ``uint8``; evaluation, export and the viz keep ``float32``."""

    size: PositiveInt = 336
    aspect: Literal["pad", "resize"] = "pad"
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    resample: Literal["bicubic", "bilinear", "nearest"] = "bicubic"
    pixels: Literal["float32", "uint8"] = "float32"


VideoBackend = Literal["decord", "pyav"]
VIDEO_BACKENDS = get_args(VideoBackend)


@section
class VideoConfig:
    """How a video becomes frames: ``num_frames`` uniformly over the clip, or (``fps`` set) one
    frame every ``1/fps`` seconds from the start with ``num_frames`` as the upper bound (a longer
    clip falls back to uniform sampling; a shorter one repeats its last frame, so every clip gives
    exactly ``num_frames`` frames and a batch stays dense). Frames then go through ``data.image``.
    ``num_frames`` null: the model's frame count (``model.video.frames``), set by the trainer."""

    num_frames: PositiveInt | None = None
    fps: PositiveFloat | None = None
    backend: VideoBackend = "decord"


@section
class AudioConfig:
    """How audio becomes Whisper log-mel features: mixed to mono, resampled to ``sampling_rate``,
    cut or zero-padded to ``seconds`` (null: the audio tower's window, set by the trainer), then
    ``n_mels`` x ``100 * seconds`` features (10 ms hop)."""

    seconds: PositiveFloat | None = None
    sampling_rate: PositiveInt = 16000
    n_mels: PositiveInt = 80


@section
class MediaSettings:
    """What every media decoder receives: the image, video and audio settings of the run."""

    image: ImageConfig = field(default_factory=ImageConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)


@section
class PackingConfig:
    """Sequence packing (``llava_wb.data.packing``): each batch is ``data.batch_size`` rows of at most
    ``max_tokens`` LLM positions, filled from a pool of ``buffer`` tokenized samples, ``best_fit``
    (largest pending sample that fits, one after another), ``first_fit`` (arrival order) or ``max_fill``
    (the pending samples that fill the row the most: fewest padding positions, docs/packing.md).
    ``max_tokens`` must be at least ``data.max_length`` so every sample fits in a row."""

    max_tokens: PositiveInt = 2048
    buffer: PositiveInt = 256
    strategy: Literal["best_fit", "first_fit", "max_fill"] = "best_fit"


@section
class DataConfig:
    """Everything the loader needs. ``epoch_mode``:

    - ``balanced`` (training): every rank yields exactly ``batches_per_epoch`` batches per epoch
      (derived from index.json sample counts when not given); the stream continues across epochs,
      so a rank that runs dry early reads on into its next pass instead of hanging DDP.
    - ``exact`` (evaluation, round trips): one pass, every sample exactly once per epoch; ranks
      may yield different numbers of batches.

    ``packing`` (null: off) packs several samples into each row (``PackingConfig``); ``batch_size``
    then counts rows, and ``epoch_mode: balanced`` needs ``batches_per_epoch`` for an epoch length
    (else the stream never ends an epoch and ``train.max_steps`` decides).
    """

    sources: list[SourceConfig] = field(default_factory=list)
    batch_size: PositiveInt = 8
    num_workers: NonNegativeInt = 2
    shuffle_shards: bool = True
    shuffle_buffer: NonNegativeInt = 256
    seed: int = 0
    epoch_mode: Literal["balanced", "exact"] = "balanced"
    batches_per_epoch: PositiveInt | None = None
    template: str = "vicuna_v1"
    max_length: PositiveInt = 2048
    image: ImageConfig = field(default_factory=ImageConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    max_skip_rate: Annotated[float, Field(ge=0.0, le=1.0)] = 0.05
    skip_check_min_samples: int = 200
    log_skips: int = 20
    prefetch_factor: int = 2
    packing: PackingConfig | None = None

    @field_validator("sources", mode="before")
    @classmethod
    def _paths_as_sources(cls, sources: Any) -> Any:
        """A bare string in ``sources`` is ``{path: that string}``."""
        return [{"path": s} if isinstance(s, str) else s for s in sources] if isinstance(sources, list) else sources

    def __post_init__(self) -> None:
        names = [s.name or s.path for s in self.sources]
        if len(set(names)) != len(names):
            raise DataConfigError(f"data.sources: names must be unique, got {names}")
        if self.packing is not None and self.packing.max_tokens < self.max_length:
            raise DataConfigError(
                f"data.packing.max_tokens ({self.packing.max_tokens}) is below data.max_length "
                f"({self.max_length}): a sample of max_length tokens would fit in no row"
            )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataConfig:
        return parse(cls, d, "data", DataConfigError)

    def to_dict(self) -> dict[str, Any]:
        return dump(self)

    @property
    def media(self) -> MediaSettings:
        return MediaSettings(self.image, self.video, self.audio)
