"""Typed configuration of the streaming data pipeline (sources, image/video/audio preprocessing, batching).

``DataConfig.from_dict`` builds it from the ``data:`` section of a YAML config and rejects unknown
keys with a message naming the field, so a typo fails before any work starts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..constants import CLIP_MEAN, CLIP_STD  # noqa: F401  (re-exported)
from .errors import DataConfigError


@dataclass
class SourceConfig:
    """One shard source: a folder (uses its index.json when present), an index.json, a glob, a
    brace pattern (``shard-{000000..000009}.tar``), a list file (``.txt``/``.list``/``.shards``, one
    URL per line), or a URL (``pipe:CMD``, ``http(s)://``, ``gs://``, ``s3://``)."""

    path: str
    weight: float = 1.0
    name: str | None = None
    template: str | None = None  # conversation template for this source; None = data.template

    def __post_init__(self) -> None:
        if not self.path:
            raise DataConfigError("data.sources[].path is empty")
        if not self.weight > 0:
            raise DataConfigError(f"data.sources[{self.path!r}].weight must be > 0, got {self.weight}")


@dataclass
class ImageConfig:
    """How an image becomes a tensor: ``pad`` (LLaVA: expand to square with the mean colour, then
    resize) or ``resize`` (squash to square), then normalise with mean/std."""

    size: int = 336
    aspect: str = "pad"
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    resample: str = "bicubic"

    def __post_init__(self) -> None:
        if self.aspect not in ("pad", "resize"):
            raise DataConfigError(f"data.image.aspect must be 'pad' or 'resize', got {self.aspect!r}")
        if self.resample not in ("bicubic", "bilinear", "nearest"):
            raise DataConfigError(f"data.image.resample must be bicubic|bilinear|nearest, got {self.resample!r}")
        if self.size <= 0:
            raise DataConfigError(f"data.image.size must be positive, got {self.size}")
        self.mean = tuple(float(x) for x in self.mean)  # type: ignore[assignment]
        self.std = tuple(float(x) for x in self.std)  # type: ignore[assignment]


VIDEO_BACKENDS = ("decord", "pyav")


@dataclass
class VideoConfig:
    """How a video becomes frames: ``num_frames`` uniformly over the clip, or (``fps`` set) one
    frame every ``1/fps`` seconds from the start with ``num_frames`` as the upper bound (a longer
    clip falls back to uniform sampling; a shorter one repeats its last frame, so every clip gives
    exactly ``num_frames`` frames and a batch stays dense). Frames then go through ``data.image``.
    ``num_frames`` null: the model's frame count (``model.video.frames``), set by the trainer."""

    num_frames: int | None = None
    fps: float | None = None
    backend: str = "decord"

    def __post_init__(self) -> None:
        if self.num_frames is not None and self.num_frames <= 0:
            raise DataConfigError(f"data.video.num_frames must be positive, got {self.num_frames}")
        if self.fps is not None and not self.fps > 0:
            raise DataConfigError(f"data.video.fps must be > 0 or null, got {self.fps}")
        if self.backend not in VIDEO_BACKENDS:
            raise DataConfigError(f"data.video.backend must be one of {', '.join(VIDEO_BACKENDS)}, got {self.backend!r}")


@dataclass
class AudioConfig:
    """How audio becomes Whisper log-mel features: mixed to mono, resampled to ``sampling_rate``,
    cut or zero-padded to ``seconds`` (null: the audio tower's window, set by the trainer), then
    ``n_mels`` x ``100 * seconds`` features (10 ms hop)."""

    seconds: float | None = None
    sampling_rate: int = 16000
    n_mels: int = 80

    def __post_init__(self) -> None:
        if self.seconds is not None and not self.seconds > 0:
            raise DataConfigError(f"data.audio.seconds must be > 0 or null, got {self.seconds}")
        if self.sampling_rate <= 0 or self.n_mels <= 0:
            raise DataConfigError("data.audio.sampling_rate and data.audio.n_mels must be positive")


@dataclass
class MediaSettings:
    """What every media decoder receives: the image, video and audio settings of the run."""

    image: ImageConfig = field(default_factory=ImageConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)


@dataclass
class DataConfig:
    """Everything the loader needs. ``epoch_mode``:

    - ``balanced`` (training): every rank yields exactly ``batches_per_epoch`` batches per epoch
      (derived from index.json sample counts when not given); the stream continues across epochs,
      so a rank that runs dry early reads on into its next pass instead of hanging DDP.
    - ``exact`` (evaluation, round trips): one pass, every sample exactly once per epoch; ranks
      may yield different numbers of batches.
    """

    sources: list[SourceConfig] = field(default_factory=list)
    batch_size: int = 8
    num_workers: int = 2
    shuffle_shards: bool = True
    shuffle_buffer: int = 256
    seed: int = 0
    epoch_mode: str = "balanced"
    batches_per_epoch: int | None = None
    template: str = "vicuna_v1"
    max_length: int = 2048
    image: ImageConfig = field(default_factory=ImageConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    max_skip_rate: float = 0.05
    skip_check_min_samples: int = 200
    log_skips: int = 20
    prefetch_factor: int = 2

    def __post_init__(self) -> None:
        self.sources = [s if isinstance(s, SourceConfig) else SourceConfig(**_checked(s, SourceConfig, "data.sources[]"))
                        for s in self.sources]
        for name, cls in (("image", ImageConfig), ("video", VideoConfig), ("audio", AudioConfig)):
            if isinstance(getattr(self, name), dict):
                setattr(self, name, cls(**_checked(getattr(self, name), cls, f"data.{name}")))
        if self.epoch_mode not in ("balanced", "exact"):
            raise DataConfigError(f"data.epoch_mode must be 'balanced' or 'exact', got {self.epoch_mode!r}")
        for name in ("batch_size", "max_length"):
            if getattr(self, name) <= 0:
                raise DataConfigError(f"data.{name} must be positive, got {getattr(self, name)}")
        if self.num_workers < 0 or self.shuffle_buffer < 0:
            raise DataConfigError("data.num_workers and data.shuffle_buffer must be >= 0")
        if not 0.0 <= self.max_skip_rate <= 1.0:
            raise DataConfigError(f"data.max_skip_rate must be in [0, 1], got {self.max_skip_rate}")
        if self.batches_per_epoch is not None and self.batches_per_epoch <= 0:
            raise DataConfigError(f"data.batches_per_epoch must be positive, got {self.batches_per_epoch}")
        names = [s.name or s.path for s in self.sources]
        if len(set(names)) != len(names):
            raise DataConfigError(f"data.sources: names must be unique, got {names}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DataConfig":
        d = dict(_checked(d, cls, "data"))
        d["sources"] = [{"path": s} if isinstance(s, str) else s for s in d.get("sources", [])]
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def media(self) -> MediaSettings:
        return MediaSettings(self.image, self.video, self.audio)


def _checked(d: dict[str, Any], cls: type, where: str) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise DataConfigError(f"{where} must be a mapping, got {type(d).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise DataConfigError(f"unknown field(s) {', '.join(where + '.' + u for u in unknown)}; "
                              f"known: {', '.join(sorted(known))}")
    return d
