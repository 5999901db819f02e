"""The resumable per-worker sample stream: shard assignment, block shuffle, source mixing, position.

Raw webdataset has no mid-epoch resumption because its shuffle buffer and shard iterators hold
hidden state. Here every bit of order is a pure function of (seed, source, pass, rank, worker,
block) and the position is a few integers per source, so a stream can be rebuilt exactly:

- Shards of a source are permuted per *pass* with ``Random((seed, source, pass))`` (a new order each
  epoch, unlike webdataset's fixed-seed reshuffle), then sliced ``[rank::world][worker::workers]``.
- Samples are read in blocks of ``block`` samples (the shuffle window; it may span shards) and each
  block is permuted with its own seeded RNG. The cursor records where the current block started
  (shard position, samples into that shard), the block number and how many of its samples were
  consumed. Restoring re-reads that one block and skips the consumed part.
- Several sources are mixed by weight with a counter-based draw ``u(seed, rank, worker, n)``.
- ``infinite=True`` (balanced training) moves each source on to its next pass when one ends;
  ``infinite=False`` (exact) runs one pass, pass number = epoch. A source whose whole pass yields
  nothing for a worker raises ``EmptySourceError`` naming it (it would otherwise spin forever).
- Where ``index.json`` gives shard counts, a shard that ends (cleanly or damaged) before its count
  has every missing sample counted as skipped, with the shard named (``short_shard`` or the
  shard error's reason).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

from .errors import EmptySourceError, SampleError
from .skips import SkipCounter
from .sources import ShardList
from .tario import ShardError, iter_shard


@dataclass
class Cursor:
    pass_: int = 0
    block_no: int = 0
    shard_pos: int = 0  # where the current block starts: index into this worker's shard slice
    offset: int = 0  # ... and how many samples into that shard
    in_block: int = 0  # samples of the current block already consumed (emitted or skipped)
    done: bool = False


def _u(*parts: Any) -> float:
    h = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2.0**64


def shards_for(
    src: ShardList, pass_: int, *, seed: int, shuffle: bool, rank: int, world: int, worker: int, workers: int
) -> list[str]:
    urls = list(src.urls)
    if shuffle:
        random.Random(f"{seed}/{src.name}/pass{pass_}").shuffle(urls)
    return urls[rank::world][worker::workers]


class SourceReader:
    """Reads one source for one worker, block by block, and knows its exact position."""

    def __init__(
        self,
        src: ShardList,
        *,
        seed: int,
        shuffle: bool,
        rank: int,
        world: int,
        worker: int,
        workers: int,
        block: int,
        infinite: bool,
        skips: SkipCounter,
        cursor: Cursor,
    ):
        self.src, self.seed, self.shuffle = src, seed, shuffle
        self.rank, self.world, self.worker, self.workers = rank, world, worker, workers
        self.block_size, self.infinite, self.skips = max(1, block), infinite, skips
        self.cursor = cursor
        self.empty = not shards_for(src, 0, **self._slice())
        self._expected = dict(zip(src.urls, src.counts)) if src.counts is not None else {}
        self._block: list[dict] | None = None
        self._end = (0, 0)
        self._open: tuple[int, int, Iterator[dict]] | None = None
        self._open_idx = 0

    def _slice(self) -> dict:
        return dict(
            seed=self.seed,
            shuffle=self.shuffle,
            rank=self.rank,
            world=self.world,
            worker=self.worker,
            workers=self.workers,
        )

    def _fill(self, count_errors: bool) -> None:
        """Read the current block starting at the cursor; permute it; remember where it ended."""
        c = self.cursor
        shards = shards_for(self.src, c.pass_, **self._slice())
        block: list[dict] = []
        pos, off = c.shard_pos, c.offset
        while len(block) < self.block_size and pos < len(shards):
            try:
                it = self._open_at(c.pass_, pos, off, shards[pos])
                while len(block) < self.block_size:
                    sample = next(it, None)
                    if sample is None:
                        break
                    self._open_idx += 1
                    block.append(sample)
            except ShardError as e:
                if count_errors:
                    self._shard_ended(shards[pos], e.samples_read, e)
                self._open = None  # the rest of this shard is lost; go on with the next one
                pos, off = pos + 1, 0
                continue
            if len(block) == self.block_size:
                off = self._open_idx
                break
            if count_errors:
                self._shard_ended(shards[pos], self._open_idx, None)
            self._open = None
            pos, off = pos + 1, 0
        random.Random(f"{self.seed}/{self.src.name}/p{c.pass_}/r{self.rank}/w{self.worker}/b{c.block_no}").shuffle(
            block
        )
        self._block, self._end = block, (pos, off)

    def _shard_ended(self, url: str, read: int, error: ShardError | None) -> None:
        """Count what shard ``url`` failed to deliver: with an index count, every missing sample;
        without one, a damaged shard counts as one skip (the sample the damage hit)."""
        expected = self._expected.get(url)
        if expected is None:
            if error is not None:
                self.skips.skip(SampleError(error.reason, error.detail, key=f"{url}@{read}"))
            return
        self.skips.shard_done(expected, read)
        missing = expected - read
        if error is not None:
            self.skips.skip(
                SampleError(
                    error.reason,
                    f"{error.detail}; index.json lists {expected} samples, read {read}",
                    key=f"{url}@{read}",
                ),
                count=max(1, missing),
            )
        elif missing > 0:
            self.skips.skip(
                SampleError(
                    "short_shard", f"index.json lists {expected} samples, the shard ended after {read}", key=url
                ),
                count=missing,
            )

    def _open_at(self, pass_: int, pos: int, off: int, url: str) -> Iterator[dict]:
        """An iterator over shard ``pos`` positioned at sample ``off``; reuses the open one if it is
        exactly there (the normal case), else opens the shard and skips (after a restore)."""
        if self._open is not None and self._open[:2] == (pass_, pos) and self._open_idx == off:
            return self._open[2]
        it = iter_shard(url)
        for _ in range(off):
            if next(it, None) is None:
                break
        self._open, self._open_idx = (pass_, pos, it), off
        return it

    def next(self) -> dict | None:
        """Next raw sample of this source, or None when the (finite) pass is over."""
        c = self.cursor
        while not c.done:
            if self._block is None:
                self._fill(count_errors=c.in_block == 0)
            assert self._block is not None
            if c.in_block < len(self._block):
                sample = self._block[c.in_block]
                c.in_block += 1
                return sample
            if not self._block and self._end[0] >= len(shards_for(self.src, c.pass_, **self._slice())):
                # The pass is over (an empty block at the end of the shard list).
                if self.infinite:
                    if c.block_no == 0:  # not one sample in a whole pass: it never will have one
                        n = len(shards_for(self.src, c.pass_, **self._slice()))
                        raise EmptySourceError(
                            f"data source {self.src.name!r} yields no samples (rank {self.rank}, "
                            f"worker {self.worker}: its {n} shard(s) are empty, unreadable or cut "
                            f"before the first sample; skip counts: {dict(self.skips.skipped)})"
                        )
                    self._new_pass()
                    continue
                c.done = True
                return None
            c.shard_pos, c.offset = self._end
            c.block_no, c.in_block, self._block = c.block_no + 1, 0, None
        return None

    def _new_pass(self) -> None:
        c = self.cursor
        c.pass_, c.block_no, c.shard_pos, c.offset, c.in_block = c.pass_ + 1, 0, 0, 0, 0
        self._block = None


class WorkerStream:
    """Mixes the sources of one (rank, worker) and applies ``process`` (decode + tokenize) lazily."""

    def __init__(
        self,
        sources: list[ShardList],
        *,
        process: Callable[[dict], dict],
        seed: int,
        shuffle_shards: bool,
        block: int,
        rank: int,
        world: int,
        worker: int,
        workers: int,
        infinite: bool,
        epoch: int,
        skips: SkipCounter,
        state: dict | None = None,
    ):
        self.process, self.seed, self.rank, self.worker = process, seed, rank, worker
        self.skips = skips
        self.n = 0
        cursors = {s.name: Cursor(pass_=0 if infinite else epoch) for s in sources}
        if state:
            self.n = int(state["n"])
            cursors = {name: Cursor(**c) for name, c in state["sources"].items()}
            skips.load(state["skips"])
        self.readers = [
            SourceReader(
                s,
                seed=seed,
                shuffle=shuffle_shards,
                rank=rank,
                world=world,
                worker=worker,
                workers=workers,
                block=block,
                infinite=infinite,
                skips=skips,
                cursor=cursors[s.name],
            )
            for s in sources
        ]
        self.weights = [s.weight for s in sources]

    def state(self) -> dict:
        return {
            "n": self.n,
            "sources": {r.src.name: asdict(r.cursor) for r in self.readers},
            "skips": self.skips.state(),
        }

    def _pick(self) -> SourceReader | None:
        live = [(r, w) for r, w in zip(self.readers, self.weights) if not r.empty and not r.cursor.done]
        if not live:
            return None
        x = _u(self.seed, self.rank, self.worker, self.n) * sum(w for _, w in live)
        for r, w in live:
            x -= w
            if x < 0:
                return r
        return live[-1][0]

    def __iter__(self) -> Iterator[dict]:
        empty_run = 0
        while True:
            reader = self._pick()
            if reader is None:
                return
            raw = reader.next()
            if raw is None:
                continue
            self.n += 1
            raw["__source__"] = reader.src.name
            try:
                out = self.process(raw)
                for reason in out.pop("__notes__", ()) if isinstance(out, dict) else ():
                    self.skips.note(reason)
            except SampleError as e:
                self.skips.skip(e if e.key else e.with_key(raw.get("__key__", "?")), where=raw.get("__url__", ""))
                empty_run += 1
                if empty_run > 100_000:
                    raise RuntimeError(f"worker {self.worker}: 100000 consecutive samples skipped") from e
                continue
            empty_run = 0
            self.skips.ok()
            yield out
