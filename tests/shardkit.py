"""Test helpers: write small webdataset shards (with an index.json like the converter's) directly."""

from __future__ import annotations

import io
import json
import os

import webdataset as wds
from PIL import Image


def png_bytes(color=(200, 10, 10), size=(8, 6), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, "PNG")
    return buf.getvalue()


def sample(n: int, *, image: bytes | None = None, field: str = "png", prefix: str = "id") -> dict:
    conv = [
        {"from": "human", "value": ("<image>\n" if image is not None else "") + f"question {n}"},
        {"from": "gpt", "value": f"answer {n}"},
    ]
    meta = {
        "id": f"{prefix}{n}",
        "index": n,
        "conversations": conv,
        "media": [{"modality": "image", "field": field}] if image is not None else [],
    }
    out = {"__key__": f"{n:09d}_{prefix}{n}", "json": json.dumps(meta).encode()}
    if image is not None:
        out[field] = image
    return out


def write_shards(
    folder: str,
    sizes: list[int],
    *,
    image: bool = True,
    prefix: str = "id",
    corrupt: set[int] = frozenset(),
    start: int = 0,
) -> list[str]:
    """Shards of ``sizes`` samples each, numbered from ``start``; samples in ``corrupt`` get bad PNG bytes."""
    os.makedirs(folder, exist_ok=True)
    names, n, shards = [], start, []
    for s, size in enumerate(sizes):
        name = f"shard-{s:06d}.tar"
        with wds.TarWriter(os.path.join(folder, name)) as w:
            for _ in range(size):
                img = (b"\x89PNG\r\n\x1a\nbroken" if n in corrupt else png_bytes((n % 256, 0, 0))) if image else None
                w.write(sample(n, image=img, prefix=prefix))
                n += 1
        names.append(name)
        shards.append({"name": name, "samples": size})
    with open(os.path.join(folder, "index.json"), "w") as f:
        json.dump({"format": "llava_wb-shards/1", "shards": shards}, f)
    return [os.path.join(folder, x) for x in names]
