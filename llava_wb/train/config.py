"""Typed run configuration: ``RunConfig(model, data, train)`` from YAML plus dotted CLI overrides.

A run config is one YAML file with the sections ``model:`` (``llava_wb.model.config.ModelConfig``),
``data:`` (``llava_wb.data.config.DataConfig``), ``train:`` (``TrainConfig`` below) and an optional
top-level ``tokenizer:`` (a local tokenizer folder; default: the ``train.init_from`` bundle's
tokenizer, else ``model.llm.path``)::

    cfg = load_config("configs/demo.yaml", ["train.max_steps=20", "data.batch_size=4"])

Two maintained libraries do the work. OmegaConf reads the YAML (YAML 1.1 with ``1e-3`` read as a
number), merges ``base: other.yaml`` (the file it inherits; mappings merge key by key, anything else
is replaced) and applies the ``dotted.key=value`` overrides (values parsed as YAML: ``3`` is an int,
``[a, b]`` a list, ``null`` is None; ``list.0.key`` indexes a list). The sections are pydantic
dataclasses (``llava_wb.validation``): types, bounds and unknown keys fail with ``ConfigError``
naming the dotted field. ``${VAR}`` / ``${VAR:-default}`` in string values expand from the
environment (the shell syntax the recipes use; the 7B recipes take their checkpoint paths this way).
This module imports neither torch nor transformers; the checks that need registries or checkpoint
configs live in ``llava_wb.train.checks``.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import (
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    StrictBool,
    field_validator,
)

from llava_wb.data.config import DataConfig
from llava_wb.model.config import ModelConfig
from llava_wb.validation import dump, parse, section

ReportTarget = Literal["tensorboard", "wandb", "none"]
_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(ValueError):
    """A run config value is wrong; the message names the dotted field."""


@section
class TrainableConfig:
    """Overrides of the stage's trainable parts; ``None`` keeps the stage's choice."""

    tower: bool | None = None
    projector: bool | None = None
    llm: bool | None = None


@section
class LoraConfig:
    """LoRA adapters (peft) on the LLM's linear layers; the LLM's own weights then stay frozen."""

    enabled: bool = False
    r: int = 8
    alpha: int = 16
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.05
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


@section
class WarmupConfig:
    """Stage ``tower_warmup`` (``llava_wb.train.warmup``): labels from each sample's ``meta.objects``.

    ``attributes``: object attribute -> its class names (per-patch heads, class 0 = background);
    ``cell_grid``: rows/cols of the objects' layout cells (per-patch row and column heads);
    ``max_objects``: count classes 1..max (per-image head); ``min_overlap``: fraction of a patch
    inside a bbox that makes it the object's; ``weights``: loss weight per head (default 1);
    ``eval_sources``: shard sources for held-out per-patch accuracy at the end."""

    attributes: dict[str, list[str]] = field(default_factory=dict)
    cell_grid: PositiveInt = 2
    max_objects: PositiveInt = 3
    min_overlap: Annotated[float, Field(gt=0.0, le=1.0)] = 0.25
    weights: dict[str, float] = field(default_factory=dict)
    eval_sources: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name, classes in self.attributes.items():
            if name in ("row", "col", "count") or not classes or len(set(classes)) != len(classes):
                raise ConfigError(
                    f"train.warmup.attributes.{name}: needs a non-empty list of distinct class "
                    "names (and 'row', 'col', 'count' are taken)"
                )


@section
class AudioWarmupConfig:
    """Stage ``audio_warmup`` (``llava_wb.train.audio_warmup``): labels from each clip's events in its
    json ``meta`` (as ``data_tools/synth_av.py`` writes it): ``onsets`` and ``durations`` in seconds and
    the clip's class under ``meta[attribute]``, one of ``classes``.

    Heads on the tower's output tokens: ``event`` per token (0 = none, else the clip's class where an
    event covers at least ``min_overlap`` of the token), ``onset`` per token (1 where an event starts)
    and ``count`` per clip (1..``max_events`` events); ``weights``: loss weight per head (default 1);
    ``eval_sources``: shard sources for held-out accuracy at the end."""

    attribute: Annotated[str, Field(min_length=1)] = "pitch"
    classes: list[str] = field(default_factory=list)
    max_events: PositiveInt = 4
    min_overlap: Annotated[float, Field(gt=0.0, le=1.0)] = 0.5
    weights: dict[str, float] = field(default_factory=dict)
    eval_sources: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(set(self.classes)) != len(self.classes):
            raise ConfigError(f"train.audio_warmup.classes: names must be distinct, got {self.classes}")


@section
class TrainConfig:
    """How to train. Batch size per device is ``data.batch_size``; the global batch is
    ``data.batch_size x world_size x grad_accum`` (or set ``global_batch_size`` and let the world
    size decide ``grad_accum``). ``max_steps: null`` trains ``epochs`` passes of the data."""

    output_dir: Annotated[str, Field(min_length=1)] = "runs/train"
    stage: str = "finetune"
    trainable: TrainableConfig = field(default_factory=TrainableConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    warmup: WarmupConfig = field(default_factory=WarmupConfig)
    audio_warmup: AudioWarmupConfig = field(default_factory=AudioWarmupConfig)
    learning_rate: PositiveFloat = 2e-5
    projector_lr: PositiveFloat | None = None
    tower_lr: PositiveFloat | None = None
    weight_decay: NonNegativeFloat = 0.0
    warmup_ratio: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.03
    lr_scheduler_type: str = "cosine"
    lr_scheduler_kwargs: dict[str, Any] = field(default_factory=dict)  # passed to transformers' scheduler
    decay_ratio: Annotated[float, Field(gt=0.0, le=1.0)] | None = None  # warmup_stable_decay: share of steps decaying
    max_steps: PositiveInt | None = None
    epochs: PositiveFloat = 1.0
    grad_accum: PositiveInt = 1
    global_batch_size: PositiveInt | None = None
    max_grad_norm: float = 1.0
    bf16: StrictBool | Literal["auto"] = "auto"  # auto: a bf16 GPU, or a CPU with AVX512-BF16/AMX (not DeepSpeed)
    gradient_checkpointing: bool = False
    feature_cache_mb: NonNegativeInt = 0  # frozen tower: keep seen images' features (model/feature_cache.py)
    feature_prefetch: bool = False  # fill that cache for the next batch in a thread while the step computes
    threads: PositiveInt | Literal["auto"] = "auto"  # torch threads; auto: cores per process less loader workers
    deepspeed: str | None = None
    logging_steps: PositiveInt = 10
    save_steps: PositiveInt = 500
    save_total_limit: PositiveInt | None = 2
    seed: int = 0
    report_to: list[ReportTarget] = field(default_factory=lambda: ["tensorboard"])
    run_name: str | None = None
    resume: bool = False
    init_from: str | None = None
    stop_after: PositiveInt | None = None
    overwrite: bool = False
    log_sample_ids: bool = False

    @field_validator("report_to", mode="before")
    @classmethod
    def _one_target(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    def scheduler_kwargs(self, steps: int) -> dict[str, Any]:
        """``lr_scheduler_kwargs`` for a run of ``steps`` steps: ``decay_ratio`` becomes
        warmup_stable_decay's ``num_decay_steps`` (so the schedule keeps its shape when
        ``max_steps`` is overridden)."""
        kwargs = dict(self.lr_scheduler_kwargs)
        if self.decay_ratio is not None:
            kwargs["num_decay_steps"] = math.ceil(self.decay_ratio * steps)
        return kwargs

    def __post_init__(self) -> None:
        self.report_to = [t for t in self.report_to if t != "none"]
        if self.decay_ratio is not None and (
            self.lr_scheduler_type != "warmup_stable_decay" or "num_decay_steps" in self.lr_scheduler_kwargs
        ):
            raise ConfigError(
                "train.decay_ratio sets warmup_stable_decay's num_decay_steps: it needs "
                f"lr_scheduler_type warmup_stable_decay (got {self.lr_scheduler_type!r}) and no "
                "lr_scheduler_kwargs.num_decay_steps"
            )
        if self.decay_ratio is not None and self.warmup_ratio + self.decay_ratio > 1:
            raise ConfigError(
                f"train.warmup_ratio + train.decay_ratio = {self.warmup_ratio + self.decay_ratio:g}: "
                "warm-up and decay would overlap (at most 1)"
            )
        if self.global_batch_size is not None and self.grad_accum != 1:
            raise ConfigError(
                "set train.global_batch_size or train.grad_accum, not both "
                f"(got {self.global_batch_size} and {self.grad_accum})"
            )
        if self.lora.enabled and (not self.lora.target_modules or self.lora.r <= 0):
            raise ConfigError("train.lora needs r > 0 and a non-empty target_modules list when enabled")


@section
class RunConfig:
    """Everything one training run needs."""

    model: ModelConfig
    data: DataConfig
    train: TrainConfig = field(default_factory=TrainConfig)
    tokenizer: str | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        """Build from plain data; unknown keys (at any depth of the typed sections) raise."""
        return parse(cls, d, "", ConfigError)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (YAML-safe) that ``from_dict`` reads back."""
        return dump(self)

    def save(self, path: str | Path) -> Path:
        """Write the resolved config as YAML (``resolved_config.yaml`` in a run folder)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False), encoding="utf-8")
        return path


def load_config(path: str | Path | dict[str, Any], overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read a YAML config (or take a dict), apply ``dotted.key=value`` overrides, expand
    ``${VAR}`` and build the typed ``RunConfig``."""
    raw = OmegaConf.create(path) if isinstance(path, dict) else OmegaConf.create(read_yaml(Path(path)))
    for item in overrides:
        apply_override(raw, item)
    return RunConfig.from_dict(expand_env(OmegaConf.to_container(raw, resolve=False)))


def read_yaml(p: Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file as plain data, merged over its ``base:`` file (relative to it) when it names one."""
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist" + (f" (base of {_seen[-1]})" if _seen else ""))
    raw = OmegaConf.load(p)
    if not isinstance(raw, DictConfig):
        raise ConfigError(f"{p}: the top level must be a mapping of sections (model, data, train)")
    base = raw.pop("base", None)
    if base is None:
        return OmegaConf.to_container(raw, resolve=False)
    parent = (p.parent / str(base)).resolve()
    if parent in _seen or parent == p.resolve():
        raise ConfigError(f"{p}: base {base!r} makes a cycle")
    try:
        merged = OmegaConf.merge(read_yaml(parent, (*_seen, p.resolve())), raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{p}: cannot merge over its base {base!r}: {exc}") from None
    return OmegaConf.to_container(merged, resolve=False)


def apply_override(raw: DictConfig, item: str) -> None:
    """Set ``a.b.c`` to the YAML value of ``item = "a.b.c=value"`` (``list.0`` indexes a list)."""
    key, sep, text = item.partition("=")
    key = key.strip().lstrip("-")
    if not sep or not key:
        raise ConfigError(f"override {item!r} is not of the form dotted.key=value")
    value = OmegaConf.from_dotlist([f"v={text}"])["v"] if text.strip() else None
    try:
        OmegaConf.update(raw, key, value, merge=False)
    except (OmegaConfBaseException, TypeError, ValueError) as exc:  # e.g. an index past a list's end
        raise ConfigError(f"override {key!r}: {str(exc).splitlines()[0]}") from None


def expand_env(value: Any, where: str = "") -> Any:
    """Replace ``${VAR}`` / ``${VAR:-default}`` in every string; a missing variable names its field."""
    if isinstance(value, dict):
        return {k: expand_env(v, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
    if isinstance(value, (list, ListConfig)):
        return [expand_env(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def sub(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        raise ConfigError(
            f"{where}: environment variable {name} is not set (used in {value!r}); export it or override {where}=..."
        )

    return _ENV_RE.sub(sub, value)
