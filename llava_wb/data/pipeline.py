"""Per-sample processing steps run inside dataloader workers (picklable callables).

- ``RawSample``: json parsed, media kept as the exact bytes from the shard (round trips, audits).
- ``DecodeOnly``: ``decode_sample`` with media decoded to tensors (inspection, benchmarks).
- ``TrainSample``: decode + conversation template + tokenization with placeholder expansion: the
  sample the collator pads into a training batch.
"""

from __future__ import annotations

from typing import Any

from .config import ImageConfig
from .decode import decode_sample


class RawSample:
    def __call__(self, raw: dict[str, Any]) -> dict[str, Any]:
        return decode_sample(raw, ImageConfig(), decode_media=False)


class DecodeOnly:
    def __init__(self, image: ImageConfig):
        self.image = image

    def __call__(self, raw: dict[str, Any]) -> dict[str, Any]:
        return decode_sample(raw, self.image)
