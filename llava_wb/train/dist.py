"""Distributed helpers: DeepSpeed on CPU, barriers, a replica consistency check."""

from __future__ import annotations

import os
from typing import Any

from llava_wb.train.config import ConfigError


def init_deepspeed_on_cpu() -> None:
    """DeepSpeed without CUDA: accelerate finds no backend for it and silently runs one process per
    rank with no communication. Configure the distributed state with gloo first; the
    ``TrainingArguments`` then reuse it (``use_configured_state``)."""
    from accelerate import PartialState

    if int(os.environ.get("LOCAL_RANK", "-1")) == -1:
        raise ConfigError(
            "train.deepspeed on CPU needs a launcher (deepspeed or torchrun) that sets LOCAL_RANK, "
            "RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT"
        )
    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    try:
        PartialState(backend="gloo")
    finally:
        del os.environ["ACCELERATE_USE_DEEPSPEED"]


def replicas_in_sync(trainer: Any, model: Any) -> bool | None:
    """With several processes, check that every rank holds the same trainable weights (a run whose
    gradients were never synchronised fails here instead of silently training N models)."""
    import torch
    import torch.distributed as dist

    ds = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    if trainer.args.world_size == 1 or (ds is not None and ds.zero_stage == 3):
        return None
    with torch.no_grad():
        total = sum(
            p.detach().double().sum() + p.detach().double().abs().sum() for p in model.parameters() if p.requires_grad
        )
        sums = torch.tensor([float(total)], dtype=torch.float64, device=trainer.args.device)
        gathered = [torch.zeros_like(sums) for _ in range(trainer.args.world_size)]
        dist.all_gather(gathered, sums)
    values = [float(g) for g in gathered]
    if max(values) - min(values) > 1e-6 * max(1.0, abs(values[0])):
        raise RuntimeError(
            f"ranks hold different weights after training (checksums {values}): gradients were not synchronised"
        )
    return True


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
