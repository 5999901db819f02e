"""Write one shard: the unit of work a converter worker does.

A :class:`ShardTask` carries the raw records of one index window ``[first_index, last_index]``;
:func:`write_shard` parses and checks each record, reads its media, writes the accepted samples
with ``webdataset.TarWriter`` into a temp file and atomically renames it to
``{prefix}-{shard:06d}.tar``. Everything that decides the bytes (record order, member order, json
serialization, tar header fields) depends only on the records, so a shard is byte-identical
whichever process writes it and however many there are:

* ``TarWriter(mtime=0, user="root", group="root", mode=0o444, encoder=False)``, USTAR format
  (see :func:`write_shard`); uid/gid stay 0
  (the ``tarfile.TarInfo`` default). ``TarWriter`` writes a sample's members sorted by field
  name and we pass bytes only, so nothing is re-encoded.
* sample json: ``json.dumps(sort_keys=True, ensure_ascii=False, separators=(",", ":"))``.

A shard whose records are all rejected is still written (an empty tar), so shard names stay dense
(``{000000..N}`` brace patterns work) and ``index.json`` lists every window.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from dataclasses import asdict, dataclass, field
from typing import Any, BinaryIO

from data_tools.media import (
    DEFAULT_MAX_IMAGE_PIXELS,
    DEFAULT_MAX_MEDIA_BYTES,
    FORMATS,
    MediaProblem,
    read_media,
)
from data_tools.records import RawRecord
from data_tools.validate import Rejected, check_record, make_key, parse_record

TAR_MTIME = 0
TAR_USER = "root"
TAR_MODE = 0o444


def shard_name(prefix: str, shard: int) -> str:
    """File name of shard number ``shard``."""
    return f"{prefix}-{shard:06d}.tar"


def dumps_sample_json(obj: dict[str, Any]) -> bytes:
    """The deterministic UTF-8 serialization used for every sample json."""
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


@dataclass
class ShardTask:
    """Everything a worker needs to write one shard (picklable, small apart from ``records``)."""

    shard: int
    first_index: int
    last_index: int
    records: list[RawRecord]
    out_dir: str
    prefix: str
    sources: list[str]  # source names as written into samples (file base names)
    media_roots: list[str]
    validate_media: bool
    max_media_bytes: int = DEFAULT_MAX_MEDIA_BYTES
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS


@dataclass
class ShardResult:
    """What a finished shard holds; one line of ``progress.jsonl``."""

    shard: int
    name: str
    samples: int
    bytes: int
    sha256: str
    first_index: int
    last_index: int
    records: int
    rejected: list[dict[str, Any]] = field(default_factory=list)
    by_modality: dict[str, int] = field(default_factory=dict)
    fixes: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> ShardResult:
        return cls(**{k: obj[k] for k in cls.__dataclass_fields__})


class _HashingFile:
    """A write-only file wrapper that counts and hashes what goes through it."""

    def __init__(self, f: BinaryIO):
        self.f = f
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.f.write(data)
        self.sha.update(data)
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        self.f.flush()


def build_sample(raw: RawRecord, task: ShardTask) -> tuple[dict[str, bytes], list[str], list[str]]:
    """Turn one raw record into a TarWriter sample; return (sample, modalities, fixes).

    Raises Rejected (or MediaProblem) with the reason the record cannot be converted.
    """
    obj = parse_record(raw.text, raw.error)
    checked = check_record(obj)
    sample: dict[str, bytes] = {"__key__": make_key(raw.index, obj["id"])}  # type: ignore[dict-item]
    media_entries: list[dict[str, str]] = []
    per_modality: dict[str, int] = {}
    for modality, path in checked.media:
        data, fmt = read_media(
            path,
            task.media_roots,
            modality,
            task.validate_media,
            max_bytes=task.max_media_bytes,
            max_pixels=task.max_image_pixels,
        )
        n = per_modality.get(modality, 0)
        per_modality[modality] = n + 1
        ext = FORMATS[fmt][1]
        fld = ext if n == 0 else f"{n}.{ext}"
        sample[fld] = data
        media_entries.append({"modality": modality, "field": fld, "path": path, "format": fmt})
    out = checked.record
    out["index"] = raw.index
    out["source"] = task.sources[raw.source]
    out["media"] = media_entries
    if checked.fixes:
        out["fixes"] = checked.fixes
    try:
        sample["json"] = dumps_sample_json(out)
    except UnicodeEncodeError as exc:
        raise Rejected(
            "bad_record", f"text is not valid Unicode (lone surrogate at position {exc.start} of a string)"
        ) from None
    return sample, sorted(per_modality) or ["text"], checked.fixes


def _rejection(raw: RawRecord, task: ShardTask, reason: str, detail: str) -> dict[str, Any]:
    record_id = None
    if raw.text is not None:
        try:
            obj = json.loads(raw.text)
            if isinstance(obj, dict):
                record_id = obj.get("id")
                json.dumps(record_id)  # an id that cannot be written back is left out
        except Exception:  # ValueError, RecursionError, ...: the record is rejected anyway
            record_id = None
    if reason == "invalid_json":
        detail = f"{raw.location}: {detail}"
    return {"index": raw.index, "id": record_id, "source": task.sources[raw.source], "reason": reason, "detail": detail}


def write_shard(task: ShardTask) -> ShardResult:
    """Convert the records of one shard window and write the shard file atomically."""
    from webdataset import (
        TarWriter,  # imported here: importing webdataset pulls in torch
    )

    name = shard_name(task.prefix, task.shard)
    final = os.path.join(task.out_dir, name)
    tmp = f"{final}.tmp-{os.getpid()}"
    result = ShardResult(
        shard=task.shard,
        name=name,
        samples=0,
        bytes=0,
        sha256="",
        first_index=task.first_index,
        last_index=task.last_index,
        records=len(task.records),
    )
    try:
        with open(tmp, "wb") as f:
            hashing = _HashingFile(f)
            writer = TarWriter(
                hashing,
                user=TAR_USER,
                group=TAR_USER,
                mode=TAR_MODE,
                encoder=False,
                mtime=TAR_MTIME,
                format="USTAR_FORMAT",
            )
            # webdataset 1.0.2 computes ``format`` but never hands it to tarfile (which then
            # defaults to PAX). Our member names are short ASCII, so both formats give the same
            # bytes; USTAR skips the per-member PAX checks (~6% faster) and would fail loudly,
            # not silently add PAX headers, if a name ever did not fit.
            writer.tarstream.format = tarfile.USTAR_FORMAT
            for raw in task.records:
                # One record, one verdict: any failure while building it rejects that record
                # (counted, with a reason) and the shard goes on; only writing can abort.
                try:
                    sample, modalities, fixes = build_sample(raw, task)
                except (Rejected, MediaProblem) as exc:
                    result.rejected.append(_rejection(raw, task, exc.reason, exc.detail))
                    continue
                except Exception as exc:
                    detail = f"{type(exc).__name__} while converting: {str(exc)[:200]}"
                    result.rejected.append(_rejection(raw, task, "conversion_error", detail))
                    continue
                writer.write(sample)
                result.samples += 1
                for m in modalities:
                    result.by_modality[m] = result.by_modality.get(m, 0) + 1
                for fx in fixes:
                    result.fixes[fx] = result.fixes.get(fx, 0) + 1
            writer.close()
        # No fsync: a killed process loses nothing the kernel already has, and after a power
        # loss ``--resume`` re-checks each finished shard's sha256 before trusting it.
        os.replace(tmp, final)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    result.bytes = hashing.size
    result.sha256 = hashing.sha.hexdigest()
    return result
