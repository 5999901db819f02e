"""Sequence packing: several samples per LLM row, so the LLM computes no padding.

With ``data.packing`` set, each batch is ``data.batch_size`` *rows* of at most
``packing.max_tokens`` positions, filled from a pool of ``packing.buffer`` tokenized samples:

- A sample's length is its ``input_ids`` length after ``TrainSample`` expanded every ``<image>``,
  ``<video>`` and ``<audio>`` to the model's tokens per item. Those counts are the model's
  ``media_tokens``, i.e. the reducer's *output* (``llava_wb.model.tokens``), so a row never holds
  576 placeholder slots for an image the reducer cuts to 144.
- Each row starts with the oldest pending sample (no sample waits for ever), then takes the
  largest pending sample that still fits (``best_fit``) or pending samples in arrival order that fit
  (``first_fit``), until none fits; or (``max_fill``) the set of pending samples that fills the rest
  of the row the most, the oldest preferred among equal fills (``fill_row``: a subset sum over the
  pool, exact). Rows are right-padded to the longest row of the batch.
- ``PackedCollator`` writes one row as ``input_ids``/``labels``/``position_ids`` with positions
  restarting at 0 for every sample and *no* ``attention_mask``: transformers 5.x then builds a
  block-diagonal causal mask from the restarts (SDPA, eager, flex) or uses them as varlen
  boundaries (flash-attention 2), so no token attends across samples. The first label of every
  sample is -100, so no position predicts across a boundary. Media stay in sample order (row by
  row), ``*_counts`` are per row, and ``instruction_mask`` is the samples' masks side by side.

Resumption. The pool is part of the stream's position: the state saved with a batch is the stream
position from which the oldest still-pending sample is read again, plus the ordinals (counted
from there) of the samples read after it that were already emitted. A restored worker re-reads
from that position, drops the emitted ones and refills the same pool, so the batches continue
exactly; the state stays a few hundred bytes instead of carrying the pending samples' pixels.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from llava_wb.constants import IGNORE_INDEX

from .collate import collect_media, sample_name
from .config import PackingConfig


@dataclass
class Pending:
    """A sample in the pool: its ordinal in the worker's stream, length, the sample, and the
    stream state from which it is read again."""

    ordinal: int
    length: int
    sample: dict[str, Any]
    before: dict[str, Any]


class RowPacker:
    """The pool and the packing policy; ``take()`` removes the samples of one batch from the pool."""

    def __init__(self, cfg: PackingConfig, rows: int):
        self.cfg, self.rows = cfg, rows
        self.pool: list[Pending] = []

    def add(self, item: Pending) -> None:
        if item.length > self.cfg.max_tokens:
            sample = item.sample
            raise ValueError(
                f"sample {sample_name(sample)} has {item.length} LLM tokens, more than data.packing.max_tokens "
                f"{self.cfg.max_tokens}: set max_tokens >= data.max_length"
            )
        self.pool.append(item)

    def ready(self) -> bool:
        return len(self.pool) >= self.cfg.buffer

    def take(self) -> list[list[Pending]]:
        """Up to ``rows`` rows from the pool (fewer only when the pool runs out)."""
        rows: list[list[Pending]] = []
        while self.pool and len(rows) < self.rows:
            row = [self.pool.pop(0)]
            lengths, free = [p.length for p in self.pool], self.cfg.max_tokens - row[0].length
            if self.cfg.strategy == "max_fill":
                picks = fill_row(lengths, free)
            else:
                picks = greedy_row(lengths, free, first_fit=self.cfg.strategy == "first_fit")
            row += [self.pool[i] for i in picks]
            for i in sorted(picks, reverse=True):
                del self.pool[i]
            rows.append(row)
        return rows


def greedy_row(lengths: Sequence[int], free: int, first_fit: bool) -> list[int]:
    """Indices of the ``lengths`` in the order a greedy policy takes them, one after another until none
    fits: the first that fits (``first_fit``) or the largest that fits, the earliest among equals."""
    picks, left = [], list(range(len(lengths)))
    while free > 0:
        fits = [i for i in left if lengths[i] <= free]
        if not fits:
            break
        pick = fits[0] if first_fit else max(fits, key=lengths.__getitem__)
        picks.append(pick)
        left.remove(pick)
        free -= lengths[pick]
    return picks


def fill_row(lengths: Sequence[int], free: int) -> list[int]:
    """Indices (ascending) of the ``lengths`` whose sum is the largest one <= ``free``; among subsets with
    that sum, one that reaches least far into the list (the pool is in arrival order, so older samples go
    first): an item is left out whenever the items before it can make the sum without it. A subset sum
    over bitsets (Python ints, bit s set: sum s reachable), one shift per item, stopping at the first
    item that makes ``free`` exactly."""
    if free <= 0:
        return []
    cap = (1 << (free + 1)) - 1
    reach = [1]  # reach[i]: the sums the first i items can make
    for n in lengths:
        now = (reach[-1] | (reach[-1] << n)) & cap
        reach.append(now)
        if now >> free & 1:
            break
    total = reach[-1].bit_length() - 1
    picks = []
    for i in range(len(reach) - 2, -1, -1):
        if not reach[i] >> total & 1:  # the first i items cannot make it: item i is in
            picks.append(i)
            total -= lengths[i]
    return picks[::-1]


def packed_batches(
    stream: Any, cfg: PackingConfig, rows: int, done: Sequence[int] = ()
) -> Iterator[tuple[list[list[dict]], dict[str, Any]]]:
    """``(rows of samples, state)`` from a ``WorkerStream`` (see the module docstring for the state).
    ``done``: ordinals, counted from the stream's restored position, that were already emitted."""
    packer = RowPacker(cfg, rows)
    skip = set(done)
    emitted = set(skip)  # ordinals emitted that the oldest pending one precedes
    it = iter(stream)
    k = 0
    while True:
        before = stream.state()
        sample = next(it, None)
        if sample is None:
            break
        if "input_ids" not in sample:
            raise ValueError(
                "data.packing packs tokenized samples (build_train_loader); this loader yields samples "
                "without input_ids: set data.packing: null for it"
            )
        if k in skip:  # emitted before the restore: read again only to rebuild the pool
            skip.discard(k)
        else:
            packer.add(Pending(k, len(sample["input_ids"]), sample, before))
        k += 1
        if packer.ready():
            yield _emit(packer, emitted, stream)
    while packer.pool:
        yield _emit(packer, emitted, stream)


def _emit(packer: RowPacker, emitted: set[int], stream: Any) -> tuple[list[list[dict]], dict[str, Any]]:
    rows = packer.take()
    emitted.update(p.ordinal for row in rows for p in row)
    if packer.pool:
        oldest = min(packer.pool, key=lambda p: p.ordinal)
        emitted.difference_update([o for o in emitted if o < oldest.ordinal])
        state = {**oldest.before, "pack_done": sorted(o - oldest.ordinal for o in emitted)}
    else:
        emitted.clear()
        state = {**stream.state(), "pack_done": []}
    return [[p.sample for p in row] for row in rows], state


class PackedCollator:
    """Rows of samples -> one packed batch (see the module docstring).

    Output: ``input_ids``/``labels``/``position_ids``/``token_mask`` ``[R, L]`` (``token_mask``: 1 on
    real tokens, for counting; it is not an attention mask), ``instruction_mask`` when the samples
    carry one, the media of ``Collator`` with per-row counts, ``samples_per_row`` and every other key
    as a flat per-sample list in row order."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        self.pad_token_id = int(pad_token_id)
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, rows: Sequence[Sequence[dict[str, Any]]]) -> dict[str, Any]:
        if not rows or not all(rows):
            raise ValueError("cannot collate an empty packed batch or an empty row")
        flat = [s for row in rows for s in row]
        with_mask = sum("instruction_mask" in s for s in flat)
        if with_mask and with_mask != len(flat):
            raise ValueError(f"{with_mask} of {len(flat)} samples carry an instruction_mask: all or none must")
        keys = ("input_ids", "labels", "instruction_mask") if with_mask else ("input_ids", "labels")
        pieces = [[[self._field(s, key) for s in row] for key in keys] for row in rows]
        length = max(sum(p.numel() for p in row[0]) for row in pieces)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        size = (len(rows), length)
        out = {
            "input_ids": torch.full(size, self.pad_token_id, dtype=torch.long),
            "labels": torch.full(size, IGNORE_INDEX, dtype=torch.long),
            "position_ids": torch.zeros(size, dtype=torch.long),
            "token_mask": torch.zeros(size, dtype=torch.long),
        }
        if with_mask:
            out["instruction_mask"] = torch.zeros(size, dtype=torch.long)
        for r, (row, fields) in enumerate(zip(rows, pieces)):
            col = 0
            for i, sample in enumerate(row):
                ids, labels = fields[0][i], fields[1][i].clone()
                if ids.numel() != labels.numel():
                    raise ValueError(
                        f"sample {sample_name(sample)}: {ids.numel()} input_ids vs {labels.numel()} labels"
                    )
                n = ids.numel()
                labels[0] = IGNORE_INDEX  # predicted from the previous sample's last token: never
                out["input_ids"][r, col : col + n] = ids
                out["labels"][r, col : col + n] = labels
                out["position_ids"][r, col : col + n] = torch.arange(n)
                out["token_mask"][r, col : col + n] = 1
                if with_mask:
                    mask = fields[2][i]
                    if mask.numel() != n:
                        raise ValueError(
                            f"sample {sample_name(sample)}: instruction_mask has {mask.numel()} entries for {n} input_ids"
                        )
                    out["instruction_mask"][r, col : col + n] = mask
                col += n
            # the padding tail is one more "sequence" (positions from 0): it attends only to itself
            out["position_ids"][r, col:] = torch.arange(length - col)
        media = collect_media(flat)
        per_row = torch.tensor([len(row) for row in rows])
        row_of = torch.repeat_interleave(torch.arange(len(rows)), per_row)
        for key, value in media.items():
            if key.endswith("_counts"):
                value = torch.zeros(len(rows), dtype=torch.long).index_add_(0, row_of, value)
            out[key] = value
        out["samples_per_row"] = per_row
        skip = {"input_ids", "labels", "instruction_mask", "media"}
        for key in dict.fromkeys(k for s in flat for k in s if k not in skip):
            out[key] = [s.get(key) for s in flat]
        return out

    @staticmethod
    def _field(sample: dict[str, Any], key: str) -> torch.Tensor:
        if key not in sample:
            raise ValueError(f"sample {sample_name(sample)} lacks {key}")
        return torch.as_tensor(sample[key], dtype=torch.long).reshape(-1)


def padding_fraction(batch: dict[str, Any]) -> float:
    """Share of a batch's LLM positions that are padding (packed or padded batch)."""
    mask = batch.get("token_mask", batch.get("attention_mask"))
    return 1.0 - float(mask.sum()) / mask.numel()
