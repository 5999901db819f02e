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

The loop, outputs and held-out evaluation are ``llava_wb.train.warmup_loop``'s (shared with the audio
tower's warm-up): ``OUTPUT/final`` (the tower: ``config.json`` + ``model.safetensors``),
``warmup_heads.safetensors``, ``metrics.jsonl`` (per-head accuracy on object patches) and
``result.json`` (held-out accuracy when ``train.warmup.eval_sources`` is set).
"""

from __future__ import annotations

import io
from typing import Any

import torch
from PIL import Image

from llava_wb.data.decode import decode_sample, media_fields, parse_json
from llava_wb.data.errors import SampleError
from llava_wb.train.config import RunConfig, WarmupConfig
from llava_wb.train.warmup_loop import WarmupHeads, WarmupTask, check_single_process, run_warmup


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


def head_classes(w: WarmupConfig) -> dict[str, int]:
    cells = w.cell_grid + 1
    return {**{n: len(c) + 1 for n, c in w.attributes.items()}, "row": cells, "col": cells, "count": w.max_objects}


def train_tower(cfg: RunConfig) -> dict[str, Any]:
    """Run the warm-up stage (see the module docstring); returns the ``result.json`` dict."""
    from llava_wb.model.towers import build_tower
    from llava_wb.train.run_folder import prepare_run_folder

    t, w, v = cfg.train, cfg.train.warmup, cfg.model.vision
    check_single_process(cfg)
    out = prepare_run_folder(cfg)
    torch.manual_seed(t.seed)
    tower = build_tower(v.type, path=v.path, config=v.config, feature_layer=v.feature_layer, select="patch")
    if not v.position_embeddings:
        tower.drop_position_embeddings()
    grid = tower.grid[0]
    heads = WarmupHeads(tower.hidden_size, head_classes(w))
    unused = set(tower.unused_parameter_names())
    task = WarmupTask(
        stage="tower_warmup",
        tower=tower,
        heads=heads,
        params=[p for n, p in tower.named_parameters() if n not in unused] + list(heads.parameters()),
        labeller=PatchLabels(cfg.data.image, grid, tower.patch_size, w),
        input_key="pixel_values",
        weights=w.weights,
        eval_sources=w.eval_sources,
        save=tower.model.save_pretrained,
        describe=f"grid {grid}x{grid}, heads {head_classes(w)}",
    )
    return run_warmup(cfg, task, out)
