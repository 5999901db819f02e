"""Distributed and process helpers: DeepSpeed on CPU, barriers, a replica consistency check, the
main process's torch threads."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
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
    unlink_shm_buffer()


SHM_BUFFER = "/dev/shm/deepspeed_allreduce_buffer_{uid}_{addr}_{port}_{rank}"


def unlink_shm_buffer() -> None:
    """Remove this rank's name of DeepSpeed's CPU shm allreduce buffer once every rank has mapped it.

    DeepSpeed's CPU communication op (``deepspeed/ops/csrc/cpu/comm/shm.cpp``) creates ``SHM_BUFFER``
    (about 66 MB) per rank and never unlinks it, so every CPU DeepSpeed run left its buffers in
    ``/dev/shm``: 18 GB after this repository's test runs, until the machine ran out of memory. Each
    rank opens every other rank's buffer inside ``init_distributed``; after a barrier all of them
    have, and the name can go (the mappings, and the memory, live on until the processes exit)."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return
    dist.barrier()
    name = SHM_BUFFER.format(
        uid=os.getuid(),
        addr=os.environ.get("MASTER_ADDR", ""),
        port=os.environ.get("MASTER_PORT", ""),
        rank=dist.get_rank(),
    )
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name)


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


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def auto_threads(workers: int) -> int:
    """torch threads for a training process: the cores this process may use (its share when
    ``LOCAL_WORLD_SIZE`` processes run on the node) less one per data-loader worker, at least 1. On
    a 2-core Xeon, one thread and one worker trained 1.19x faster than torch's default of 2 threads
    with 2 workers, which fought over the cores (stage 2 of the demo, samples/s); on a 2-core EPYC,
    1 or 2 threads beside one worker were within 7%. ``train.threads`` takes a number where that differs."""
    cores = usable_cores()
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, cores // local - workers)


@contextlib.contextmanager
def torch_threads(threads: int | str, workers: int) -> Iterator[int]:
    """Run the block with ``threads`` torch threads (``"auto"``: ``auto_threads(workers)``), then
    restore the process's setting (a notebook kernel or test process goes on with its own)."""
    import torch

    n = auto_threads(workers) if threads == "auto" else int(threads)
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(before)
