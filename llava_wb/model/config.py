"""Typed configuration of the model: vision tower, token reducer, projector, language model.

``ModelConfig.from_dict`` builds it from the ``model:`` section of a YAML config; the sections are
pydantic dataclasses (``llava_wb.validation``), so types are checked and unknown keys rejected
with a message naming the field (``unknown field(s) model.vision.feture_layer``) before any work
starts. This module imports neither torch nor transformers; names (tower, projector, reducer) are
checked against their registries by ``llava_wb.model.build.check_model_config``.

``path`` fields point at local checkpoint folders (never a hub id). ``config`` dicts are keyword
arguments of the transformers config class: the whole config when there is no ``path``, overrides
of the saved config when there is one. A saved model carries its ``ModelConfig`` as one field
(``LlavaWBConfig.model``, ``to_dict``).
"""

from __future__ import annotations

from dataclasses import field
from typing import Annotated, Any, Literal, get_args

from pydantic import Field, PositiveFloat, StrictBool, StrictInt

from llava_wb.validation import dump, parse, section

SelectStrategy = Literal["patch", "cls_patch"]
SELECT_STRATEGIES = get_args(SelectStrategy)
Name = Annotated[str, Field(min_length=1)]


class ModelConfigError(ValueError):
    """A model config value is wrong; the message names the field."""


@section
class VisionConfig:
    """The vision tower. ``feature_layer`` indexes the tower's hidden states (LLaVA: -2, the
    second-to-last layer); ``select`` is ``patch`` (drop CLS, LLaVA's default) or ``cls_patch``
    (keep CLS in front of the patches); ``freeze`` leaves the tower untrained."""

    type: Name = "clip"
    path: Name | None = None
    config: dict[str, Any] = field(default_factory=dict)
    feature_layer: StrictInt = -2
    select: SelectStrategy = "patch"
    freeze: StrictBool = True
    position_embeddings: StrictBool = True  # false: zeroed and frozen (a control for order-changing reducers)


@section
class ProjectorConfig:
    """Vision features -> LLM embeddings: ``mlp2x_gelu`` (LLaVA-1.5) or ``linear``."""

    type: Name = "mlp2x_gelu"
    options: dict[str, Any] = field(default_factory=dict)


@section
class ReducerConfig:
    """Token reducer between tower and projector (``identity`` keeps every patch)."""

    type: Name = "identity"
    options: dict[str, Any] = field(default_factory=dict)


@section
class VideoModelConfig:
    """How the model reads a video: ``frames`` per clip through the vision tower in one batched
    call (the data pipeline samples this many unless ``data.video.num_frames`` says otherwise, which
    must then agree); ``reducer`` cuts the clip's ``(frames, H, W)`` patch grid (null: the image
    reducer, whose window's time extent then applies, e.g. avgpool 2x2x2 is 2x2 on an image);
    ``separators`` puts one learned separator embedding after each time slice of the reducer's
    output (a slice = the frames one temporal window spans), so the LLM can tell frames apart."""

    frames: Annotated[StrictInt, Field(gt=0)] = 8
    reducer: ReducerConfig | None = None
    separators: StrictBool = True


@section
class AudioModelConfig:
    """The audio tower (registry ``AUDIO_TOWERS``; ``whisper``: a Whisper encoder from ``path`` or
    ``config``), its own projector, and ``tokens_per_second``: the encoder's 50 frames/s are
    average-pooled to this rate (it must divide 50). The tower's input window
    (``max_source_positions / 50`` seconds) fixes how long a clip the model hears."""

    type: Name = "whisper"
    path: Name | None = None
    config: dict[str, Any] = field(default_factory=dict)
    tokens_per_second: PositiveFloat = 25.0
    freeze: StrictBool = False
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)


@section
class LLMConfig:
    """The language model: any ``AutoModelForCausalLM``. Without ``path``, ``config`` needs a
    ``model_type`` (e.g. ``{"model_type": "llama", "hidden_size": 64, ...}``)."""

    path: Name | None = None
    config: dict[str, Any] = field(default_factory=dict)
    attn_implementation: str | None = "sdpa"

    def __post_init__(self) -> None:
        if self.path is None and not self.config.get("model_type"):
            raise ModelConfigError("model.llm needs a local checkpoint 'path' or a 'config' with a 'model_type'")
        if self.path is not None and "model_type" in self.config:
            raise ModelConfigError("model.llm.config.model_type cannot override the model type of model.llm.path")


@section(kw_only=True)
class ModelConfig:
    """The whole model. ``image_token``/``video_token``/``audio_token`` are the tokenizer's
    placeholders for one visual/video/audio token. ``audio`` null: no audio tower."""

    llm: LLMConfig
    vision: VisionConfig = field(default_factory=VisionConfig)
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    reducer: ReducerConfig = field(default_factory=ReducerConfig)
    video: VideoModelConfig = field(default_factory=VideoModelConfig)
    audio: AudioModelConfig | None = None
    image_token: Name = "<image>"
    video_token: Name = "<video>"
    audio_token: Name = "<audio>"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Build from plain data (a parsed YAML ``model:`` section); unknown keys raise."""
        return parse(cls, d, "model", ModelConfigError)

    def to_dict(self) -> dict[str, Any]:
        """Plain data that ``from_dict`` reads back."""
        return dump(self)
