"""Batch collation: pad token ids and labels, build the attention mask, concatenate media.

``Collator`` turns a list of samples

    {"input_ids": LongTensor[L] | list[int], "labels": same length,
     "media": {"image": [Tensor[C, H, W], ...], "video": [...], "audio": [...]},  # optional
     ...any metadata ("id", "modal_list", ...)}

into a batch

    {"input_ids": [B, Lmax], "labels": [B, Lmax], "attention_mask": [B, Lmax],
     "pixel_values": [N_images, C, H, W] in sample order, or None when the batch has no image,
     "image_counts": LongTensor[B],
     "instruction_mask": [B, Lmax] (0-padded), when every sample has one (``TrainSample`` adds it),
     "video_values"/"video_counts", "audio_values"/"audio_counts": only when a sample has that key,
     ...every other key as a list of per-sample values}

Padding goes right or left (left for batched generation); ``pad_to_multiple_of`` rounds ``Lmax``
up. Media of one modality are stacked, so they must share one shape: a clear ``ValueError``
otherwise (resize or pad them in decoding).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from llava_wb.constants import IGNORE_INDEX, MEDIA_KINDS

MEDIA_VALUE_KEYS = {"image": "pixel_values", "video": "video_values", "audio": "audio_values"}
TEXT_KEYS = ("input_ids", "labels")


class Collator:
    """Pads a list of samples into one batch (see the module docstring for the formats)."""

    def __init__(
        self,
        pad_token_id: int,
        padding_side: str = "right",
        pad_to_multiple_of: int | None = None,
        label_pad: int = IGNORE_INDEX,
    ):
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        if pad_to_multiple_of is not None and pad_to_multiple_of < 1:
            raise ValueError(f"pad_to_multiple_of must be >= 1, got {pad_to_multiple_of}")
        self.pad_token_id = int(pad_token_id)
        self.padding_side = padding_side
        self.pad_to_multiple_of = pad_to_multiple_of
        self.label_pad = int(label_pad)

    def __call__(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        if not samples:
            raise ValueError("cannot collate an empty batch")
        reserved = {"attention_mask", *MEDIA_VALUE_KEYS.values(), *(f"{m}_counts" for m in MEDIA_KINDS)}
        clash = reserved & set().union(*samples)
        if clash:
            raise ValueError(f"samples carry keys the collator produces: {sorted(clash)}")
        batch: dict[str, Any] = self._pad_text(samples)
        have = sum("instruction_mask" in s for s in samples)
        if have and have != len(samples):
            raise ValueError(f"{have} of {len(samples)} samples carry an instruction_mask: all or none must")
        if have:
            batch["instruction_mask"] = self._pad_like(samples, "instruction_mask", batch["input_ids"].shape[1])
        batch.update(collect_media(samples))
        skip = {*TEXT_KEYS, "media", "instruction_mask"}
        for key in dict.fromkeys(k for s in samples for k in s if k not in skip):
            batch[key] = [s.get(key) for s in samples]
        return batch

    def _pad_text(self, samples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        rows: list[tuple[torch.Tensor, torch.Tensor]] = []
        for i, sample in enumerate(samples):
            if "input_ids" not in sample or "labels" not in sample:
                raise ValueError(f"sample {i} ({sample_name(sample)}) lacks input_ids or labels")
            ids = torch.as_tensor(sample["input_ids"], dtype=torch.long).reshape(-1)
            labels = torch.as_tensor(sample["labels"], dtype=torch.long).reshape(-1)
            if ids.numel() != labels.numel():
                raise ValueError(
                    f"sample {i} ({sample_name(sample)}): {ids.numel()} input_ids vs {labels.numel()} labels"
                )
            rows.append((ids, labels))
        length = max(ids.numel() for ids, _ in rows)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        size = (len(rows), length)
        input_ids = torch.full(size, self.pad_token_id, dtype=torch.long)
        labels = torch.full(size, self.label_pad, dtype=torch.long)
        attention_mask = torch.zeros(size, dtype=torch.long)
        for b, (ids, labs) in enumerate(rows):
            n = ids.numel()
            cols = slice(0, n) if self.padding_side == "right" else slice(length - n, length)
            input_ids[b, cols] = ids
            labels[b, cols] = labs
            attention_mask[b, cols] = 1
        return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}

    def _pad_like(self, samples: Sequence[dict[str, Any]], key: str, length: int) -> torch.Tensor:
        """``key`` of every sample padded with 0 like ``input_ids`` (same side, same length)."""
        out = torch.zeros(len(samples), length, dtype=torch.long)
        for b, sample in enumerate(samples):
            row = torch.as_tensor(sample[key], dtype=torch.long).reshape(-1)
            if row.numel() != torch.as_tensor(sample["input_ids"]).numel():
                raise ValueError(
                    f"sample {b} ({sample_name(sample)}): {key} has {row.numel()} entries for "
                    f"{torch.as_tensor(sample['input_ids']).numel()} input_ids"
                )
            cols = slice(0, row.numel()) if self.padding_side == "right" else slice(length - row.numel(), length)
            out[b, cols] = row
        return out


def sample_name(sample: dict[str, Any]) -> str:
    """How errors name a sample: its id, or "no id"."""
    return f"id {sample['id']!r}" if "id" in sample else "no id"


def collect_media(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Each modality's items stacked in sample order, with per-sample counts (shared with packing)."""
    out: dict[str, Any] = {}
    for kind in MEDIA_KINDS:
        present = any(kind in (s.get("media") or {}) for s in samples)
        if kind != "image" and not present:
            continue
        items: list[torch.Tensor] = []
        counts: list[int] = []
        first: tuple[tuple[int, ...], int] | None = None  # (shape, sample index)
        for i, sample in enumerate(samples):
            media = (sample.get("media") or {}).get(kind)
            if media is None:
                media = []
            tensors = list(media.unbind(0)) if isinstance(media, torch.Tensor) else list(media)
            for t in tensors:
                t = torch.as_tensor(t)
                if first is None:
                    first = (tuple(t.shape), i)
                elif tuple(t.shape) != first[0]:
                    raise ValueError(
                        f"{kind} items in a batch must share one shape: {first[0]} in sample {first[1]} "
                        f"({sample_name(samples[first[1]])}), {tuple(t.shape)} in sample {i} ({sample_name(sample)})"
                    )
                items.append(t)
            counts.append(len(tensors))
        out[MEDIA_VALUE_KEYS[kind]] = torch.stack(items) if items else None
        out[f"{kind}_counts"] = torch.tensor(counts, dtype=torch.long)
    return out
