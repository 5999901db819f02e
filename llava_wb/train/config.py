"""Typed run configuration: ``RunConfig(model, data, train)`` from YAML plus dotted CLI overrides.

A run config is one YAML file with the sections ``model:`` (``llava_wb.model.config.ModelConfig``),
``data:`` (``llava_wb.data.config.DataConfig``), ``train:`` (``TrainConfig`` below) and an optional
top-level ``tokenizer:`` (a local tokenizer folder; default: the ``train.init_from`` bundle's
tokenizer, else ``model.llm.path``)::

    cfg = load_config("configs/demo.yaml", ["train.max_steps=20", "data.batch_size=4"])

Overrides are ``dotted.key=value``; values are parsed with ``yaml.safe_load`` (``3`` is an int,
``[a, b]`` a list, ``null`` is None). ``base: other.yaml`` at the top of a file inherits that file
(``read_yaml``). ``${VAR}`` / ``${VAR:-default}`` in string values expand from the environment
(the 7B recipes take their checkpoint paths this way). Unknown keys fail with ``ConfigError`` naming the dotted field. This module imports neither torch nor transformers; the
checks that need registries or checkpoint configs live in ``llava_wb.train.checks``.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from llava_wb.data.config import DataConfig
from llava_wb.model.config import ModelConfig

REPORT_TARGETS = ("tensorboard", "wandb", "none")
_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
# YAML 1.1 reads "1e-3" (no dot) as a string; config values that look like that are numbers.
_SCI_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


class ConfigError(ValueError):
    """A run config value is wrong; the message names the dotted field."""


@dataclass
class TrainableConfig:
    """Overrides of the stage's trainable parts; ``None`` keeps the stage's choice."""

    tower: bool | None = None
    projector: bool | None = None
    llm: bool | None = None


@dataclass
class LoraConfig:
    """LoRA adapters (peft) on the LLM's linear layers; the LLM's own weights then stay frozen."""

    enabled: bool = False
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


@dataclass
class WarmupConfig:
    """Stage ``tower_warmup`` (``llava_wb.train.warmup``): labels from each sample's ``meta.objects``.

    ``attributes``: object attribute -> its class names (per-patch heads, class 0 = background);
    ``cell_grid``: rows/cols of the objects' layout cells (per-patch row and column heads);
    ``max_objects``: count classes 1..max (per-image head); ``min_overlap``: fraction of a patch
    inside a bbox that makes it the object's; ``weights``: loss weight per head (default 1);
    ``eval_sources``: shard sources for held-out per-patch accuracy at the end."""

    attributes: dict[str, list[str]] = field(default_factory=dict)
    cell_grid: int = 2
    max_objects: int = 3
    min_overlap: float = 0.25
    weights: dict[str, float] = field(default_factory=dict)
    eval_sources: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not 0.0 < self.min_overlap <= 1.0:
            raise ConfigError(f"train.warmup.min_overlap must be in (0, 1], got {self.min_overlap!r}")
        for name in ("cell_grid", "max_objects"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) > 0):
                raise ConfigError(f"train.warmup.{name} must be a positive int, got {getattr(self, name)!r}")
        for name, classes in self.attributes.items():
            if name in ("row", "col", "count") or not classes or len(set(classes)) != len(classes):
                raise ConfigError(f"train.warmup.attributes.{name}: needs a non-empty list of distinct class "
                                  "names (and 'row', 'col', 'count' are taken)")


@dataclass
class TrainConfig:
    """How to train. Batch size per device is ``data.batch_size``; the global batch is
    ``data.batch_size x world_size x grad_accum`` (or set ``global_batch_size`` and let the world
    size decide ``grad_accum``). ``max_steps: null`` trains ``epochs`` passes of the data."""

    output_dir: str = "runs/train"
    stage: str = "finetune"
    trainable: TrainableConfig = field(default_factory=TrainableConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    warmup: WarmupConfig = field(default_factory=WarmupConfig)
    learning_rate: float = 2e-5
    projector_lr: float | None = None
    tower_lr: float | None = None
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    lr_scheduler_type: str = "cosine"
    max_steps: int | None = None
    epochs: float = 1.0
    grad_accum: int = 1
    global_batch_size: int | None = None
    max_grad_norm: float = 1.0
    bf16: bool | str = "auto"
    gradient_checkpointing: bool = False
    deepspeed: str | None = None
    logging_steps: int = 10
    save_steps: int = 500
    save_total_limit: int | None = 2
    seed: int = 0
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    run_name: str | None = None
    resume: bool = False
    init_from: str | None = None
    stop_after: int | None = None
    overwrite: bool = False
    log_sample_ids: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.trainable, dict):
            self.trainable = TrainableConfig(**_checked(self.trainable, TrainableConfig, "train.trainable"))
        if isinstance(self.lora, dict):
            self.lora = LoraConfig(**_checked(self.lora, LoraConfig, "train.lora"))
        if isinstance(self.warmup, dict):
            self.warmup = WarmupConfig(**_checked(self.warmup, WarmupConfig, "train.warmup"))
        if isinstance(self.report_to, str):
            self.report_to = [self.report_to]
        self.report_to = [t for t in self.report_to if t != "none"]
        for target in self.report_to:
            if target not in REPORT_TARGETS:
                raise ConfigError(f"train.report_to: unknown target {target!r}; known: {', '.join(REPORT_TARGETS)}")
        if self.bf16 not in (True, False, "auto"):
            raise ConfigError(f"train.bf16 must be true, false or 'auto', got {self.bf16!r}")
        positive = ["learning_rate", "grad_accum", "logging_steps", "save_steps", "epochs"]
        optional_positive = ["max_steps", "global_batch_size", "stop_after", "projector_lr", "tower_lr", "save_total_limit"]
        for name in positive + optional_positive:
            value = getattr(self, name)
            if (value is not None or name in positive) and not (isinstance(value, (int, float)) and value > 0):
                raise ConfigError(f"train.{name} must be a positive number, got {value!r}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(f"train.warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}")
        if self.global_batch_size is not None and self.grad_accum != 1:
            raise ConfigError("set train.global_batch_size or train.grad_accum, not both "
                              f"(got {self.global_batch_size} and {self.grad_accum})")
        if self.lora.enabled and (not self.lora.target_modules or self.lora.r <= 0):
            raise ConfigError("train.lora needs r > 0 and a non-empty target_modules list when enabled")
        if not self.output_dir:
            raise ConfigError("train.output_dir is empty")


@dataclass
class RunConfig:
    """Everything one training run needs."""

    model: ModelConfig
    data: DataConfig
    train: TrainConfig = field(default_factory=TrainConfig)
    tokenizer: str | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        """Build from plain data; unknown keys (at any depth of the typed sections) raise."""
        d = _checked(d, cls, "")
        for section in ("model", "data"):
            if section not in d:
                raise ConfigError(f"the config has no {section!r} section")
        try:
            model = ModelConfig.from_dict(d["model"])
            data = DataConfig.from_dict(d["data"])
            train = TrainConfig(**_checked(d.get("train") or {}, TrainConfig, "train"))
        except ConfigError:
            raise
        except (TypeError, ValueError) as exc:  # the sections' own errors already name the field
            raise ConfigError(str(exc)) from None
        tokenizer = d.get("tokenizer")
        if tokenizer is not None and not isinstance(tokenizer, str):
            raise ConfigError(f"tokenizer must be a folder path or null, got {tokenizer!r}")
        return cls(model=model, data=data, train=train, tokenizer=tokenizer)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (YAML-safe) that ``from_dict`` reads back."""
        return {"model": self.model.to_dict(), "data": _plain(self.data.to_dict()),
                "train": dataclasses.asdict(self.train), "tokenizer": self.tokenizer}

    def save(self, path: str | Path) -> Path:
        """Write the resolved config as YAML (``resolved_config.yaml`` in a run folder)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False), encoding="utf-8")
        return path


def load_config(path: str | Path | dict[str, Any], overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read a YAML config (or take a dict), apply ``dotted.key=value`` overrides, expand
    ``${VAR}`` and build the typed ``RunConfig``."""
    if isinstance(path, dict):
        raw = yaml.safe_load(yaml.safe_dump(path))  # deep copy through plain data
    else:
        raw = read_yaml(Path(path))
    for item in overrides:
        apply_override(raw, item)
    return RunConfig.from_dict(expand_env(raw))


def read_yaml(p: Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file as plain data. ``base: other.yaml`` (relative to the file) is read first and
    this file's values are merged over it: mappings merge key by key, anything else is replaced."""
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist" + (f" (base of {_seen[-1]})" if _seen else ""))
    raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of sections (model, data, train)")
    base = raw.pop("base", None)
    if base is None:
        return raw
    parent = (p.parent / str(base)).resolve()
    if parent in _seen or parent == p.resolve():
        raise ConfigError(f"{p}: base {base!r} makes a cycle")
    return _merge(read_yaml(parent, (*_seen, p.resolve())), raw)


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Set ``raw[a][b][c] = yaml(value)`` for ``item = "a.b.c=value"`` (list items by index)."""
    key, sep, text = item.partition("=")
    key = key.strip().lstrip("-")
    if not sep or not key:
        raise ConfigError(f"override {item!r} is not of the form dotted.key=value")
    value = yaml.safe_load(text) if text.strip() else None
    parts = key.split(".")
    node: Any = raw
    for i, part in enumerate(parts[:-1]):
        where = ".".join(parts[: i + 1])
        if isinstance(node, list):
            node = node[_index(part, node, where)]
            continue
        if part not in node or node[part] is None:
            node[part] = {}
        node = node[part]
        if not isinstance(node, (dict, list)):
            raise ConfigError(f"override {key!r}: {where} is a value, not a section")
    last = parts[-1]
    if isinstance(node, list):
        node[_index(last, node, key)] = value
    else:
        node[last] = value


def expand_env(value: Any, where: str = "") -> Any:
    """Replace ``${VAR}`` / ``${VAR:-default}`` in every string (a missing variable names its field)
    and read ``1e-3``-style strings as floats."""
    if isinstance(value, dict):
        return {k: expand_env(v, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, str) and _SCI_RE.match(value):
        return float(value)
    if not isinstance(value, str) or "${" not in value:
        return value

    def sub(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        raise ConfigError(f"{where}: environment variable {name} is not set (used in {value!r}); "
                          f"export it or override {where}=...")

    return _ENV_RE.sub(sub, value)


def _index(part: str, node: list[Any], where: str) -> int:
    if not part.lstrip("-").isdigit() or not -len(node) <= int(part) < len(node):
        raise ConfigError(f"override {where}: {part!r} is not an index of a list of {len(node)}")
    return int(part)


def _checked(d: Any, cls: type, where: str) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise ConfigError(f"{where or 'the config'} must be a mapping, got {type(d).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known, key=str)
    if unknown:
        names = ", ".join(f"{where}.{u}" if where else str(u) for u in unknown)
        raise ConfigError(f"unknown field(s) {names}; known: {', '.join(sorted(known))}")
    return d


def _plain(value: Any) -> Any:
    """Tuples to lists, so ``yaml.safe_dump`` writes plain YAML."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
