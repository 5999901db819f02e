"""Checks of a ``RunConfig`` that run before any work: names, sizes, paths.

``check_run_config`` looks every name up in its registry (stage, vision tower, projector, token
reducer, conversation template), derives the placeholder tokens per image / clip from the configs
alone (``llava_wb.model.tokens.media_token_counts``, no weights), and fails with ``ConfigError``
naming the field:

- ``data.max_length`` must leave room for text after one image's ``tokens_per_image`` placeholders;
- ``data.image.size`` must be the tower's input size, or features and placeholders disagree;
- the paths it will read (tokenizer, ``init_from``, DeepSpeed config, checkpoints) must exist.

The built model's ``media_tokens`` come from the same functions; ``llava_wb.train.run`` asserts
that a ``train.init_from`` bundle agrees with the config.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llava_wb.registry import UnknownNameError
from llava_wb.train.config import ConfigError, RunConfig


@dataclass
class ConfigFacts:
    """What the checks derived: placeholder tokens per image / video / audio clip (the model derives
    the same numbers itself, and the trainer asserts they agree) and the tower's input size."""

    tokens_per_image: int
    image_size: int
    tokens_per_video: int = 0
    tokens_per_audio: int | None = None  # None: no audio tower

    @property
    def media_tokens(self) -> dict[str, int]:
        tokens = {"image": self.tokens_per_image, "video": self.tokens_per_video}
        if self.tokens_per_audio is not None:
            tokens["audio"] = self.tokens_per_audio
        return tokens


def check_run_config(cfg: RunConfig) -> ConfigFacts:
    """Raise ``ConfigError`` naming the field on the first problem; return the derived sizes."""
    from llava_wb.train.stages import STAGES

    _lookup(lambda: STAGES.get(cfg.train.stage), "train.stage")
    _check_names(cfg)
    facts = predict_visual_tokens(cfg)
    if cfg.data.max_length <= facts.tokens_per_image:
        raise ConfigError(
            f"data.max_length={cfg.data.max_length} leaves no room for text: one image alone takes "
            f"tokens_per_image={facts.tokens_per_image} placeholders (model.vision + model.reducer); "
            f"raise data.max_length or reduce the visual tokens (model.reducer)"
        )
    if cfg.data.image.size != facts.image_size:
        raise ConfigError(
            f"data.image.size={cfg.data.image.size} but the vision tower takes {facts.image_size}x{facts.image_size} "
            f"images (model.vision image_size): the features would not match the placeholders"
        )
    if cfg.train.feature_prefetch and not cfg.train.feature_cache_mb:
        raise ConfigError(
            "train.feature_prefetch fills the frozen tower's feature cache, but train.feature_cache_mb "
            "is 0: set it (e.g. 1024) or set train.feature_prefetch: false"
        )
    _check_zero3(cfg)
    if cfg.data.epoch_mode != "balanced":
        raise ConfigError(
            f"data.epoch_mode={cfg.data.epoch_mode!r}: training needs 'balanced' (every rank takes "
            "the same number of batches; 'exact' is for evaluation)"
        )
    if "wandb" in cfg.train.report_to:
        import importlib.util

        if importlib.util.find_spec("wandb") is None:
            raise ConfigError("train.report_to includes wandb but the wandb package is not installed")
    _check_paths(cfg)
    return facts


def _check_names(cfg: RunConfig) -> None:
    import llava_wb.data.templates  # noqa: F401  (registers the built-in templates)
    from llava_wb.data.conversation import TEMPLATES
    from llava_wb.model import PROJECTORS, TOWERS, build_projector, build_reducer

    m = cfg.model
    _lookup(lambda: TOWERS.get(m.vision.type), "model.vision.type")
    _lookup(lambda: PROJECTORS.get(m.projector.type), "model.projector.type")
    _lookup(lambda: build_reducer(m.reducer.type, m.reducer.options), "model.reducer")
    _lookup(lambda: build_projector(m.projector.type, 1, 1, m.projector.options), "model.projector.options")
    if m.video.reducer is not None:
        _lookup(lambda: build_reducer(m.video.reducer.type, m.video.reducer.options), "model.video.reducer")
    if m.audio is not None:
        from llava_wb.model.audio import AUDIO_TOWERS

        _lookup(lambda: AUDIO_TOWERS.get(m.audio.type), "model.audio.type")
    _lookup(lambda: TEMPLATES.get(cfg.data.template), "data.template")
    for i, source in enumerate(cfg.data.sources):
        if source.template is not None:
            _lookup(lambda name=source.template: TEMPLATES.get(name), f"data.sources[{i}].template")
    from transformers import SchedulerType

    known = [s.value for s in SchedulerType]
    if cfg.train.lr_scheduler_type not in known:
        raise ConfigError(
            f"train.lr_scheduler_type: unknown {cfg.train.lr_scheduler_type!r}; known: {', '.join(known)}"
        )
    _check_scheduler_kwargs(cfg.train)


def _check_scheduler_kwargs(t: Any) -> None:
    """Build the schedule once on a stand-in optimizer, so that a missing or unknown
    ``train.lr_scheduler_kwargs`` entry fails here, before the model and the data are built."""
    import torch

    from llava_wb.train.stages import build_scheduler

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=t.learning_rate)
    steps = t.max_steps or 100
    try:
        build_scheduler(t, opt, steps)
    except (TypeError, ValueError) as e:
        raise ConfigError(
            f"train.lr_scheduler_kwargs={t.scheduler_kwargs(steps)} do not fit "
            f"lr_scheduler_type {t.lr_scheduler_type!r}: {e}"
        ) from None


def _check_zero3(cfg: RunConfig) -> None:
    """ZeRO-3 gathers each module's weights at every call, on every rank in the same order: a part
    whose class says ``calls_vary_per_rank`` (an audio tower, an instruction-aware reducer) makes the
    call sequence depend on each rank's batch."""
    import json

    from llava_wb.model.audio import AUDIO_TOWERS
    from llava_wb.model.reducers import REDUCERS

    path = cfg.train.deepspeed
    if not path or not os.path.isfile(path):
        return
    with open(path, encoding="utf-8") as f:
        stage = (json.load(f).get("zero_optimization") or {}).get("stage")
    m = cfg.model
    parts = {"model.reducer": REDUCERS.get(m.reducer.type)}
    if m.video.reducer is not None:
        parts["model.video.reducer"] = REDUCERS.get(m.video.reducer.type)
    if m.audio is not None:
        parts["model.audio"] = AUDIO_TOWERS.get(m.audio.type)
    varying = [f"{field} ({cls.__name__})" for field, cls in parts.items() if cls.calls_vary_per_rank]
    if stage == 3 and cfg.train.feature_prefetch:
        raise ConfigError(
            f"train.deepspeed: {path} is ZeRO-3, whose partitioned weights the tower cannot run on "
            "outside DeepSpeed's forward, as train.feature_prefetch does; set train.feature_prefetch: false"
        )
    if stage == 3 and varying:
        raise ConfigError(
            f"train.deepspeed: {path} is ZeRO-3, which is not supported with {', '.join(varying)} "
            "yet (their module calls vary per rank); use ZeRO-2"
        )


def predict_visual_tokens(cfg: RunConfig) -> ConfigFacts:
    """Placeholder tokens per image / clip from the configs alone (``llava_wb.model.tokens``)."""
    from llava_wb.model.build import media_token_counts
    from llava_wb.model.tokens import TokenCountError

    try:
        counts = media_token_counts(cfg.model)
    except TokenCountError as exc:
        raise ConfigError(str(exc)) from None
    except UnknownNameError as exc:
        raise ConfigError(f"model: {exc}") from None
    return ConfigFacts(
        tokens_per_image=counts.image,
        image_size=counts.image_size,
        tokens_per_video=counts.video,
        tokens_per_audio=counts.audio,
    )


def _check_paths(cfg: RunConfig) -> None:
    t = cfg.train
    if t.deepspeed is not None and not Path(t.deepspeed).is_file():
        raise ConfigError(f"train.deepspeed: no DeepSpeed config file at {t.deepspeed!r}")
    if t.deepspeed is not None and "LOCAL_RANK" not in os.environ:
        raise ConfigError(
            "train.deepspeed needs a launcher: run under `deepspeed --num_gpus N --module llava_wb.train` "
            "or `torchrun --nproc_per_node N -m llava_wb.train` (they set RANK, LOCAL_RANK, WORLD_SIZE, "
            "MASTER_ADDR, MASTER_PORT)"
        )
    if t.init_from is not None:
        resolve_init_from(t.init_from)
    if (
        cfg.model.llm.path is not None
        and t.init_from is None
        and not (Path(cfg.model.llm.path) / "config.json").is_file()
    ):
        raise ConfigError(f"model.llm.path: {cfg.model.llm.path!r} is not a local checkpoint folder (no config.json)")
    if _warmup(cfg):
        return _check_warmup(cfg)
    tok = tokenizer_path(cfg)
    if tok is None:
        raise ConfigError(
            "tokenizer: give a tokenizer folder (top-level 'tokenizer:'), a model.llm.path or train.init_from"
        )
    if not Path(tok).is_dir():
        raise ConfigError(f"tokenizer: {tok!r} is not a folder")
    for i, source in enumerate(cfg.data.sources):
        local = source.path.split("://")[0] == source.path and not source.path.startswith("pipe:")
        if local and not any(ch in source.path for ch in "*?{") and not os.path.exists(source.path):
            raise ConfigError(f"data.sources[{i}].path: {source.path!r} does not exist")


def _warmup(cfg: RunConfig) -> bool:
    from llava_wb.train.stages import STAGES

    return STAGES.get(cfg.train.stage).objective != "lm"


def _check_warmup(cfg: RunConfig) -> None:
    from llava_wb.train.stages import STAGES

    t = cfg.train
    audio = STAGES.get(t.stage).objective == "clip_labels"  # the audio tower's warm-up, else the vision tower's
    section = "train.audio_warmup" if audio else "train.warmup"
    if audio and cfg.model.audio is None:
        raise ConfigError("model.audio: the audio_warmup stage trains the audio tower; the model has none")
    if audio and not t.audio_warmup.classes:
        raise ConfigError(
            "train.audio_warmup.classes: the audio_warmup stage needs the class names of "
            f"meta.{t.audio_warmup.attribute}, e.g. [low, high]"
        )
    if not audio and not t.warmup.attributes:
        raise ConfigError(
            "train.warmup.attributes: the tower_warmup stage needs at least one object attribute "
            "with its class names, e.g. {colour: [red, green], shape: [circle, square]}"
        )
    if t.max_steps is None:
        raise ConfigError(f"train.max_steps: the {t.stage} stage needs a step count")
    if t.bf16 is True:  # auto means fp32 here
        raise ConfigError(f"train.bf16: the {t.stage} stage trains in fp32 (its own loop); set it to auto or false")
    if t.init_from is not None or t.lora.enabled or t.deepspeed is not None:
        raise ConfigError(
            f"train.stage={t.stage} trains a bare tower: drop train.init_from, train.lora and train.deepspeed"
        )
    sources = t.audio_warmup.eval_sources if audio else t.warmup.eval_sources
    for i, path in enumerate(sources):
        if "://" not in path and not os.path.exists(path):
            raise ConfigError(f"{section}.eval_sources[{i}]: {path!r} does not exist")


def resolve_init_from(path: str) -> Path:
    """A stage-1 output: a bundle folder, or a run folder holding ``final/``."""
    p = Path(path)
    for candidate in (p, p / "final"):
        if (candidate / "config.json").is_file():
            return candidate
    raise ConfigError(f"train.init_from: {path!r} holds no saved model (no config.json in it or in its final/)")


def tokenizer_path(cfg: RunConfig) -> str | None:
    """The tokenizer folder: ``tokenizer``, else the ``init_from`` bundle, else ``model.llm.path``."""
    if cfg.tokenizer is not None:
        return cfg.tokenizer
    if cfg.train.init_from is not None:
        return str(resolve_init_from(cfg.train.init_from))
    return cfg.model.llm.path


def _lookup(fn: Any, where: str) -> Any:
    try:
        return fn()
    except UnknownNameError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None
