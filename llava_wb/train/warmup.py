"""Stage ``tower_warmup``: supervised per-patch warm-up of a vision tower that has no pretrained weights.

LLaVA starts from a pretrained CLIP. The demo cannot download one, and a tower trained from scratch
through the LLM's answer loss learns colour but not shape or position in minutes. This stage stands
in for CLIP pretraining: it trains the tower alone on labels derived from each sample's object
annotations, then saves it as an ordinary transformers checkpoint folder that the next stage loads
with ``model.vision.path`` exactly as it would load a real CLIP.

Labels (``train.warmup``) come from ``meta.objects`` in the sample json, as written by
``data_tools/make_synthetic.py``: each object has a pixel ``bbox [x0, y0, x1, y1]``, attribute values
(``colour``, ``shape``) and its layout ``cell [row, col]``. A patch belongs to an object when at least
``min_overlap`` of its area lies inside the bbox (mapped from the stored image to the tower's
input through the same ``pad`` / ``resize`` as the pixels). Heads on the tower's feature layer (the
features the LLM will see): per patch, one classifier per attribute (class 0 = background) and the object's cell
row and column; per image (mean of the patches), the object count. Loss: weighted sum of the
cross-entropies. Text-only samples are left out of the batches (nothing to label); samples with
several images or a video/audio are skipped and counted (``warmup_needs_one_image``).

Output: ``OUTPUT/final`` (the tower: ``config.json`` + ``model.safetensors``), ``warmup_heads.safetensors``,
``metrics.jsonl`` (loss, learning rate, samples/s, per-head accuracy on object patches),
``resolved_config.yaml`` and ``result.json`` (with held-out accuracy when ``train.warmup.eval_sources``
is set). One process; a few minutes on the demo, so it restarts rather than resumes.
"""

from __future__ import annotations

import io
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from llava_wb.data.decode import decode_sample, media_fields, parse_json
from llava_wb.data.errors import SampleError
from llava_wb.train.config import ConfigError, RunConfig, WarmupConfig

log = logging.getLogger("llava_wb.train.warmup")


class PatchLabels:
    """Worker-side step: decode a sample and derive its per-patch and per-image labels."""

    def __init__(self, image_cfg: Any, grid: int, patch: int, warmup: WarmupConfig):
        self.image_cfg, self.grid, self.patch, self.w = image_cfg, grid, patch, warmup

    def __call__(self, raw: dict[str, Any]) -> dict[str, Any] | None:
        fields = media_fields(raw, parse_json(raw))
        if not any(m == "image" for m, _ in fields) or any(m in ("video", "audio") for m, _ in fields):
            return None  # text, video or audio: nothing to label (``collate`` counts them as unlabelled)
        d = decode_sample(raw, self.image_cfg)
        images = d["media"].get("image", [])
        if len(images) != 1:
            raise SampleError("warmup_needs_one_image", f"{len(images)} images; the warm-up labels one image")
        objects = (d["meta"].get("meta") or {}).get("objects")
        if not isinstance(objects, list) or not objects:
            raise SampleError("missing_field", "warm-up needs meta.objects with bbox and attributes")
        field = next(f for m, f in media_fields(raw, d["meta"]) if m == "image")
        with Image.open(io.BytesIO(raw[field])) as img:  # header only: the stored size
            stored = img.size
        return {"pixel_values": images[0], **self.labels(objects, stored)}

    def to_tower(self, bbox: list[float], stored: tuple[int, int]) -> tuple[float, float, float, float]:
        """A bbox in stored-image pixels -> tower-input pixels (after ``pad`` or ``resize``)."""
        w, h = stored
        x0, y0, x1, y1 = (float(v) for v in bbox)
        if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
            raise SampleError("bad_bbox", f"bbox {bbox} is not inside the {w}x{h} image")
        size = self.grid * self.patch
        if self.image_cfg.aspect == "pad":
            side = max(w, h)
            dx, dy, sx, sy = (side - w) / 2, (side - h) / 2, size / side, size / side
        else:
            dx, dy, sx, sy = 0.0, 0.0, size / w, size / h
        return (x0 + dx) * sx, (y0 + dy) * sy, (x1 + dx) * sx, (y1 + dy) * sy

    def labels(self, objects: list[dict[str, Any]], stored: tuple[int, int]) -> dict[str, torch.Tensor]:
        g, p = self.grid, self.patch
        edges = torch.arange(g + 1, dtype=torch.float32) * p
        out = {name: torch.zeros(g * g, dtype=torch.long) for name in [*self.w.attributes, "row", "col"]}
        for obj in objects:
            x0, y0, x1, y1 = self.to_tower(obj["bbox"], stored)
            ox = (torch.minimum(edges[1:], torch.tensor(x1)) - torch.maximum(edges[:-1], torch.tensor(x0))).clamp(min=0)
            oy = (torch.minimum(edges[1:], torch.tensor(y1)) - torch.maximum(edges[:-1], torch.tensor(y0))).clamp(min=0)
            inside = (oy[:, None] * ox[None, :] >= self.w.min_overlap * p * p).flatten()
            for name, classes in self.w.attributes.items():
                if obj.get(name) not in classes:
                    raise SampleError("bad_label", f"object {name}={obj.get(name)!r} is not one of {classes}")
                out[name][inside] = classes.index(obj[name]) + 1
            row, col = obj["cell"]
            out["row"][inside], out["col"][inside] = int(row) + 1, int(col) + 1
        if not 1 <= len(objects) <= self.w.max_objects:
            raise SampleError("bad_label", f"{len(objects)} objects; train.warmup.max_objects is {self.w.max_objects}")
        out["count"] = torch.tensor(len(objects) - 1)
        return out


def collate(samples: list[dict[str, torch.Tensor] | None]) -> dict[str, Any]:
    """Stack the labelled images of a batch; samples without one image (``None``) are left out and
    counted under ``unlabelled``."""
    kept = [s for s in samples if s is not None]
    batch: dict[str, Any] = {k: torch.stack([s[k] for s in kept]) for k in kept[0]} if kept else {}
    batch["unlabelled"] = len(samples) - len(kept)
    return batch


class WarmupHeads(nn.Module):
    """Linear heads on layer-normed patch features: per patch (``classes[name]``) and ``count`` per image."""

    def __init__(self, dim: int, classes: dict[str, int]):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.heads = nn.ModuleDict({name: nn.Linear(dim, n) for name, n in classes.items()})

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.norm(features)
        return {name: head(h.mean(1) if name == "count" else h) for name, head in self.heads.items()}


def head_classes(w: WarmupConfig) -> dict[str, int]:
    cells = w.cell_grid + 1
    return {**{n: len(c) + 1 for n, c in w.attributes.items()}, "row": cells, "col": cells, "count": w.max_objects}


def losses_and_hits(
    out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], w: WarmupConfig
) -> tuple[torch.Tensor, dict[str, tuple[int, int]]]:
    """Weighted loss and ``name -> (correct, total)`` on object patches (all images for ``count``)."""
    loss = torch.zeros((), device=next(iter(out.values())).device)
    hits = {}
    for name, logits in out.items():
        target = batch[name]
        loss = loss + w.weights.get(name, 1.0) * F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), target.reshape(-1)
        )
        keep = torch.ones_like(target, dtype=torch.bool) if name == "count" else target > 0
        pred = logits.argmax(-1)
        hits[name] = (int((pred[keep] == target[keep]).sum()), int(keep.sum()))
    return loss, hits


def train_tower(cfg: RunConfig) -> dict[str, Any]:
    """Run the warm-up stage (see the module docstring); returns the ``result.json`` dict."""
    import os

    from transformers import get_scheduler

    from llava_wb.data.loader import build_loader
    from llava_wb.model.towers import build_tower
    from llava_wb.train.run_folder import prepare_run_folder

    t, w, v = cfg.train, cfg.train.warmup, cfg.model.vision
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("train.stage=tower_warmup runs in one process (launch it without torchrun)")
    if t.resume:
        raise ConfigError("train.stage=tower_warmup does not resume (it takes minutes); drop train.resume")
    out = prepare_run_folder(cfg)
    torch.manual_seed(t.seed)
    tower = build_tower(v.type, path=v.path, config=v.config, feature_layer=v.feature_layer, select="patch")
    if not v.position_embeddings:
        tower.drop_position_embeddings()
    grid = tower.grid[0]
    heads = WarmupHeads(tower.hidden_size, head_classes(w))
    unused = set(tower.unused_parameter_names())
    params = [p for n, p in tower.named_parameters() if n not in unused] + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=t.learning_rate, weight_decay=t.weight_decay)
    steps = t.max_steps
    sched = get_scheduler(
        t.lr_scheduler_type, opt, num_warmup_steps=math.ceil(t.warmup_ratio * steps), num_training_steps=steps
    )
    loader = build_loader(cfg.data, process=PatchLabels(cfg.data.image, grid, tower.patch_size, w), collate=collate)
    log.info(
        "tower warm-up: %d steps x batch %d, grid %dx%d, heads %s",
        steps,
        cfg.data.batch_size,
        grid,
        grid,
        head_classes(w),
    )
    t0 = since = time.perf_counter()
    seen, window, step, last, unlabelled = 0, {}, 0, {}, 0
    tower.train()
    for batch in _endless(loader):
        unlabelled += batch.pop("unlabelled")
        if not batch:
            continue
        loss, hits = losses_and_hits(heads(tower(batch["pixel_values"])), batch, w)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, t.max_grad_norm)
        opt.step()
        sched.step()
        step += 1
        seen += batch["pixel_values"].shape[0]
        _accumulate(window, hits)
        if step % t.logging_steps == 0 or step == steps:
            dt = time.perf_counter() - since
            last = {f"acc/{k}": round(c / max(n, 1), 4) for k, (c, n) in window.items()}
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
    tower.model.save_pretrained(final)
    from safetensors.torch import save_file

    save_file(
        {k: p.detach().contiguous() for k, p in heads.state_dict().items()}, str(out / "warmup_heads.safetensors")
    )
    result = {
        "stage": "tower_warmup",
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
    if w.eval_sources:
        result["heldout_accuracy"] = evaluate_tower(tower, heads, cfg, w.eval_sources)
        log.info("held-out per-patch accuracy (object patches): %s", result["heldout_accuracy"])
    (out / "result.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    return result


def _accumulate(total: dict[str, tuple[int, int]], hits: dict[str, tuple[int, int]]) -> None:
    """Add a batch's ``name -> (correct, counted)`` into running totals."""
    for name, (c, n) in hits.items():
        a, b = total.get(name, (0, 0))
        total[name] = (a + c, b + n)


def _endless(loader: Any) -> Any:
    """Batches epoch after epoch (a balanced loader's epochs continue its stream)."""
    while True:
        yield from loader


@torch.no_grad()
def evaluate_tower(tower: Any, heads: WarmupHeads, cfg: RunConfig, sources: list[str]) -> dict[str, float]:
    """Per-head accuracy on object patches over one pass of ``sources``."""
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
    loader = build_loader(
        data, process=PatchLabels(cfg.data.image, tower.grid[0], tower.patch_size, cfg.train.warmup), collate=collate
    )
    tower.eval()
    total: dict[str, tuple[int, int]] = {}
    for batch in loader:
        batch.pop("unlabelled")
        if not batch:
            continue
        _, hits = losses_and_hits(heads(tower(batch["pixel_values"])), batch, cfg.train.warmup)
        _accumulate(total, hits)
    return {k: round(c / max(n, 1), 4) for k, (c, n) in total.items()}


def patch_accuracy_table(result: dict[str, Any]) -> str:
    """Markdown table of the warm-up's train (last window) and held-out per-head accuracy."""
    train, held = result.get("train_accuracy", {}), result.get("heldout_accuracy", {})
    lines = ["| head | train (last window) | held-out |", "|---|---|---|"]
    for name in held or [k.split("/", 1)[1] for k in train]:
        lines.append(f"| {name} | {train.get(f'acc/{name}', float('nan')):.3f} | {held.get(name, float('nan')):.3f} |")
    return "\n".join(lines)


def load_heads(run_dir: str | Path, cfg: RunConfig, dim: int) -> WarmupHeads:
    """The saved warm-up heads of a run folder (for inspection in notebooks)."""
    from safetensors.torch import load_file

    heads = WarmupHeads(dim, head_classes(cfg.train.warmup))
    heads.load_state_dict(load_file(str(Path(run_dir) / "warmup_heads.safetensors")))
    return heads
