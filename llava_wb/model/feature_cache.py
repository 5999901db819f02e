"""A memory cache of a frozen vision tower's features, keyed by the content of each image.

With the tower frozen (LLaVA's stages 1 and 2), an image's features depend on its pixels only, so a
run that sees its data for several epochs recomputes the same features again and again. On a small
model the tower is a large part of the step: in the CPU demo the frozen tower was 41% of a stage-2
step (py-spy), each clip's frames seen about three times. ``FeatureCache`` keeps the selected hidden
state of every image (or video frame) it has seen, keyed by a hash of the pixel values, and
``VisionTower.forward`` runs the tower only on the images it has not seen.

It is exact by construction, and guarded:
- it serves only while no tower parameter requires a gradient (a cached tensor has no graph);
- every parameter's storage and in-place version is part of the cache's state: an optimizer step,
  ``load_state_dict`` or ``.to()`` on the tower empties it before the next lookup;
- a tower with dropout is refused (its features are not a function of the pixels in training mode).
Features computed in a batch of another size may differ from a fresh computation by float
rounding (1e-7 here), as any change of batch size does.

Enable it with ``train.feature_cache_mb`` (0: off, the default). It pays off for runs of several
epochs; at LLaVA scale (one epoch of 665K images) every lookup misses and it only costs memory and
hashing (and a device-to-host copy of the pixels on a GPU). When full it stops storing and counts
the images it could not keep.
"""

from __future__ import annotations

import hashlib
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
        self.totals = {"hits": 0, "misses": 0, "not_stored": 0, "invalidated": 0}
        self.window = {"hits": 0, "misses": 0}

    @staticmethod
    def key(pixels: torch.Tensor) -> bytes:
        """The content key of one image (or frame): its dtype, shape and value bytes."""
        data = pixels.detach().contiguous().cpu()
        digest = hashlib.blake2b(data.view(torch.uint8).numpy().tobytes(), digest_size=16)
        digest.update(f"{data.dtype}{tuple(data.shape)}".encode())
        return digest.digest()

    def check_weights(self, module: nn.Module) -> None:
        """Empty the cache if any parameter of ``module`` changed since the entries were made."""
        state = tuple((p.data_ptr(), p._version) for p in module.parameters())
        if state != self.weights:
            if self.entries:
                self.totals["invalidated"] += len(self.entries)
            self.entries.clear()
            self.bytes = 0
            self.weights = state

    def features(self, pixel_values: torch.Tensor, compute: Any, module: nn.Module) -> torch.Tensor:
        """``compute(pixel_values)`` for a batch ``[N, ...]``, from the cache where it has the image."""
        self.check_weights(module)
        keys = [self.key(p) for p in pixel_values]
        missing = [i for i, k in enumerate(keys) if k not in self.entries]
        computed: dict[bytes, torch.Tensor] = {}
        if missing:
            fresh = compute(pixel_values[missing])
            for row, i in zip(fresh, missing, strict=True):
                computed.setdefault(keys[i], row)
                self.store(keys[i], row)
        hits = len(keys) - len(missing)
        self._count(hits, len(missing))
        rows = [self.entries.get(k, computed.get(k)) for k in keys]
        return torch.stack(rows)

    def store(self, key: bytes, row: torch.Tensor) -> None:
        if key in self.entries:
            return
        size = row.numel() * row.element_size()
        if self.bytes + size > self.max_bytes:
            self.totals["not_stored"] += 1
            return
        self.entries[key] = row.detach().clone()
        self.bytes += size

    def _count(self, hits: int, misses: int) -> None:
        for d in (self.totals, self.window):
            d["hits"] += hits
            d["misses"] += misses

    def take_window(self) -> float:
        """The hit fraction since the last call (for the training log), and start a new window."""
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


def has_dropout(module: nn.Module) -> bool:
    """Whether ``module`` draws random numbers in training mode (dropout modules or config rates)."""
    if any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in module.modules()):
        return True
    config = getattr(module, "config", None)
    rates = ("attention_dropout", "dropout", "hidden_dropout", "hidden_dropout_prob", "attention_probs_dropout_prob")
    return any(float(getattr(config, r, 0.0) or 0.0) > 0 for r in rates)
