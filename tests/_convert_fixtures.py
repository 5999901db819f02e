"""Builders of small LLaVA-format datasets (records + media files) for the converter tests.

Everything is generated on the fly with PIL into a temp folder: valid images in several formats
and modes, plus the faults that real LLaVA data has (missing files, truncated JPEGs, GIFs named
.jpg, odd ids, leading gpt turns, malformed records).
"""

from __future__ import annotations

import io
import json
import os
import random
from dataclasses import dataclass, field
from typing import Any

from PIL import Image


def image_bytes(fmt: str, size: tuple[int, int] = (32, 24), mode: str = "RGB", seed: int = 0) -> bytes:
    """A small image with a gradient (so JPEG has real content) in ``fmt`` (PIL format name)."""
    w, h = size
    rng = random.Random(seed)
    a, b, c, k = rng.randrange(256), rng.randrange(256), rng.randrange(256), rng.randrange(1, 13)
    im = Image.new("RGB", size)
    im.putdata([((x * k + a) % 256, (y * 11 + b) % 256, (x * y + c) % 256) for y in range(h) for x in range(w)])
    if mode != "RGB":
        im = im.convert(mode)
    buf = io.BytesIO()
    im.save(buf, fmt)
    return buf.getvalue()


def conv(question: str, answer: str = "an answer", placeholder: str = "<image>\n") -> list[dict]:
    return [{"from": "human", "value": placeholder + question}, {"from": "gpt", "value": answer}]


@dataclass
class Dataset:
    """Records plus the media written for them, and the outcome each record should have."""

    root: str
    records: list[Any] = field(default_factory=list)
    expect: list[str] = field(default_factory=list)  # "ok" or a rejection reason, per record

    def add_media(self, rel: str, data: bytes) -> str:
        path = os.path.join(self.root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        return rel

    def add(self, record: Any, expect: str = "ok") -> None:
        self.records.append(record)
        self.expect.append(expect)

    def write_json(self, path: str) -> str:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.records, f, ensure_ascii=False, indent=1)
        return path

    def write_jsonl(self, path: str) -> str:
        with open(path, "w", encoding="utf-8") as f:
            for r in self.records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        return path


def plain_dataset(root: str, n: int, distinct_images: int = 8, size: tuple[int, int] = (32, 24)) -> Dataset:
    """``n`` valid single-image records cycling over ``distinct_images`` JPEGs, every 7th text-only."""
    ds = Dataset(root=root)
    paths = [
        ds.add_media(f"coco/img{i:03d}.jpg", image_bytes("JPEG", size=size, seed=i)) for i in range(distinct_images)
    ]
    for i in range(n):
        if i % 7 == 3:
            ds.add({"id": f"text-{i}", "conversations": conv(f"Question {i}?", placeholder="")})
        else:
            ds.add(
                {
                    "id": f"rec-{i}",
                    "image": paths[i % distinct_images],
                    "conversations": conv(f"What is in picture {i}?"),
                }
            )
    return ds


def fault_dataset(root: str) -> Dataset:
    """One record per case of the fault matrix, with its documented outcome."""
    ds = Dataset(root=root)
    good = ds.add_media("coco/good.jpg", image_bytes("JPEG"))
    full = image_bytes("JPEG", size=(64, 48), seed=3)
    truncated = ds.add_media("coco/truncated.jpg", full[: len(full) // 2])
    gif = ds.add_media("ocr_vqa/images/B00.gif_named.jpg", image_bytes("GIF", mode="P"))
    gray = ds.add_media("gqa/gray.png", image_bytes("PNG", mode="L"))
    rgba = ds.add_media("gqa/rgba.png", image_bytes("PNG", mode="RGBA"))
    second = ds.add_media("vg/VG_100K/second.png", image_bytes("PNG", seed=5))
    text = ds.add_media("coco/notes.jpg", b"this is not an image at all\n" * 4)
    wav = ds.add_media("audio/a.wav", b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 40)

    ds.add({"id": "good", "image": good, "conversations": conv("Describe.")})
    ds.add({"id": "missing", "image": "coco/nope.jpg", "conversations": conv("Where?")}, "missing_media")
    ds.add({"id": "trunc", "image": truncated, "conversations": conv("Truncated?")}, "corrupt_media")
    ds.add({"id": "gif", "image": gif, "conversations": conv("A gif?")})
    ds.add({"id": "gray", "image": gray, "conversations": conv("Gray?")})
    ds.add({"id": "rgba", "image": rgba, "conversations": conv("Alpha?")})
    ds.add({"id": "B00.0Q/x.y/ünï中", "image": good, "conversations": conv("Odd id?")})
    ds.add({"id": "dup", "image": good, "conversations": conv("First dup?")})
    ds.add({"id": "dup", "image": good, "conversations": conv("Second dup?")})
    ds.add(
        {"id": "lead-gpt", "image": good, "conversations": [{"from": "gpt", "value": "I speak first"}] + conv("Then?")}
    )
    ds.add({"id": "roles", "conversations": [{"from": "user", "value": "hi"}, {"from": "assistant", "value": "hello"}]})
    ds.add(["not", "an", "object"], "bad_record")
    ds.add({"id": "noconv", "image": good}, "bad_record")
    ds.add(
        {"id": "mismatch", "image": good, "conversations": conv("No placeholder", placeholder="")},
        "placeholder_mismatch",
    )
    ds.add(
        {"id": "two-placeholders", "image": good, "conversations": conv("and <image> again")}, "placeholder_mismatch"
    )
    ds.add({"id": "multi", "image": [good, second], "conversations": conv("Compare <image> with that.")})
    ds.add({"id": "text-only", "model": "", "conversations": conv("Just text.", placeholder="")})
    ds.add({"id": "not-image", "image": text, "conversations": conv("Text file?")}, "unsupported_media")
    ds.add({"id": "wrong-modality", "image": wav, "conversations": conv("Audio?")}, "unsupported_media")
    ds.add({"id": "audio", "audio": wav, "conversations": conv("Hear?", placeholder="<audio>\n")})
    ds.add(
        {"id": "badrole", "conversations": [{"from": "system", "value": "x"}, {"from": "gpt", "value": "y"}]},
        "bad_conversation",
    )
    ds.add({"id": "empty", "conversations": []}, "bad_conversation")
    ds.add(
        {"id": "nonstr", "conversations": [{"from": "human", "value": 3}, {"from": "gpt", "value": "y"}]},
        "bad_conversation",
    )
    ds.add(
        {"id": "noalt", "conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"}]},
        "bad_conversation",
    )
    return ds


def read_shards(out_dir: str) -> list[tuple[str, dict[str, bytes]]]:
    """All samples of a converted folder, in index.json order, read with plain tarfile."""
    import tarfile

    with open(os.path.join(out_dir, "index.json"), encoding="utf-8") as f:
        index = json.load(f)
    samples: list[tuple[str, dict[str, bytes]]] = []
    for shard in index["shards"]:
        with tarfile.open(os.path.join(out_dir, shard["name"])) as tar:
            for info in tar:
                key, fld = info.name.split(".", 1)
                if not samples or samples[-1][0] != key:
                    samples.append((key, {}))
                samples[-1][1][fld] = tar.extractfile(info).read()  # type: ignore[union-attr]
    return samples


def shard_digests(out_dir: str) -> dict[str, str]:
    """Shard file name -> sha256 of its bytes, for every .tar in the folder."""
    import hashlib

    return {
        name: hashlib.sha256(open(os.path.join(out_dir, name), "rb").read()).hexdigest()
        for name in sorted(os.listdir(out_dir))
        if name.endswith(".tar")
    }


def png_bomb(width: int = 30000, height: int = 30000) -> bytes:
    """A valid, tiny PNG (1-bit grayscale, all zero) that decodes to ``width * height`` pixels.

    30000 x 30000 is ~109 KB compressed and ~112 MB at one bit per pixel (~900 MB as 8-bit gray):
    a decompression bomb. Built chunk by chunk with zlib, never held decoded in memory.
    """
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" + b"\x00" * ((width + 7) // 8)  # filter byte + packed bits
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
