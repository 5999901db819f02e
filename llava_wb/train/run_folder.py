"""The run folder of one training run: refuse to mix runs, clear on overwrite, find where to resume.

``train.run`` (the LLM stages) and ``train.warmup`` (the tower warm-up) both start a run here, so
neither imports the other.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import yaml

from llava_wb.train import checkpoints as ckpt
from llava_wb.train.config import ConfigError, RunConfig

log = logging.getLogger("llava_wb.train")
RUN_FILES = (
    "metrics.jsonl",
    "result.json",
    "tensorboard",
    "sample_ids",
    "final",
    "final.partial",
    "warmup_heads.safetensors",
)
# Changing these between a run and its resumption keeps the continuation exact.
RESUME_FREE = {
    "train.resume",
    "train.stop_after",
    "train.overwrite",
    "train.logging_steps",
    "train.save_steps",
    "train.save_total_limit",
    "train.report_to",
    "train.run_name",
}


def _resume_point(cfg: RunConfig, out: Path) -> Path | None:
    t = cfg.train
    if t.resume:
        latest = ckpt.resume_checkpoint(out)  # verified against its marker; damaged newer ones are skipped
        if latest is None:
            log.warning("train.resume=true but %s holds no complete checkpoint: starting from scratch", out)
        elif (out / "resolved_config.yaml").is_file():
            changed = _changed_fields(yaml.safe_load((out / "resolved_config.yaml").read_text()), cfg.to_dict())
            changed = [c for c in changed if c not in RESUME_FREE]
            if changed:
                log.warning(
                    "resuming %s with a changed config (%s): the continuation is not exact", latest, ", ".join(changed)
                )
        return latest
    taken = ckpt.checkpoints(out, complete_only=False) or (out / "final").exists()
    if taken and not t.overwrite:
        raise ConfigError(
            f"train.output_dir {str(out)!r} already holds checkpoints or a final model: "
            "set train.resume=true to continue it or train.overwrite=true to start over"
        )
    return None


def prepare_run_folder(cfg: RunConfig) -> Path:
    """One-process run folder: refuse to mix with an earlier run unless ``train.overwrite``, then
    clear it (overwrite), create it and write ``resolved_config.yaml``."""
    out = Path(cfg.train.output_dir)
    _resume_point(cfg, out)  # raises when the folder holds a run and overwrite is off
    if cfg.train.overwrite:
        _clear_run_folder(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg.save(out / "resolved_config.yaml")
    return out


def _changed_fields(old: Any, new: Any, where: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new), key=str)
        return [c for k in keys for c in _changed_fields(old.get(k), new.get(k), f"{where}.{k}" if where else k)]
    return [] if old == new else [where]


def _clear_run_folder(out: Path) -> None:
    for path in ckpt.checkpoints(out, complete_only=False) + [out / name for name in RUN_FILES]:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
