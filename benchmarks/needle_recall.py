"""Needle accuracy and recall of a trained model on held-out needle shards (used by ``bench_resample``).

``measure(model, tok, shards, metas, swap, kind)`` answers every question of the shards with the
model (``kind="image"``: needle images; ``"video"``: needle clips, ``data_tools.synth_needle_clip``),
optionally with another reducer swapped in first, and records what the reducer kept through a
forward hook. A patch is a *needle patch* when the needle's box covers >= 50% of it (mapped to the
tower's input exactly as the tower warm-up maps boxes, ``PatchLabels``); in a clip only the patches of
the one sampled frame that shows the needle count. *Kept*: the patch survives as a token at its own
position (not merged into another); *unmixed*: kept and holding no other patch; *needle share*: the
fraction of needle patches in the token each needle patch ends up in (defined for every reducer,
pooling included); *hit*: a question with >= 1 needle patch kept; *kept on objects*: the share of
output tokens whose own patch lies on an object.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

KINDS = ("image", "video")


def needle_masks(meta: dict[str, Any], image_cfg: Any, grid: int, patch: int, kind: str = "image") -> tuple[Any, Any]:
    """(needle patches, object patches) as bool ``[frames * grid * grid]`` (one frame for an image)."""
    import torch

    from llava_wb.train.config import WarmupConfig
    from llava_wb.train.warmup import PatchLabels

    objects = meta["objects"]
    labels = PatchLabels(image_cfg, grid, patch, WarmupConfig(min_overlap=0.5, max_objects=max(len(objects), 1)))
    stored = (meta["stored_size"],) * 2
    needle = labels.labels([objects[meta["needle"]]], stored)["row"] > 0
    if kind == "image":
        return needle, labels.labels(objects, stored)["row"] > 0
    frames, shown = meta["frames"], meta["sampled_frame"]
    still = labels.labels([o for i, o in enumerate(objects) if i != meta["needle"]], stored)["row"] > 0
    per_frame = [needle if t == shown else torch.zeros_like(needle) for t in range(frames)]
    return torch.cat(per_frame), torch.cat([still | p for p in per_frame])


def load_metas(generated: Path, split: str, kind: str = "image", frames: int | None = None) -> dict[str, Any]:
    """Needle records' meta of ``<generated>/<split>.json`` (a ``make_synthetic`` output folder) by id,
    with the stored image side (and, for clips, the model's sampled frame count)."""
    size = json.loads((generated / "dataset_info.json").read_text())["params"]["image_size"]
    extra = {"stored_size": size, **({"frames": frames} if kind == "video" else {})}
    return {r["id"]: {**r["meta"], **extra} for r in json.loads((generated / f"{split}.json").read_text())}


def measure(
    model: Any,
    tok: Any,
    shards: str | Path,
    metas: dict[str, Any],
    swap: tuple[str, dict[str, Any]] | None,
    kind: str = "image",
    template: str = "chat_template",
) -> dict[str, Any]:
    """Needle accuracy and recall of ``model`` on ``shards`` (``swap``: reducer put in first; for
    clips the video reducer)."""
    import torch

    from llava_wb.eval.evaluate import evaluate, image_config_for
    from llava_wb.model.reducers import build_reducer

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if swap is not None:
        reducer = build_reducer(*swap).eval()
        if kind == "image":
            model.reducer = reducer
        else:
            model.video_reducer_module = reducer
    target = model.reducer if kind == "image" else model.video_reducer
    captured: list[tuple[torch.Tensor, ...]] = []
    hook = target.register_forward_hook(
        lambda mod, args, out: captured.append((out.positions.cpu(), out.sizes.cpu(), out.group_ids.cpu()))
    )
    image_cfg = image_config_for(model)
    t0 = time.perf_counter()
    try:
        ev = evaluate(model, tok, [str(shards)], image=image_cfg, template=template, batch_size=64, progress=False)
    finally:
        hook.remove()
    seconds = time.perf_counter() - t0
    positions, sizes, groups = (torch.cat(x) for x in zip(*captured))
    if positions.shape[0] != len(ev.predictions):
        raise RuntimeError(f"{positions.shape[0]} reduced items for {len(ev.predictions)} questions")
    grid, patch = model.vision_tower.grid[0], model.vision_tower.patch_size
    tot = _Totals()
    for i, pred in enumerate(ev.predictions):
        needle, fg = needle_masks(metas[pred["id"]], image_cfg, grid, patch, kind)
        tot.add(needle, fg, positions[i], sizes[i], groups[i])
    per_type = ev.per_type
    return {
        **tot.result(),
        "tokens": int(positions.shape[1]),
        "accuracy": {t: per_type[t]["accuracy"] for t in per_type},
        "overall": ev.overall["accuracy"],
        "majority": {t: per_type[t]["majority_accuracy"] for t in per_type},
        "eval_seconds": round(seconds, 1),
    }


class _Totals:
    """Recall counts summed over questions (see the module docstring)."""

    def __init__(self) -> None:
        self.t = {
            "needle_patches": 0,
            "kept": 0,
            "unmixed": 0,
            "share": 0.0,
            "hit": 0,
            "questions": 0,
            "kept_on_objects": 0.0,
            "object_patches": 0.0,
            "no_needle_patch": 0,
        }

    def add(self, needle: Any, fg: Any, pos: Any, size: Any, gid: Any) -> None:
        import torch

        t = self.t
        kept = pos[gid] == torch.arange(gid.numel())
        unmixed = kept & (size[gid] == 1)
        members = torch.bincount(gid, minlength=pos.numel()).float()
        needle_in = torch.bincount(gid, weights=needle.float(), minlength=pos.numel())
        share = (needle_in / members.clamp(min=1))[gid]
        t["questions"] += 1
        t["kept_on_objects"] += float(fg[pos].float().mean())
        t["object_patches"] += float(fg.float().mean())
        if not needle.any():
            t["no_needle_patch"] += 1
            return
        t["needle_patches"] += int(needle.sum())
        t["kept"] += int(kept[needle].sum())
        t["unmixed"] += int(unmixed[needle].sum())
        t["share"] += float(share[needle].sum())
        t["hit"] += int(kept[needle].any())

    def result(self) -> dict[str, Any]:
        t = self.t
        npatch, nq = max(t["needle_patches"], 1), max(t["questions"], 1)
        with_needle = max(nq - t["no_needle_patch"], 1)
        return {
            "questions": t["questions"],
            "recall_kept": t["kept"] / npatch,
            "recall_unmixed": t["unmixed"] / npatch,
            "needle_share": t["share"] / npatch,
            "hit_rate": t["hit"] / with_needle,
            "kept_on_objects": t["kept_on_objects"] / nq,
            "object_patch_fraction": t["object_patches"] / nq,
            "needle_patches_per_question": t["needle_patches"] / with_needle,
            "no_needle_patch": t["no_needle_patch"],
        }
