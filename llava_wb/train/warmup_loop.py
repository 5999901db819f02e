"""The supervised warm-up loop shared by the stages that pretrain a tower alone on labels.

The demo has no pretrained CLIP or Whisper to download, so stage 0 stands in for their pretraining:
``tower_warmup`` (``llava_wb.train.warmup``) trains the vision tower on per-patch labels from each
image's object boxes, ``audio_warmup`` (``llava_wb.train.audio_warmup``) the audio tower on
per-token labels from each clip's event times. Each stage supplies a ``WarmupTask``: the tower, the
worker-side labeller (raw sample -> tensors, or ``None`` for a sample it does not label) and the
saving of the tower; this module runs the rest the same way for both: linear heads on the tower's
output (``WarmupHeads``), AdamW with the run's schedule, ``metrics.jsonl`` rows with per-head
accuracy, ``OUTPUT/final`` (a transformers folder the next stage loads by ``path``), the heads in
``warmup_heads.safetensors``, held-out accuracy over ``eval_sources`` and ``result.json``.

One process; a warm-up takes seconds to minutes, so it restarts rather than resumes.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from llava_wb.train.config import ConfigError, RunConfig

log = logging.getLogger("llava_wb.train.warmup")

Hits = dict[str, tuple[int, int]]  # head -> (correct, counted)


class WarmupHeads(nn.Module):
    """Linear heads on layer-normed features ``[N, L, D]``: one per position (``classes[name]``
    classes), except ``count``, which reads the mean over positions (one per sample)."""

    def __init__(self, dim: int, classes: dict[str, int]):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.heads = nn.ModuleDict({name: nn.Linear(dim, n) for name, n in classes.items()})

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.norm(features)
        return {name: head(h.mean(1) if name == "count" else h) for name, head in self.heads.items()}


def losses_and_hits(
    out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], weights: dict[str, float]
) -> tuple[torch.Tensor, Hits]:
    """Weighted sum of the heads' cross-entropies, and ``head -> (correct, total)`` counted on the
    positions whose label is not 0 (0 is background: no object, no event) and on every sample for ``count``."""
    loss = torch.zeros((), device=next(iter(out.values())).device)
    hits = {}
    for name, logits in out.items():
        target = batch[name]
        loss = loss + weights.get(name, 1.0) * F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))
        keep = torch.ones_like(target, dtype=torch.bool) if name == "count" else target > 0
        pred = logits.argmax(-1)
        hits[name] = (int((pred[keep] == target[keep]).sum()), int(keep.sum()))
    return loss, hits


def collate(samples: list[dict[str, torch.Tensor] | None]) -> dict[str, Any]:
    """Stack the labelled samples of a batch; the others (``None``) are left out and counted under ``unlabelled``."""
    kept = [s for s in samples if s is not None]
    batch: dict[str, Any] = {k: torch.stack([s[k] for s in kept]) for k in kept[0]} if kept else {}
    batch["unlabelled"] = len(samples) - len(kept)
    return batch


def accumulate(total: Hits, hits: Hits) -> None:
    """Add a batch's ``head -> (correct, counted)`` into running totals."""
    for name, (c, n) in hits.items():
        a, b = total.get(name, (0, 0))
        total[name] = (a + c, b + n)


def rates(total: Hits) -> dict[str, float]:
    return {k: round(c / max(n, 1), 4) for k, (c, n) in total.items()}


@dataclass
class WarmupTask:
    """What a warm-up stage supplies: ``tower`` maps ``batch[input_key]`` to features ``[N, L, D]``;
    ``labeller`` runs in the loader's workers; ``save(folder)`` writes the tower for the next stage;
    ``describe`` is logged at the start."""

    stage: str
    tower: nn.Module
    heads: WarmupHeads
    params: list[nn.Parameter]
    labeller: Callable[[dict[str, Any]], dict[str, torch.Tensor] | None]
    input_key: str
    weights: dict[str, float]
    eval_sources: list[str]
    save: Callable[[Path], None]
    describe: str = ""

    def step(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Hits]:
        return losses_and_hits(self.heads(self.tower(batch[self.input_key])), batch, self.weights)


def check_single_process(cfg: RunConfig) -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError(f"train.stage={cfg.train.stage} runs in one process (launch it without torchrun)")
    if cfg.train.resume:
        raise ConfigError(f"train.stage={cfg.train.stage} does not resume (it takes minutes); drop train.resume")


def run_warmup(cfg: RunConfig, task: WarmupTask, out: Path) -> dict[str, Any]:
    """Train ``task`` for ``train.max_steps`` steps, save it, evaluate it; returns the ``result.json`` dict."""
    from safetensors.torch import save_file

    from llava_wb.data.loader import build_loader
    from llava_wb.train.stages import build_scheduler

    t = cfg.train
    opt = torch.optim.AdamW(task.params, lr=t.learning_rate, weight_decay=t.weight_decay)
    steps = t.max_steps
    sched = build_scheduler(t, opt, steps)
    loader = build_loader(cfg.data, process=task.labeller, collate=collate)
    log.info("%s: %d steps x batch %d, %s", task.stage, steps, cfg.data.batch_size, task.describe)
    t0 = since = time.perf_counter()
    seen, window, step, last, unlabelled = 0, {}, 0, {}, 0
    task.tower.train()
    for batch in _endless(loader, task.stage):
        unlabelled += batch.pop("unlabelled")
        if not batch:
            continue
        loss, hits = task.step(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(task.params, t.max_grad_norm)
        opt.step()
        sched.step()
        step += 1
        seen += batch[task.input_key].shape[0]
        accumulate(window, hits)
        if step % t.logging_steps == 0 or step == steps:
            dt = time.perf_counter() - since
            last = {f"acc/{k}": v for k, v in rates(window).items()}
            row = {
                "step": step,
                "time": round(time.time(), 3),
                "loss": round(loss.item(), 5),
                "learning_rate": sched.get_last_lr()[0],
                "samples_per_s": seen / max(dt, 1e-9),
                **last,
            }
            with open(out / "metrics.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
            log.info("warm-up step %d/%d loss %.4f %s", step, steps, row["loss"], last)
            seen, window, since = 0, {}, time.perf_counter()
        if step >= steps:
            break
    final = out / "final"
    task.save(final)
    save_file(
        {k: p.detach().contiguous() for k, p in task.heads.state_dict().items()},
        str(out / "warmup_heads.safetensors"),
    )
    result = {
        "stage": task.stage,
        "world_size": 1,
        "output_dir": str(out),
        "final_dir": str(final),
        "global_step": step,
        "max_steps": steps,
        "finished": step >= steps,
        "seconds": round(time.perf_counter() - t0, 2),
        "train_accuracy": last,
        "metrics_file": str(out / "metrics.jsonl"),
        "resolved_config": str(out / "resolved_config.yaml"),
        "skips": loader.skip_state(),
        "unlabelled_samples": unlabelled,
    }
    if task.eval_sources:
        result["heldout_accuracy"] = evaluate(task, cfg, task.eval_sources)
        log.info("held-out accuracy of the warm-up heads: %s", result["heldout_accuracy"])
    (out / "result.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    return result


def _endless(loader: Any, stage: str) -> Iterator[dict[str, Any]]:
    """Batches epoch after epoch (a balanced loader's epochs continue its stream); raises when a whole
    epoch holds no sample the stage can label (it would otherwise loop for ever)."""
    while True:
        labelled = 0
        for batch in loader:
            labelled += len(batch) > 1  # more than the "unlabelled" count
            yield batch
        if not labelled:
            raise ValueError(
                f"{stage}: a whole pass over data.sources held no sample this warm-up can label "
                "(tower_warmup: one image with meta.objects; audio_warmup: one audio clip); check the sources"
            )


@torch.no_grad()
def evaluate(task: WarmupTask, cfg: RunConfig, sources: list[str]) -> dict[str, float]:
    """Per-head accuracy (``losses_and_hits``) over one ordered pass of ``sources``."""
    from llava_wb.data.config import DataConfig
    from llava_wb.data.loader import build_loader

    data = DataConfig.from_dict(
        {
            **cfg.data.to_dict(),
            "sources": list(sources),
            "epoch_mode": "exact",
            "shuffle_shards": False,
            "shuffle_buffer": 0,
            "num_workers": 0,
        }
    )
    task.tower.eval()
    total: Hits = {}
    for batch in build_loader(data, process=task.labeller, collate=collate):
        batch.pop("unlabelled")
        if batch:
            accumulate(total, task.step(batch)[1])
    return rates(total)


def accuracy_table(result: dict[str, Any]) -> str:
    """Markdown table of a warm-up's per-head accuracy: train (last logging window) and held-out."""
    train, held = result.get("train_accuracy", {}), result.get("heldout_accuracy", {})
    lines = ["| head | train (last window) | held-out |", "|---|---|---|"]
    for name in held or [k.split("/", 1)[1] for k in train]:
        lines.append(f"| {name} | {train.get(f'acc/{name}', float('nan')):.3f} | {held.get(name, float('nan')):.3f} |")
    return "\n".join(lines)
