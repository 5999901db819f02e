"""From a ``DataConfig`` to batches: the IterableDataset, the DataLoader, and the loader's state.

``StreamingLoader`` is what training code uses:

    loader = build_loader(cfg, process=..., collate=...)
    for batch in loader: ...
    state = loader.state_dict()          # save with the checkpoint (one per rank)
    loader.load_state_dict(state)        # a resumed run sees exactly the samples it had not seen

Each batch is built inside one dataloader worker and carries that worker's stream position
(``_state``) and id (``_worker``); the loader keeps the latest per worker, so the saved position
is what the *consumer* has seen, not what workers prefetched. On restore, physical worker 0 takes
the role of the worker that was next in the round-robin, so the batch order continues exactly.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

from .config import DataConfig
from .errors import DataConfigError, TooManySkipsError
from .skips import SkipCounter, format_summary, merge
from .sources import ShardList, resolve
from .stream import WorkerStream

log = logging.getLogger("llava_wb.data")
STATE_VERSION = 1


def dist_info() -> tuple[int, int]:
    """(rank, world_size) from torch.distributed when initialised, else the launcher's env vars."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    except ImportError:
        pass
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def list_collate(samples: list[dict]) -> dict:
    """Collate for untokenized samples (round trips, inspection): a batch is a list."""
    return {"samples": samples}


class StreamDataset:
    """IterableDataset of *batches*; constructed per rank. Workers are spawned by the DataLoader."""

    def __init__(
        self,
        cfg: DataConfig,
        sources: list[ShardList],
        *,
        rank: int,
        world: int,
        process: Callable[[dict], dict],
        collate: Callable[[list[dict]], dict],
    ):
        self.cfg, self.sources, self.rank, self.world = cfg, sources, rank, world
        self.process, self.collate = process, collate
        self.epoch = 0
        self.resume: dict[int, dict] = {}
        self.worker_offset = 0

    def __iter__(self) -> Iterator[dict]:
        import torch.utils.data as tud

        from .transport import pack

        info = tud.get_worker_info()
        for batch in self._batches(info):
            # from a worker process: the tensors in one shared block, one descriptor to receive (transport)
            yield batch if info is None else pack(batch)

    def _batches(self, info: Any) -> Iterator[dict]:
        workers = max(1, self.cfg.num_workers)
        physical = info.id if info is not None else 0
        worker = (physical + self.worker_offset) % workers
        skips = SkipCounter(self.cfg.max_skip_rate, self.cfg.skip_check_min_samples, self.cfg.log_skips)
        stream = WorkerStream(
            self.sources,
            process=self.process,
            seed=self.cfg.seed,
            shuffle_shards=self.cfg.shuffle_shards,
            block=self.cfg.shuffle_buffer or 1,
            rank=self.rank,
            world=self.world,
            worker=worker,
            workers=workers,
            infinite=self.cfg.epoch_mode == "balanced",
            epoch=self.epoch,
            skips=skips,
            state=self.resume.get(worker),
        )
        if self.cfg.packing is not None:
            from .packing import packed_batches

            done = (self.resume.get(worker) or {}).get("pack_done", ())
            for rows, state in packed_batches(stream, self.cfg.packing, self.cfg.batch_size, done):
                out = self.collate(rows)
                out["_worker"], out["_state"] = worker, state
                yield out
            yield {"_worker": worker, "_state": {**stream.state(), "pack_done": []}, "_state_only": True}
            return
        batch: list[dict] = []
        for sample in stream:
            batch.append(sample)
            if len(batch) == self.cfg.batch_size:
                yield self._emit(batch, worker, stream)
                batch = []
        if batch:
            yield self._emit(batch, worker, stream)
        else:  # the stream counted its last shard after the last full batch left: send that count on
            yield {"_worker": worker, "_state": stream.state(), "_state_only": True}

    def _emit(self, batch: list[dict], worker: int, stream: WorkerStream) -> dict:
        out = self.collate(batch)
        out["_worker"] = worker
        out["_state"] = stream.state()
        return out


def _passthrough(batch: dict) -> dict:
    """Batches are collated inside the workers; without this torch would walk every batch again
    (``default_convert``), about 2 ms per batch."""
    return batch


def _as_iterable(ds: StreamDataset):
    import torch.utils.data as tud

    class _Iterable(tud.IterableDataset):
        def __iter__(self):
            return iter(ds)

    return _Iterable()


class StreamingLoader:
    """Iterates batches for this rank; ``len()`` is the number of batches per epoch when known."""

    def __init__(
        self,
        cfg: DataConfig,
        *,
        process: Callable[[dict], dict],
        collate: Callable[[list[dict]], dict] = list_collate,
        rank: int | None = None,
        world_size: int | None = None,
    ):
        if not cfg.sources:
            raise DataConfigError("data.sources is empty: give at least one shard folder, pattern or URL")
        r, w = dist_info()
        self.rank = r if rank is None else rank
        self.world = w if world_size is None else world_size
        self.cfg = cfg
        self.sources = [resolve(s) for s in cfg.sources]
        for s in self.sources:
            if len(s.urls) < self.world:
                raise DataConfigError(
                    f"data source {s.name!r} has {len(s.urls)} shard(s), fewer than world_size {self.world}: "
                    "some ranks would get no data; write smaller shards (llava-wb-convert --shard-size)"
                )
            if cfg.epoch_mode == "balanced" and s.total == 0:
                raise DataConfigError(
                    f"data source {s.name!r}: its index.json lists 0 samples (every record rejected "
                    "at conversion?); balanced mode would wait for it forever: drop the source or "
                    "fix its data"
                )
            idle = self.world * max(1, cfg.num_workers) - len(s.urls)
            if idle > 0 and self.rank == 0:
                log.warning(
                    "source %r: %d shards for %d ranks x %d workers: %d worker slot(s) idle",
                    s.name,
                    len(s.urls),
                    self.world,
                    cfg.num_workers,
                    idle,
                )
        self.batches_per_epoch = self._batches_per_epoch()
        self.dataset = StreamDataset(
            cfg, self.sources, rank=self.rank, world=self.world, process=process, collate=collate
        )
        self.epoch = 0
        self.batches_in_epoch = 0
        self.last_worker = -1
        self.worker_states: dict[int, dict] = {}

    def _batches_per_epoch(self) -> int | None:
        if self.cfg.batches_per_epoch is not None:
            return self.cfg.batches_per_epoch
        if self.cfg.epoch_mode == "exact" or self.cfg.packing is not None:
            return None  # packed batches hold a varying number of samples: no count from index.json
        if any(s.total is None for s in self.sources):
            raise DataConfigError(
                "data.batches_per_epoch must be set for epoch_mode 'balanced' when a source has no "
                "index.json with sample counts (URLs, globs, list files)"
            )
        total = sum(s.total or 0 for s in self.sources)
        n = total // (self.world * self.cfg.batch_size)
        if n == 0:
            raise DataConfigError(
                f"{total} samples are fewer than one batch per rank "
                f"(batch_size {self.cfg.batch_size} x world_size {self.world})"
            )
        return n

    def __len__(self) -> int:
        if self.batches_per_epoch is None:
            why = "packed batches" if self.cfg.packing is not None else "exact epoch_mode"
            raise TypeError(
                f"{why} without data.batches_per_epoch have no fixed length: set data.batches_per_epoch "
                "or train.max_steps"
            )
        return self.batches_per_epoch

    def _dataloader(self):
        import torch.utils.data as tud

        workers = self.cfg.num_workers
        self.dataset.epoch = self.epoch
        self.dataset.resume = dict(self.worker_states)
        self.dataset.worker_offset = (self.last_worker + 1) % max(1, workers)
        kw: dict[str, Any] = dict(batch_size=None, num_workers=workers, collate_fn=_passthrough)
        if workers > 0:
            kw.update(prefetch_factor=self.cfg.prefetch_factor, persistent_workers=False)
        return tud.DataLoader(_as_iterable(self.dataset), **kw)

    def __iter__(self) -> Iterator[dict]:
        from .transport import unpack

        limit = self.batches_per_epoch
        if limit is not None and self.batches_in_epoch >= limit:
            self._next_epoch()
        for batch in self._dataloader():
            batch = unpack(batch)
            worker, state = batch.pop("_worker"), batch.pop("_state")
            self.worker_states[worker] = state
            if batch.pop("_state_only", False):  # a worker's final counts, no samples
                self._check_skips()
                continue
            self.last_worker = worker
            self.batches_in_epoch += 1
            self._check_skips()
            yield batch
            if limit is not None and self.batches_in_epoch >= limit:
                break
        else:
            if limit is not None and self.batches_in_epoch < limit:
                raise RuntimeError(
                    f"rank {self.rank}: data ran out after {self.batches_in_epoch} of {limit} batches "
                    f"(all shards unreadable or skipped?)\n{self.skip_summary()}"
                )
        self._next_epoch()

    def _next_epoch(self) -> None:
        self.epoch += 1
        self.batches_in_epoch = 0
        if self.cfg.epoch_mode == "exact":
            # A fresh pass next epoch; the round-robin restarts at worker 0. Skip counts carry on.
            self._carried_skips = self.skip_state()
            self.worker_states, self.last_worker = {}, -1

    # --- skips ---------------------------------------------------------------------------------
    def skip_state(self, state: dict | None = None) -> dict:
        """The skips counted so far, or as of ``state`` (a ``state_dict()`` taken earlier)."""
        if state is None:
            state = {"carried_skips": getattr(self, "_carried_skips", {}), "workers": self.worker_states}
        return merge([state["carried_skips"]] + [s["skips"] for s in state["workers"].values()])

    def skip_summary(self, state: dict | None = None) -> str:
        return format_summary(self.skip_state(state))

    def _check_skips(self) -> None:
        st = self.skip_state()
        c = SkipCounter(self.cfg.max_skip_rate, self.cfg.skip_check_min_samples)
        c.load(st)
        try:
            c.check()
        except TooManySkipsError as e:
            raise TooManySkipsError(f"rank {self.rank}: {e}") from None

    # --- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "version": STATE_VERSION,
            "epoch": self.epoch,
            "batches_in_epoch": self.batches_in_epoch,
            "last_worker": self.last_worker,
            "num_workers": self.cfg.num_workers,
            "rank": self.rank,
            "world_size": self.world,
            "seed": self.cfg.seed,
            "epoch_mode": self.cfg.epoch_mode,
            "sources": [s.name for s in self.sources],
            "packing": self._packing(),
            "batch_size": self.cfg.batch_size,
            "workers": {str(k): v for k, v in self.worker_states.items()},
            "carried_skips": getattr(self, "_carried_skips", {}),
        }

    def _packing(self) -> dict | None:
        return None if self.cfg.packing is None else self.cfg.to_dict()["packing"]

    def load_state_dict(self, state: dict) -> None:
        expect = {
            "version": STATE_VERSION,
            "num_workers": self.cfg.num_workers,
            "world_size": self.world,
            "seed": self.cfg.seed,
            "epoch_mode": self.cfg.epoch_mode,
            "sources": [s.name for s in self.sources],
            "rank": self.rank,
        }
        if "packing" in state:  # states saved before packing existed carry neither key
            expect.update(packing=self._packing(), batch_size=self.cfg.batch_size)
        for k, v in expect.items():
            if state.get(k) != v:
                raise DataConfigError(
                    f"loader state was saved with {k}={state.get(k)!r}, this run has {v!r}; "
                    "exact resumption needs the same value"
                )
        self.epoch, self.batches_in_epoch = int(state["epoch"]), int(state["batches_in_epoch"])
        self.last_worker = int(state["last_worker"])
        self.worker_states = {int(k): v for k, v in state["workers"].items()}
        self._carried_skips = state.get("carried_skips", {})


def build_loader(
    cfg: DataConfig,
    *,
    process: Callable[[dict], dict] | None = None,
    collate: Callable[[list[dict]], dict] = list_collate,
    rank: int | None = None,
    world_size: int | None = None,
) -> StreamingLoader:
    """The loader for this rank. ``process`` maps a raw sample to a training sample (default:
    ``decode_sample`` with the config's media settings, media decoded)."""
    if process is None:
        from .pipeline import DecodeOnly

        process = DecodeOnly(cfg.media)
    return StreamingLoader(cfg, process=process, collate=collate, rank=rank, world_size=world_size)


def build_train_loader(
    cfg: DataConfig,
    tokenizer,
    *,
    media_tokens: dict[str, int],
    rank: int | None = None,
    world_size: int | None = None,
    padding_side: str = "right",
    media: Any = None,
) -> StreamingLoader:
    """Tokenized, padded training batches (``input_ids``, ``labels``, ``attention_mask``, ``pixel_values``...).
    ``media``: the decoding settings (``MediaSettings``; default ``cfg.media``), e.g. with the model's
    frames per clip filled in (``llava_wb.model.media.media_settings``)."""
    from .collate import Collator
    from .pipeline import TrainSample
    from .sources import source_name

    process = TrainSample(
        tokenizer,
        template=cfg.template,
        max_length=cfg.max_length,
        media=media or cfg.media,
        media_tokens=media_tokens,
        source_templates={source_name(s): s.template for s in cfg.sources if s.template},
    )
    if cfg.packing is not None:
        if padding_side != "right":
            raise DataConfigError("packed batches are for training: padding_side must be 'right'")
        from .packing import PackedCollator

        collate: Callable[[list], dict] = PackedCollator(pad_token_id=tokenizer.pad_token_id)
    else:
        collate = Collator(pad_token_id=tokenizer.pad_token_id, padding_side=padding_side)
    return StreamingLoader(cfg, process=process, collate=collate, rank=rank, world_size=world_size)
