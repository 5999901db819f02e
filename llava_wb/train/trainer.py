"""The HF ``Trainer`` bent to the streaming loader, plus the callbacks that log and stop.

How the Trainer is bent (transformers 5.x):

- ``get_train_dataloader`` returns a ``StreamFeed``: an endless iterator over the rank's
  ``StreamingLoader`` epochs with *no* ``__len__``. Accelerate never wraps it (no re-sharding: each
  rank's loader already reads its own shards), and the Trainer, seeing no length, runs one long
  "epoch" of ``max_steps`` optimizer steps, so its epoch bookkeeping never fights the loader's.
- The feed strips metadata (``id``, ``meta``...) before the batch reaches the model and counts
  samples, LLM tokens (attention mask, or a packed batch's token mask), visual tokens and the time spent waiting for data.
- ``ignore_data_skip=True``: on resume the Trainer must not replay batches; the loader restores
  its exact position from ``loader_state_rank{R}.json`` (see ``checkpoints``), which
  ``_save_checkpoint`` writes before HF's own files. HF restores model, optimizer, scheduler,
  RNG and the step counter.
- ``_prepare_inputs`` normalises uint8 pixels after the batch reached the device (the loader ships
  uint8: a quarter of the bytes between processes and no float conversion in the workers).
- With ``prefetch`` (``train.feature_prefetch``), the feed reads one batch ahead and a background
  thread (at a lower priority) runs the frozen towers on that batch's images, frames and audio
  clips into their feature caches while the current step computes. The loader's state is
  snapshotted after every batch and the feed saves, resumes and counts skips as of the batch it
  last *gave*, so the look-ahead changes nothing on resume. Once the caches hold every input of
  ``PREFETCH_PATIENCE`` batches in a row, the thread stops and the feed reads no batch ahead.
- ``create_optimizer`` builds per-part learning-rate groups (``stages.param_groups``).
- ``log`` adds samples/s, LLM tokens/s, visual tokens per sample, data-wait fraction, the share of
  LLM positions that were padding (summed over ranks) and each group's learning rate to every training log line.
"""

from __future__ import annotations

import copy
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback

from llava_wb.train import checkpoints as ckpt
from llava_wb.train.stages import param_groups

MODEL_KEYS = (
    "input_ids",
    "labels",
    "attention_mask",
    "position_ids",  # packed batches (llava_wb.data.packing): restart at every sample
    "pixel_values",
    "image_counts",
    "video_values",
    "video_counts",
    "audio_values",
    "audio_counts",
    "instruction_mask",
)


class StreamFeed:
    """Endless batches from a ``StreamingLoader`` (epoch after epoch); deliberately no ``__len__``."""

    def __init__(
        self,
        loader: Any,
        media_tokens: dict[str, int],
        id_log: Path | None = None,
        image: Any = None,
        prefetch: Callable[[dict[str, Any]], Any] | None = None,
    ):
        self.loader = loader
        self.prefetch = prefetch  # run on each batch one step ahead, in a thread (see the module docstring)
        self._state: dict[str, Any] | None = None  # the loader's state after the batch last given (look-ahead)
        self.prefetch_stopped: int | None = None  # the batch after which the prefetch thread stopped
        self.image = image  # the loader's ImageConfig: uint8 pixels are normalised with its mean/std
        self.media_tokens = dict(media_tokens)  # placeholder ids per item of each modality
        self.batches = 0  # consumed since the start of the run (restored on resume)
        self.id_log = id_log
        self._gen: Iterator[dict[str, Any]] | None = None
        self.reset_stats()

    def reset_stats(self) -> None:
        self.samples = self.tokens = self.visual = self.positions = 0
        self.wait = 0.0
        self.since = time.perf_counter()

    def loader_state(self) -> dict[str, Any]:
        """The loader's state as of the last batch this feed gave (not the one it read ahead)."""
        return self._state if self._state is not None else self.loader.state_dict()

    def state_dict(self) -> dict[str, Any]:
        return {"loader": self.loader_state(), "batches": self.batches}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loader.load_state_dict(state["loader"])
        self.batches = int(state["batches"])
        self._state = None

    def skip_state(self) -> dict[str, Any]:
        """Skips counted by the loader up to the last batch given."""
        return self.loader.skip_state(self._state)

    def skip_summary(self) -> str:
        return self.loader.skip_summary(self._state)

    def epoch_progress(self) -> float:
        """Data epochs done, as a float (loader epoch + fraction of the current one)."""
        n = self.loader.batches_per_epoch
        state = self.loader_state()
        return state["epoch"] + (state["batches_in_epoch"] / n if n else 0.0)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self._gen is None:
            self._gen = self._stream()
        return self._gen

    def close(self) -> None:
        """Stop the loader's workers."""
        if self._gen is not None:
            self._gen.close()  # type: ignore[attr-defined]
            self._gen = None

    def _batches(self) -> Iterator[tuple[dict[str, Any], float]]:
        """The loader's batches, epoch after epoch, each with the seconds spent waiting for it."""
        it = iter(self.loader)
        while True:
            t0 = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                it = iter(self.loader)
                continue
            yield batch, time.perf_counter() - t0

    def _stream(self) -> Iterator[dict[str, Any]]:
        if self.prefetch is None:
            for batch, waited in self._batches():
                self.wait += waited
                yield self._give(batch)
            return
        # One batch ahead: while the trainer computes on a batch, the thread prefetches the next. Once
        # PREFETCH_PATIENCE prefetches in a row found every input cached, the thread stops (it would
        # only hash inputs again, at a cost to the step) and the feed goes on without a look-ahead.
        batches = self._batches()
        with ThreadPoolExecutor(1, thread_name_prefix="llava_wb-prefetch", initializer=_yield_to_the_step) as pool:
            batch, waited = next(batches)
            state, job = copy.deepcopy(self.loader.state_dict()), pool.submit(self.prefetch, batch)
            idle = 0
            while idle < PREFETCH_PATIENCE:
                ahead, ahead_waited = next(batches)
                ahead_state = copy.deepcopy(self.loader.state_dict())
                ahead_job = pool.submit(self.prefetch, ahead)
                idle = idle + 1 if not self._finish(job, waited) else 0
                self._state = state
                yield self._give(batch)
                batch, waited, state, job = ahead, ahead_waited, ahead_state, ahead_job
            self._finish(job, waited)
            self.prefetch_stopped = self.batches + 1
            self._state = state
            yield self._give(batch)
        self._state = None  # nothing read ahead any more: the loader's own state is the feed's
        for batch, waited in batches:
            self.wait += waited
            yield self._give(batch)

    def _finish(self, job: Any, waited: float) -> Any:
        """Wait for a batch's prefetch (counted as data wait); what it returned, raising what it raised."""
        t0 = time.perf_counter()
        done = job.result()
        self.wait += waited + time.perf_counter() - t0
        return done

    def _give(self, batch: dict[str, Any]) -> dict[str, Any]:
        self._count(batch)
        self.batches += 1
        return {k: batch[k] for k in MODEL_KEYS if k in batch}

    def _count(self, batch: dict[str, Any]) -> None:
        packed = "samples_per_row" in batch
        self.samples += int(batch["samples_per_row"].sum()) if packed else int(batch["input_ids"].shape[0])
        self.tokens += int(batch["token_mask" if packed else "attention_mask"].sum())
        self.positions += batch["input_ids"].numel()
        for kind, per_item in self.media_tokens.items():
            counts = batch.get(f"{kind}_counts")
            self.visual += int(counts.sum()) * per_item if counts is not None else 0
        if self.id_log is not None:
            with open(self.id_log, "a", encoding="utf-8") as f:
                f.write(
                    json.dumps({"batch": self.batches, "epoch": self.loader.epoch, "ids": list(batch["id"])}) + "\n"
                )


PREFETCH_NICE = 10  # the prefetch thread's niceness: it takes the cycles the step and the loader leave
PREFETCH_PATIENCE = 32  # prefetches in a row that computed nothing, after which the thread stops


def _yield_to_the_step() -> None:
    """Lower the calling thread's scheduling priority (Linux: per thread): when the cores are all busy, the
    step, which every other part waits for, keeps its core (2-core EPYC, demo stage 2's first epoch:
    1.31x the samples/s of a run without prefetch with it, 1.12x without it; benchmarks/bench_prefetch.py)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), PREFETCH_NICE)
    except (AttributeError, OSError):  # not Linux, or not allowed: the thread runs at normal priority
        pass


class LlavaTrainer(Trainer):
    """``Trainer`` fed by a ``StreamFeed`` (see the module docstring)."""

    def __init__(self, *args: Any, feed: StreamFeed, train_cfg: Any, save_total_limit: int | None, **kwargs: Any):
        self.feed = feed
        self.train_cfg = train_cfg
        self.keep_checkpoints = save_total_limit
        self.group_lrs: dict[str, float] = {}
        self.feature_cache: Any = None  # the frozen tower's FeatureCache, when the run has one
        super().__init__(*args, **kwargs)

    def get_train_dataloader(self) -> StreamFeed:  # type: ignore[override]
        return self.feed

    def _prepare_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """On the device, uint8 pixels (``data.image.pixels``) become the normalised floats the tower takes."""
        inputs = super()._prepare_inputs(inputs)
        if self.feed.image is None:
            return inputs
        from llava_wb.data.image import normalise_batch

        return normalise_batch(inputs, self.feed.image)

    def create_optimizer(self, model: torch.nn.Module | None = None) -> torch.optim.Optimizer:
        if self.optimizer is None:
            opt_model = self.model if model is None else model
            groups = param_groups(opt_model, self.train_cfg, self.get_decay_parameter_names(opt_model))
            cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            self.optimizer = cls(groups, **kwargs)
        return self.optimizer

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:
            logs.update(self._throughput())
            logs.update({f"lr/{name}": lr for name, lr in self.group_lrs.items()})
            if self.feature_cache is not None:  # this rank's images served from the cache since the last log
                logs["feature_cache_hit_frac"] = self.feature_cache.take_window()
            self.state.epoch = round(self.feed.epoch_progress(), 4)
        super().log(logs, start_time)

    def _throughput(self) -> dict[str, float]:
        f = self.feed
        dt = max(time.perf_counter() - f.since, 1e-9)
        totals = torch.tensor([f.samples, f.tokens, f.visual, f.wait / dt, f.positions], dtype=torch.float64)
        if self.args.world_size > 1:
            moved = totals.to(self.args.device)
            torch.distributed.all_reduce(moved)
            totals = moved.cpu()
        samples, tokens, visual, wait, positions = totals.tolist()
        f.reset_stats()
        return {
            "samples_per_s": samples / dt,
            "tokens_per_s": tokens / dt,
            "visual_tokens_per_sample": visual / max(samples, 1.0),
            "data_wait_frac": wait / self.args.world_size,
            "padding_frac": 1.0 - tokens / max(positions, 1.0),  # LLM positions that were padding
        }

    def _save_checkpoint(self, model: torch.nn.Module, trial: Any) -> None:
        out = Path(self._get_output_dir(trial))
        folder = out / f"{ckpt.PREFIX}{self.state.global_step}"
        if self.args.should_save:  # a resumed run may write again where a damaged checkpoint was
            ckpt.unmark(folder)
        self.accelerator.wait_for_everyone()
        with ckpt.disk_full_guard(folder, self._checkpoint_bytes(out), f"saving {folder.name}"):
            ckpt.write_loader_state(folder, self.args.process_index, self.feed.state_dict())
            super()._save_checkpoint(model, trial)
            self.accelerator.wait_for_everyone()
            if self.args.should_save:
                ckpt.mark_complete(folder, self.state.global_step, self.args.world_size)
                ckpt.rotate(out, self.keep_checkpoints)
        self.accelerator.wait_for_everyone()

    def _checkpoint_bytes(self, out: Path) -> int:
        """Space a checkpoint needs: the size of the last one, else weights + two fp32 Adam states."""
        done = ckpt.checkpoints(out)
        if done and ckpt.checkpoint_bytes(done[-1]):
            return ckpt.checkpoint_bytes(done[-1])
        params = list(self.model.parameters())
        return sum(p.numel() * p.element_size() for p in params) + sum(8 * p.numel() for p in params if p.requires_grad)


class GroupLRCallback(TrainerCallback):
    """Records each optimizer group's learning rate right after the step that used it."""

    def __init__(self, trainer: LlavaTrainer):
        self.trainer = trainer

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        optimizer = self.trainer.optimizer
        groups = getattr(optimizer, "param_groups", None) or []
        lrs: dict[str, float] = {}
        for i, group in enumerate(groups):
            lrs.setdefault(str(group.get("name", i)).removesuffix("_no_decay"), float(group["lr"]))
        self.trainer.group_lrs = lrs


class JsonlMetricsCallback(TrainerCallback):
    """Appends every log event (rank 0) to ``metrics.jsonl``: one JSON object per line."""

    def __init__(self, path: Path):
        self.path = path

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if state.is_world_process_zero and logs:
            row = {"step": state.global_step, "time": round(time.time(), 3), **logs}
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")


class StopAfterCallback(TrainerCallback):
    """Stops (saving a checkpoint) once ``global_step`` reaches ``stop_after``, without changing
    the schedule: a time-sliced job continues later with ``train.resume=true``."""

    def __init__(self, stop_after: int):
        self.stop_after = stop_after

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if state.global_step >= self.stop_after:
            control.should_training_stop = True
            control.should_save = True
        return control
