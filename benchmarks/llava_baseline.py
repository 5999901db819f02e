"""BASELINE for benchmarks: a LLaVA-style map-style dataset (``LazySupervisedDataset``), not for training.

It reproduces how the original LLaVA code reads data (REFERENCE.md section 1): the whole records
file is ``json.load``ed in ``__init__`` (and so lives in the main process and, through fork, in
every dataloader worker), and ``__getitem__(i)`` opens the record's image from a loose file under
the media root. Everything after data access is *exactly* our pipeline, so a comparison with the
streaming loader measures data access only:

- image bytes -> ``llava_wb.data.decode.ImageTransform`` (same ``ImageConfig``);
- conversation -> ``get_template(template, tokenizer).tokenize`` with the same ``max_length`` and
  ``media_tokens``, ``expected_media`` from the record's images (as ``TrainSample`` does);
- batches -> ``llava_wb.data.collate.Collator`` through a torch ``DataLoader(shuffle=True)``.

Like LLaVA, a missing or broken image raises and ends the run (no skipping).
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from llava_wb.data.collate import Collator
from llava_wb.data.config import ImageConfig
from llava_wb.data.conversation import get_template
from llava_wb.data.decode import MODAL_TAGS, ImageTransform


class LazySupervisedDataset(Dataset):
    """Map-style dataset over a LLaVA JSON array: records in memory, images read per item."""

    def __init__(
        self,
        data_path: str | os.PathLike,
        media_root: str | os.PathLike,
        tokenizer,
        *,
        template: str = "vicuna_v1",
        max_length: int = 2048,
        image: ImageConfig | None = None,
        media_tokens: dict[str, int] | None = None,
    ):
        with open(data_path, encoding="utf-8") as f:
            self.list_data_dict: list[dict[str, Any]] = json.load(f)  # the whole file, as LLaVA does
        self.media_root = os.fspath(media_root)
        self.template = get_template(template, tokenizer)
        self.max_length = max_length
        self.image_cfg = image or ImageConfig()
        self.transform = ImageTransform(self.image_cfg)
        self.media_tokens = dict(media_tokens or {"image": 576})

    def __len__(self) -> int:
        return len(self.list_data_dict)

    def _image_paths(self, record: dict[str, Any]) -> list[str]:
        image = record.get("image")
        if image is None:
            return []
        return list(image) if isinstance(image, list) else [image]

    def __getitem__(self, i: int) -> dict[str, Any]:
        record = self.list_data_dict[i]
        images = []
        for rel in self._image_paths(record):
            with open(os.path.join(self.media_root, rel), "rb") as f:
                images.append(self.transform(f.read()))
        media = {"image": images} if images else {}
        tok = self.template.tokenize(
            record["conversations"],
            max_length=self.max_length,
            media_tokens=self.media_tokens,
            expected_media={m: len(v) for m, v in media.items()},
        )
        return {
            "input_ids": torch.tensor(tok.input_ids, dtype=torch.long),
            "labels": torch.tensor(tok.labels, dtype=torch.long),
            "media": media,
            "id": record.get("id", str(i)),
            "modal_list": [MODAL_TAGS["image"]] * len(images),
            "meta": record,
        }


def build_baseline_loader(
    dataset: LazySupervisedDataset,
    *,
    batch_size: int,
    num_workers: int,
    pad_token_id: int,
    prefetch_factor: int = 2,
    seed: int = 0,
) -> DataLoader:
    """LLaVA's way to iterate: a shuffled map-style DataLoader with our collator."""
    kw: dict[str, Any] = {}
    if num_workers > 0:
        kw.update(prefetch_factor=prefetch_factor, persistent_workers=False)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=num_workers,
        collate_fn=Collator(pad_token_id=pad_token_id),
        drop_last=False,
        generator=torch.Generator().manual_seed(seed),
        **kw,
    )
