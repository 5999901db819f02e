"""The demo's training stages, tower warm-ups -> pretrain -> finetune, with every path passed explicitly.

``configs/demo_tower.yaml``, ``demo_audio.yaml``, ``demo_pretrain.yaml`` and ``demo.yaml`` name their inputs and outputs
under ``${DEMO_RUN:-runs/demo}``. A recipe never sets that variable: ``stage_overrides`` turns a
``ChainPaths`` (where the data is and where each stage writes) into dotted overrides for every one
of those paths, so one process can train several chains (the benchmarks do) without one chain's
folders leaking into the next. The demo runs each stage through ``notebooks/03_train.ipynb`` with
these overrides; the benchmarks train in process with ``train_stage``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"
# stage name -> its config; each stage starts from the previous one's output
STAGES = {
    "tower": "demo_tower.yaml",
    "audio": "demo_audio.yaml",
    "pretrain": "demo_pretrain.yaml",
    "finetune": "demo.yaml",
}
SPLITS = ("pretrain", "instruct", "heldout")


@dataclass(frozen=True)
class ChainPaths:
    """Where a chain reads (``data``: ``shards/<split>/`` and ``tokenizer/``) and where each stage writes
    (its run folder; the trained model in ``<folder>/final``). ``audio=None``: no audio warm-up, the
    later stages train a randomly initialised audio tower (what the demo did before it had one)."""

    data: Path
    tower: Path
    pretrain: Path
    train: Path
    audio: Path | None = None

    @classmethod
    def under(cls, run: str | Path, data: str | Path | None = None) -> ChainPaths:
        """The demo's layout: ``run/tower``, ``run/audio``, ``run/pretrain``, ``run/train``; data in ``data`` (default ``run``)."""
        run = Path(run).resolve()
        return cls(
            data=Path(data).resolve() if data is not None else run,
            tower=run / "tower",
            audio=run / "audio",
            pretrain=run / "pretrain",
            train=run / "train",
        )

    def shards(self, split: str) -> Path:
        return self.data / "shards" / split

    def output(self, stage: str) -> Path:
        """The run folder of ``stage``."""
        folder = {"tower": self.tower, "audio": self.audio, "pretrain": self.pretrain, "finetune": self.train}[
            _known(stage)
        ]
        if folder is None:
            raise ValueError(f"this chain has no {stage} stage (ChainPaths.{stage} is None)")
        return folder


def _known(stage: str) -> str:
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; the chain is {' -> '.join(STAGES)}")
    return stage


def _value(v: Any) -> str:
    """An override value that YAML reads back unchanged (JSON is YAML; a path may hold ':' or spaces)."""
    return json.dumps(str(v) if isinstance(v, Path) else v)


def config_path(stage: str) -> Path:
    return CONFIGS / STAGES[_known(stage)]


def stage_overrides(stage: str, paths: ChainPaths) -> list[str]:
    """Dotted overrides that set every path of ``stage``'s config from ``paths`` (the data sources keep
    their names, weights and templates from the config; only their paths change)."""
    common = [f"tokenizer={_value(paths.data / 'tokenizer')}", f"train.output_dir={_value(paths.output(stage))}"]
    if stage != "tower":  # every later stage reads the warmed-up vision tower (the audio one: its shape)
        common.append(f"model.vision.path={_value(paths.tower / 'final')}")
    if stage in ("tower", "audio"):  # sources: instruct, captions
        section = "warmup" if stage == "tower" else "audio_warmup"
        return common + [
            f"data.sources.0.path={_value(paths.shards('instruct'))}",
            f"data.sources.1.path={_value(paths.shards('pretrain'))}",
            f"train.{section}.eval_sources={_value([str(paths.shards('heldout'))])}",
        ]
    if paths.audio is None:  # a random audio tower that trains with the LLM
        common += ["model.audio.path=null", "model.audio.freeze=false"]
    else:
        common.append(f"model.audio.path={_value(paths.audio / 'final')}")
    if stage == "pretrain":  # sources: captions
        return common + [f"data.sources.0.path={_value(paths.shards('pretrain'))}"]
    return common + [
        f"data.sources.0.path={_value(paths.shards('instruct'))}",  # sources: instruct, captions
        f"data.sources.1.path={_value(paths.shards('pretrain'))}",
        f"train.init_from={_value(paths.pretrain)}",
    ]


def load_stage(stage: str, paths: ChainPaths, extra: Sequence[str] = ()):
    """The typed run config of ``stage`` (``extra`` overrides last)."""
    from llava_wb.train import load_config

    return load_config(config_path(stage), [*stage_overrides(stage, paths), *extra])


def train_stage(stage: str, paths: ChainPaths, extra: Sequence[str] = ()) -> dict[str, Any]:
    """Train ``stage`` in this process; returns ``llava_wb.train.train``'s summary."""
    from llava_wb.train import train

    return train(load_stage(stage, paths, extra))


def template() -> str:
    """The conversation template the finetuned model was tuned with (and is evaluated with)."""
    from llava_wb.train import load_config

    return load_config(config_path("finetune")).data.template


def save_untrained_tower(dest: str | Path, seed: int = 0) -> Path:
    """Stage 0's model shape (``demo_tower.yaml``'s CLIP vision config), randomly initialised and saved
    as a transformers folder at ``dest``: for timing and checks that need a tower but not a trained one."""
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from llava_wb.train import load_config

    vision = load_config(config_path("tower")).model.vision
    if vision.type != "clip":
        raise ValueError(
            f"{config_path('tower')}: model.vision.type is {vision.type!r}; this helper builds CLIP towers"
        )
    torch.manual_seed(seed)
    CLIPVisionModel(CLIPVisionConfig(**vision.config)).save_pretrained(dest)
    return Path(dest)
