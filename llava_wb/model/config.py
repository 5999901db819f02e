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
}


@dataclass(kw_only=True)
class ModelConfig:
    """The whole model. ``image_token`` is the tokenizer's placeholder for one image token."""

    llm: LLMConfig
    vision: VisionConfig = field(default_factory=VisionConfig)
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    reducer: ReducerConfig = field(default_factory=ReducerConfig)
    image_token: str = "<image>"

    def __post_init__(self) -> None:
        for name, cls in _SECTIONS.items():
            value = getattr(self, name)
            if isinstance(value, dict):
                setattr(self, name, cls(**_checked(value, cls, f"model.{name}")))
            elif not isinstance(value, cls):
                raise ModelConfigError(f"model.{name} must be a mapping, got {type(value).__name__}")
        _check_name(self.image_token, "model.image_token")

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


def _check_common(section: VisionConfig, where: str) -> None:
    _check_name(section.type, f"{where}.type")
    _check_dict(section.config, f"{where}.config")
    if section.path is not None and (not isinstance(section.path, str) or not section.path):
        raise ModelConfigError(f"{where}.path must be a non-empty string or null, got {section.path!r}")
