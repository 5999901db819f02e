"""Training stages as data: which parts train, LoRA on the LLM, learning-rate groups.

A ``Stage`` says which of tower / projector / LLM train; ``STAGES`` holds the built-ins:

- ``pretrain``: projector only (LLaVA stage 1, feature alignment);
- ``finetune``: projector + LLM (LLaVA stage 2, visual instruction tuning);
- ``tower_warmup``: the vision tower alone on per-patch labels (``objective="patch_labels"``,
  ``llava_wb.train.warmup``), a stand-in for CLIP pretraining when no pretrained tower exists;
- ``audio_warmup``: the audio tower alone on per-token event labels (``objective="clip_labels"``,
  ``llava_wb.train.audio_warmup``), a stand-in for Whisper pretraining.

``train.trainable.{tower,projector,llm}`` override a stage's choice; when ``train.trainable.tower``
is unset the tower trains if the stage says so or ``model.vision.freeze`` is false. With
``train.lora.enabled`` a training LLM gets LoRA adapters (peft) and its own weights stay frozen;
``merge_lora`` folds them back before the final save. ``param_groups`` gives the optimizer one
group per part and decay class, so the projector and the tower can have their own learning rate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llava_wb.registry import Registry

if TYPE_CHECKING:
    from torch import nn

    from llava_wb.train.config import RunConfig, TrainConfig


@dataclass(frozen=True)
class Stage:
    """Which parts of the model train in this stage."""

    name: str
    tower: bool
    projector: bool
    llm: bool
    description: str = ""
    audio_tower: bool = False  # the audio tower trains alone (its warm-up); LM stages follow model.audio.freeze
    objective: str = "lm"  # "lm": next-token loss on answers; else a warm-up (WARMUP_OBJECTIVES)


STAGES: Registry[Stage] = Registry("training stage")
STAGES.register(
    "pretrain",
    Stage(
        "pretrain", tower=False, projector=True, llm=False, description="feature alignment: only the projector trains"
    ),
)
STAGES.register(
    "finetune",
    Stage("finetune", tower=False, projector=True, llm=True, description="instruction tuning: projector and LLM train"),
)
STAGES.register(
    "tower_warmup",
    Stage(
        "tower_warmup",
        tower=True,
        projector=False,
        llm=False,
        objective="patch_labels",
        description="supervised per-patch warm-up of the vision tower alone",
    ),
)

STAGES.register(
    "audio_warmup",
    Stage(
        "audio_warmup",
        tower=False,
        projector=False,
        llm=False,
        audio_tower=True,
        objective="clip_labels",
        description="supervised per-token warm-up of the audio tower alone",
    ),
)
# objective -> "module:function" that trains a warm-up stage (imported only when that stage runs)
WARMUP_OBJECTIVES = {
    "patch_labels": "llava_wb.train.warmup:train_tower",
    "clip_labels": "llava_wb.train.audio_warmup:train_audio_tower",
}

PART_PREFIXES = {
    "tower": ("vision_tower.",),
    "projector": ("projector.", "reducer.", "video_reducer_module.", "frame_separator.", "audio_projector."),
    "llm": ("language_model.",),
    "audio_tower": ("audio_tower.",),
}


def trainable_parts(cfg: RunConfig) -> dict[str, bool]:
    """``{"tower", "projector", "llm", "audio_tower"} -> bool`` from the stage, the overrides,
    ``model.vision.freeze`` and ``model.audio.freeze`` (the audio tower trains in every language-model
    stage unless frozen: there is no pretrained one to keep, as the demo shows)."""
    stage = STAGES.get(cfg.train.stage)
    over = cfg.train.trainable
    tower = over.tower if over.tower is not None else (stage.tower or not cfg.model.vision.freeze)
    return {
        "tower": tower,
        "projector": stage.projector if over.projector is None else over.projector,
        "llm": stage.llm if over.llm is None else over.llm,
        "audio_tower": cfg.model.audio is not None and not cfg.model.audio.freeze and stage.objective == "lm",
    }


def apply_stage(model: Any, cfg: RunConfig) -> dict[str, int]:
    """Set ``requires_grad`` for the stage (and add LoRA); returns trainable parameters per part."""
    from llava_wb.model import set_trainable

    parts = trainable_parts(cfg)
    lora = cfg.train.lora.enabled and parts["llm"]
    set_trainable(
        model,
        tower=parts["tower"],
        projector=parts["projector"],
        llm=parts["llm"] and not lora,
        audio=parts["audio_tower"],
    )
    if lora:
        add_lora(model, cfg.train)
    counts = {
        part: sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and n.startswith(prefixes))
        for part, prefixes in PART_PREFIXES.items()
    }
    if not any(counts.values()):
        raise ValueError(f"stage {cfg.train.stage!r} with train.trainable={parts} leaves nothing to train")
    return counts


def add_lora(model: Any, train: TrainConfig) -> None:
    """Wrap ``model.language_model`` with peft LoRA adapters (only the adapters train)."""
    from peft import LoraConfig, get_peft_model

    lc = train.lora
    config = LoraConfig(
        r=lc.r,
        lora_alpha=lc.alpha,
        lora_dropout=lc.dropout,
        target_modules=list(lc.target_modules),
        task_type="CAUSAL_LM",
    )
    try:
        model.language_model = get_peft_model(model.language_model, config)
    except ValueError as exc:
        raise ValueError(f"train.lora.target_modules {lc.target_modules}: {exc}") from None


def merge_lora(model: Any) -> bool:
    """Fold LoRA adapters into the LLM's weights (for the final save); True if there were any."""
    from peft import PeftModel

    if isinstance(model.language_model, PeftModel):
        model.language_model = model.language_model.merge_and_unload()
        return True
    return False


def part_of(name: str) -> str:
    """Which part (tower, projector, llm, audio_tower) a parameter name belongs to."""
    for part, prefixes in PART_PREFIXES.items():
        if name.startswith(prefixes):
            return part
    return "llm"


def param_groups(model: nn.Module, train: TrainConfig, decay_names: set[str] | list[str]) -> list[dict[str, Any]]:
    """Optimizer groups per part (learning rates ``learning_rate``, ``projector_lr``, ``tower_lr``
    for the vision and the audio tower)
    and decay class (no weight decay on biases and norms); empty groups are left out."""
    lrs = {
        "llm": train.learning_rate,
        "projector": train.projector_lr or train.learning_rate,
        "tower": train.tower_lr or train.learning_rate,
        "audio_tower": train.tower_lr or train.learning_rate,
    }
    decay = set(decay_names)
    groups: dict[tuple[str, bool], list[Any]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            groups.setdefault((part_of(name), name in decay), []).append(param)
    out = []
    for (part, decays), params in sorted(groups.items()):
        out.append(
            {
                "params": params,
                "lr": lrs[part],
                "weight_decay": train.weight_decay if decays else 0.0,
                "name": f"{part}" if decays else f"{part}_no_decay",
            }
        )
    return out


def build_scheduler(train: TrainConfig, optimizer: Any, steps: int) -> Any:
    """transformers' ``lr_scheduler_type`` schedule for ``steps`` steps: warm-up ``warmup_ratio``,
    the schedule's own kwargs from ``TrainConfig.scheduler_kwargs`` (the Trainer builds the same
    from its arguments; the warm-up loop and the config check build it here)."""
    import math

    from transformers import get_scheduler

    return get_scheduler(
        train.lr_scheduler_type,
        optimizer,
        num_warmup_steps=math.ceil(train.warmup_ratio * steps),
        num_training_steps=steps,
        scheduler_specific_kwargs=train.scheduler_kwargs(steps),
    )
