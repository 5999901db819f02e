"""A memory cache of a frozen tower's features, keyed by the content of each input (image, frame or audio clip).

With the tower frozen (LLaVA's stages 1 and 2), an image's features depend on its pixels only, so a
run that sees its data for several epochs recomputes the same features again and again. On a small
model the tower is a large part of the step: in the CPU demo the frozen tower was 41% of a stage-2
step (py-spy), each clip's frames seen about three times. ``FeatureCache`` keeps the selected hidden
state of every image (or video frame; an audio tower: every clip's output) it has seen, keyed by a
hash of the input values, and the tower's ``forward`` computes only the inputs it has not seen.

It is exact by construction, and guarded:
- it serves only while no tower parameter requires a gradient (a cached tensor has no graph);
- every parameter's storage and in-place version is part of the cache's state: an optimizer step,
  ``load_state_dict`` or ``.to()`` on the tower empties it before the next lookup;
- a tower with dropout is refused (its features are not a function of the pixels in training mode).
Features computed in a batch of another size may differ from a fresh computation by float
rounding (1e-7 here), as any change of batch size does.

``CachedTower`` gives a tower module the switch and the two entry points (``VisionTower``,
``AudioTower``: the audio tower's log-mel input is keyed the same way).

Enable it with ``train.feature_cache_mb`` (0: off, the default; the size is per frozen tower). It
pays off for runs of several epochs; at LLaVA scale (one epoch of 665K images) every lookup misses
and it only costs memory and hashing (and a device-to-host copy of the pixels on a GPU). When full
it stops storing and counts the images it could not keep.

``warm`` fills it without serving: ``train.feature_prefetch`` calls it from a background thread on
the next batch's images while the current step computes (``llava_wb.train.trainer.StreamFeed``), so
on a CPU with a core to spare even the first epoch's features cost the step nothing. A lock keeps
the entries and counts consistent between the two threads; the tower computes and the rows are
copied outside it.
"""

from __future__ import annotations

import hashlib
import threading
from typing import Any

import torch
from torch import nn


class FeatureCache:
    """Features by pixel content, up to ``max_bytes`` (see the module docstring)."""

    def __init__(self, max_bytes: int):
        if max_bytes <= 0:
            raise ValueError(f"a feature cache needs max_bytes > 0, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self.entries: dict[bytes, torch.Tensor] = {}
        self.bytes = 0
        self.weights: tuple[tuple[int, int], ...] | None = None
        self.totals = {"hits": 0, "misses": 0, "not_stored": 0, "invalidated": 0, "prefetched": 0}
        self.window = {"hits": 0, "misses": 0}
        self.lock = threading.Lock()  # the prefetch thread stores while the step looks up

    @staticmethod
    def keys(batch: torch.Tensor) -> list[bytes]:
        """The content key of each input of ``batch [N, ...]``: SHA-256 of its dtype, shape and value
        bytes. One host copy and one byte view of the whole batch, each row hashed from that view
        without a copy; SHA-256 runs on the CPU's SHA extensions where it has them (2.0x faster than
        the per-image blake2b this replaced, ``benchmarks/bench_overheads.py``)."""
        data = batch.detach().contiguous().cpu()
        if data.shape[0] == 0:
            return []
        per_row = data[0].numel() * data.element_size()
        rows = data.view(torch.uint8).numpy().reshape(data.shape[0], per_row)  # a bool/bf16 batch too
        kind = f"{data.dtype}{tuple(data.shape[1:])}".encode()
        out = []
        for row in rows:
            digest = hashlib.sha256(kind)
            digest.update(row.data)
            out.append(digest.digest())
        return out

    def check_weights(self, module: nn.Module) -> None:
        """Empty the cache if any parameter of ``module`` changed since the entries were made."""
        state = tuple((p.data_ptr(), p._version) for p in module.parameters())
        with self.lock:
            if state != self.weights:
                if self.entries:
                    self.totals["invalidated"] += len(self.entries)
                self.entries.clear()
                self.bytes = 0
                self.weights = state

    def features(self, pixel_values: torch.Tensor, compute: Any, module: nn.Module) -> torch.Tensor:
        """``compute(pixel_values)`` for a batch ``[N, ...]``, from the cache where it has the image."""
        keys, rows = self._lookup(pixel_values, module)
        missing = [i for i, row in enumerate(rows) if row is None]
        if missing:
            fresh = compute(pixel_values[missing])
            computed: dict[bytes, torch.Tensor] = {}
            for row, i in zip(fresh, missing, strict=True):
                rows[i] = computed.setdefault(keys[i], row)  # a repeat inside the batch: the first row
            self._store_all(computed)
        with self.lock:
            self._count(len(keys) - len(missing), len(missing))
        return torch.stack(rows)

    def warm(self, pixel_values: torch.Tensor, compute: Any, module: nn.Module) -> int:
        """Compute and store the images of ``pixel_values`` the cache lacks, serving nothing (the
        prefetch path: ``features`` later counts them as hits). Returns how many it computed."""
        keys, rows = self._lookup(pixel_values, module)
        missing = [i for i, row in enumerate(rows) if row is None]
        if missing:
            fresh = compute(pixel_values[missing])
            self._store_all({keys[i]: row for row, i in zip(fresh, missing, strict=True)})
            with self.lock:
                self.totals["prefetched"] += len(missing)
        return len(missing)

    def _lookup(self, pixel_values: torch.Tensor, module: nn.Module) -> tuple[list[bytes], list[Any]]:
        """Each image's key and its cached row (None where the cache lacks it), read under the lock."""
        self.check_weights(module)
        keys = self.keys(pixel_values)
        with self.lock:
            return keys, [self.entries.get(k) for k in keys]

    def _store_all(self, rows: dict[bytes, torch.Tensor]) -> None:
        copies = {key: row.detach().clone() for key, row in rows.items()}  # outside the lock
        with self.lock:
            for key, row in copies.items():
                self.store(key, row)

    def store(self, key: bytes, row: torch.Tensor) -> None:
        """Keep ``row`` (a copy the caller owns) under ``key`` unless present or over ``max_bytes``
        (call with the lock held)."""
        if key in self.entries:
            return
        size = row.numel() * row.element_size()
        if self.bytes + size > self.max_bytes:
            self.totals["not_stored"] += 1
            return
        self.entries[key] = row
        self.bytes += size

    def _count(self, hits: int, misses: int) -> None:
        for d in (self.totals, self.window):
            d["hits"] += hits
            d["misses"] += misses

    def take_window(self) -> float:
        """The hit fraction since the last call (for the training log), and start a new window."""
        with self.lock:
            seen = self.window["hits"] + self.window["misses"]
            frac = self.window["hits"] / seen if seen else 0.0
            self.window = {"hits": 0, "misses": 0}
        return frac

    def summary(self) -> dict[str, Any]:
        seen = self.totals["hits"] + self.totals["misses"]
        return {
            **self.totals,
            "hit_frac": round(self.totals["hits"] / seen, 4) if seen else 0.0,
            "entries": len(self.entries),
            "mbytes": round(self.bytes / 2**20, 1),
            "max_mbytes": round(self.max_bytes / 2**20, 1),
        }


class CachedTower:
    """Mixin for a tower ``nn.Module`` wrapping a transformers model in ``self.model``: an optional
    ``FeatureCache`` that serves while no parameter of the tower requires a gradient."""

    feature_cache: FeatureCache | None = None

    def enable_feature_cache(self, max_bytes: int) -> FeatureCache:
        """Serve the features of inputs seen before from memory while the tower is frozen; returns
        the cache (its ``summary()`` has the hit counts)."""
        if has_dropout(self.model):  # type: ignore[attr-defined]
            raise ValueError(
                f"{type(self).__name__} has dropout, so its features are not a function of its input "
                "while training; a feature cache would change the run (set train.feature_cache_mb: 0)"
            )
        self.feature_cache = FeatureCache(max_bytes)
        return self.feature_cache

    def serving(self) -> bool:
        return self.feature_cache is not None and not any(p.requires_grad for p in self.parameters())  # type: ignore[attr-defined]

    def cached(self, inputs: torch.Tensor, compute: Any) -> torch.Tensor:
        """``compute(inputs)``, through the cache when it serves."""
        if self.serving():
            return self.feature_cache.features(inputs, compute, self)  # type: ignore[union-attr, arg-type]
        return compute(inputs)

    def prefetch_with(self, inputs: torch.Tensor, compute: Any) -> int:
        """Put ``compute``'s features of ``inputs`` into the cache without returning them
        (``FeatureCache.warm``); 0 when no cache serves. Returns the inputs computed."""
        if not self.serving():
            return 0
        with torch.no_grad():
            return self.feature_cache.warm(inputs, compute, self)  # type: ignore[union-attr, arg-type]


def has_dropout(module: nn.Module) -> bool:
    """Whether ``module`` draws random numbers in training mode (dropout modules or config rates)."""
    if any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in module.modules()):
        return True
    config = getattr(module, "config", None)
    rates = (
        "attention_dropout",
        "dropout",
        "activation_dropout",
        "hidden_dropout",
        "hidden_dropout_prob",
        "attention_probs_dropout_prob",
        "encoder_layerdrop",  # Whisper skips whole layers at random in training mode
    )
    return any(float(getattr(config, r, 0.0) or 0.0) > 0 for r in rates)
