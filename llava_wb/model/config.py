"""Typed configuration of the model: vision tower, token reducer, projector, language model.

``ModelConfig.from_dict`` builds it from the ``model:`` section of a YAML config and rejects
unknown keys with a message naming the field (``unknown field(s) model.vision.feture_layer``), so
a typo fails before any work starts. This module imports neither torch nor transformers; names
(tower, projector, reducer) are checked against their registries by
``llava_wb.model.build.check_model_config``.

``path`` fields point at local checkpoint folders (never a hub id). ``config`` dicts are keyword
arguments of the transformers config class: the whole config when there is no ``path``, overrides
of the saved config when there is one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

SELECT_STRATEGIES = ("patch", "cls_patch")


class ModelConfigError(ValueError):
    """A model config value is wrong; the message names the field."""


@dataclass
class VisionConfig:
    """The vision tower. ``feature_layer`` indexes the tower's hidden states (LLaVA: -2, the
    second-to-last layer); ``select`` is ``patch`` (drop CLS, LLaVA's default) or ``cls_patch``
    (keep CLS in front of the patches); ``freeze`` leaves the tower untrained."""

    type: str = "clip"
    path: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    feature_layer: int = -2
    select: str = "patch"
    freeze: bool = True
    position_embeddings: bool = True  # false: zeroed and frozen (a control for order-changing reducers)

    def __post_init__(self) -> None:
        _check_common(self, "model.vision")
        if self.select not in SELECT_STRATEGIES:
            raise ModelConfigError(f"model.vision.select must be one of {', '.join(SELECT_STRATEGIES)}, got {self.select!r}")
        if not isinstance(self.feature_layer, int) or isinstance(self.feature_layer, bool):
            raise ModelConfigError(f"model.vision.feature_layer must be an int, got {self.feature_layer!r}")
        if not isinstance(self.freeze, bool):
            raise ModelConfigError(f"model.vision.freeze must be true or false, got {self.freeze!r}")


@dataclass
class ProjectorConfig:
    """Vision features -> LLM embeddings: ``mlp2x_gelu`` (LLaVA-1.5) or ``linear``."""

    type: str = "mlp2x_gelu"
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_name(self.type, "model.projector.type")
        _check_dict(self.options, "model.projector.options")


@dataclass
class ReducerConfig:
    """Token reducer between tower and projector (``identity`` keeps every patch)."""

    type: str = "identity"
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_name(self.type, "model.reducer.type")
        _check_dict(self.options, "model.reducer.options")


@dataclass
class VideoModelConfig:
    """How the model reads a video: ``frames`` per clip through the vision tower in one batched
    call (the data pipeline samples this many unless ``data.video.num_frames`` says otherwise, which
    must then agree); ``reducer`` cuts the clip's ``(frames, H, W)`` patch grid (null: the image
    reducer, whose window's time extent then applies, e.g. avgpool 2x2x2 is 2x2 on an image);
    ``separators`` puts one learned separator embedding after each time slice of the reducer's
    output (a slice = the frames one temporal window spans), so the LLM can tell frames apart."""

    frames: int = 8
    reducer: ReducerConfig | None = None
    separators: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.frames, int) or isinstance(self.frames, bool) or self.frames <= 0:
            raise ModelConfigError(f"model.video.frames must be a positive int, got {self.frames!r}")
        if isinstance(self.reducer, dict):
            self.reducer = ReducerConfig(**_checked(self.reducer, ReducerConfig, "model.video.reducer"))
        if not isinstance(self.separators, bool):
            raise ModelConfigError(f"model.video.separators must be true or false, got {self.separators!r}")


@dataclass
class AudioModelConfig:
    """The audio tower (registry ``AUDIO_TOWERS``; ``whisper``: a Whisper encoder from ``path`` or
    ``config``), its own projector, and ``tokens_per_second``: the encoder's 50 frames/s are
    average-pooled to this rate (it must divide 50). The tower's input window
    (``max_source_positions / 50`` seconds) fixes how long a clip the model hears."""

    type: str = "whisper"
    path: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    tokens_per_second: float = 25.0
    freeze: bool = False
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)

    def __post_init__(self) -> None:
        _check_common(self, "model.audio")
        if isinstance(self.projector, dict):
            self.projector = ProjectorConfig(**_checked(self.projector, ProjectorConfig, "model.audio.projector"))
        if not isinstance(self.tokens_per_second, (int, float)) or not self.tokens_per_second > 0:
            raise ModelConfigError(f"model.audio.tokens_per_second must be > 0, got {self.tokens_per_second!r}")
        if not isinstance(self.freeze, bool):
            raise ModelConfigError(f"model.audio.freeze must be true or false, got {self.freeze!r}")


@dataclass
class LLMConfig:
    """The language model: any ``AutoModelForCausalLM``. Without ``path``, ``config`` needs a
    ``model_type`` (e.g. ``{"model_type": "llama", "hidden_size": 64, ...}``)."""

    path: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    attn_implementation: str | None = "sdpa"

    def __post_init__(self) -> None:
        _check_dict(self.config, "model.llm.config")
        if self.path is not None and (not isinstance(self.path, str) or not self.path):
            raise ModelConfigError(f"model.llm.path must be a non-empty string or null, got {self.path!r}")
        if self.path is None and not self.config.get("model_type"):
            raise ModelConfigError("model.llm needs a local checkpoint 'path' or a 'config' with a 'model_type'")
        if self.path is not None and "model_type" in self.config:
            raise ModelConfigError("model.llm.config.model_type cannot override the model type of model.llm.path")


_SECTIONS: dict[str, type] = {
    "vision": VisionConfig,
    "projector": ProjectorConfig,
    "reducer": ReducerConfig,
    "llm": LLMConfig,
    "video": VideoModelConfig,
    "audio": AudioModelConfig,
}


@dataclass(kw_only=True)
class ModelConfig:
    """The whole model. ``image_token``/``video_token``/``audio_token`` are the tokenizer's
    placeholders for one visual/video/audio token. ``audio`` null: no audio tower."""

    llm: LLMConfig
    vision: VisionConfig = field(default_factory=VisionConfig)
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    reducer: ReducerConfig = field(default_factory=ReducerConfig)
    video: VideoModelConfig = field(default_factory=VideoModelConfig)
    audio: AudioModelConfig | None = None
    image_token: str = "<image>"
    video_token: str = "<video>"
    audio_token: str = "<audio>"

    def __post_init__(self) -> None:
        for name, cls in _SECTIONS.items():
            value = getattr(self, name)
            if value is None and name == "audio":
                continue
            if isinstance(value, dict):
                setattr(self, name, cls(**_checked(value, cls, f"model.{name}")))
            elif not isinstance(value, cls):
                raise ModelConfigError(f"model.{name} must be a mapping, got {type(value).__name__}")
        for name in ("image_token", "video_token", "audio_token"):
            _check_name(getattr(self, name), f"model.{name}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Build from plain data (a parsed YAML ``model:`` section); unknown keys raise."""
        d = dict(_checked(d, cls, "model"))
        if "llm" not in d:
            raise ModelConfigError("model.llm is required")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        """Plain data that ``from_dict`` reads back."""
        return dataclasses.asdict(self)


def _checked(d: Any, cls: type, where: str) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise ModelConfigError(f"{where} must be a mapping, got {type(d).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ModelConfigError(
            f"unknown field(s) {', '.join(where + '.' + str(u) for u in unknown)}; known: {', '.join(sorted(known))}"
        )
    return d


def _check_name(value: Any, where: str) -> None:
    if not isinstance(value, str) or not value:
        raise ModelConfigError(f"{where} must be a non-empty string, got {value!r}")


def _check_dict(value: Any, where: str) -> None:
    if not isinstance(value, dict):
        raise ModelConfigError(f"{where} must be a mapping, got {type(value).__name__}")


def _check_common(section: VisionConfig | AudioModelConfig, where: str) -> None:
    _check_name(section.type, f"{where}.type")
    _check_dict(section.config, f"{where}.config")
    if section.path is not None and (not isinstance(section.path, str) or not section.path):
        raise ModelConfigError(f"{where}.path must be a non-empty string or null, got {section.path!r}")
