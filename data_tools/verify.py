"""Re-read a converted output folder and check it against its ``index.json``.

Checks, per shard: the file exists, its size and sha256 match the index, it reads to the end as a
tar, members carry mtime 0 and mode 0o444, every sample has a json that parses, whose ``index``
lies in the shard's window and whose key is ``make_key(index, id)``, and whose ``media`` list
names exactly the other members of the sample (with bytes of the stated format). Overall: the
sample counts and bytes add up to the totals, ``errors.jsonl`` holds one line per rejected record
with matching reasons, and no shard file with the prefix is missing from the index.

Used by ``llava-wb-convert --verify`` / ``--verify-only OUT``. Problems are collected as
sentences naming the shard and sample, not raised, so one run reports all of them.
"""

from __future__ import annotations

import glob
import json
import os
import tarfile
from dataclasses import dataclass, field
from typing import Any

from data_tools.journal import ERRORS, FORMAT_TAG, INDEX, file_sha256
from data_tools.media import FORMATS, detect_format
from data_tools.validate import make_key

MAX_PROBLEMS_PER_SHARD = 20


@dataclass
class VerifyReport:
    """Outcome of a verification: ``ok`` when ``problems`` is empty."""

    out_dir: str
    shards: int = 0
    samples: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def format(self) -> str:
        head = f"verify {self.out_dir}: {self.shards} shards, {self.samples} samples: " + (
            "OK" if self.ok else f"{len(self.problems)} problem(s)"
        )
        return "\n".join([head] + [f"  - {p}" for p in self.problems])


def _check_sample(key: str, members: dict[str, bytes], entry: dict[str, Any], where: str) -> list[str]:
    """Problems of one sample (its members by field name)."""
    if "json" not in members:
        return [f"{where}: sample {key!r} has no json member"]
    try:
        meta = json.loads(members["json"].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return [f"{where}: sample {key!r}: json does not parse ({exc})"]
    if not isinstance(meta, dict):
        return [f"{where}: sample {key!r}: json is not an object"]
    problems = []
    missing = [k for k in ("id", "index", "source", "conversations", "media") if k not in meta]
    if missing:
        return [f"{where}: sample {key!r}: json lacks {missing}"]
    index = meta["index"]
    if not isinstance(index, int) or not entry["first_index"] <= index <= entry["last_index"]:
        problems.append(
            f"{where}: sample {key!r}: index {index!r} outside the shard window "
            f"[{entry['first_index']}, {entry['last_index']}]"
        )
    elif key != make_key(index, meta["id"]):
        problems.append(
            f"{where}: sample {key!r}: key does not match index/id (expected {make_key(index, meta['id'])!r})"
        )
    listed = set()
    for m in meta["media"] if isinstance(meta["media"], list) else []:
        fld, fmt = m.get("field"), m.get("format")
        listed.add(fld)
        if fld not in members:
            problems.append(f"{where}: sample {key!r}: media field {fld!r} listed but not in the tar")
        elif fmt not in FORMATS or fld.rsplit(".", 1)[-1] != FORMATS[fmt][1]:
            problems.append(f"{where}: sample {key!r}: field {fld!r} does not fit format {fmt!r}")
        elif detect_format(members[fld][:64]) != fmt:
            problems.append(f"{where}: sample {key!r}: bytes of {fld!r} are not {fmt}")
    extra = sorted(set(members) - listed - {"json"})
    if extra:
        problems.append(f"{where}: sample {key!r}: members {extra} not listed in its media")
    return problems


def _check_tar(path: str, entry: dict[str, Any]) -> tuple[int, list[str]]:
    """Read a shard to the end; return (samples, problems)."""
    name = entry["name"]
    problems: list[str] = []
    samples = 0
    seen: set[str] = set()
    current: str | None = None
    members: dict[str, bytes] = {}

    def finish() -> None:
        nonlocal samples
        if current is not None:
            samples += 1
            problems.extend(_check_sample(current, members, entry, name))

    try:
        with tarfile.open(path, "r:") as tar:
            for info in tar:
                if not info.isfile():
                    problems.append(f"{name}: member {info.name!r} is not a regular file")
                    continue
                if info.mtime != 0 or info.mode != 0o444:
                    problems.append(
                        f"{name}: member {info.name!r} has mtime {info.mtime} / "
                        f"mode {oct(info.mode)}, expected 0 / 0o444"
                    )
                if "/" in info.name or "." not in info.name:
                    problems.append(f"{name}: member name {info.name!r} is not KEY.FIELD")
                    continue
                key, fld = info.name.split(".", 1)
                data = tar.extractfile(info).read()  # type: ignore[union-attr]
                if key != current:
                    finish()
                    if key in seen:
                        problems.append(f"{name}: key {key!r} occurs in two separate places")
                    seen.add(key)
                    current, members = key, {}
                members[fld] = data
            finish()
            end = tar.offset  # where the end-of-archive marker (>= 2 zero blocks) must start
        with open(path, "rb") as f:
            f.seek(end)
            tail = f.read()
        if len(tail) < 1024 or tail.strip(b"\0"):
            problems.append(f"{name}: truncated or damaged after {samples} complete samples (no end-of-archive marker)")
    except (tarfile.TarError, OSError, EOFError) as exc:
        problems.append(f"{name}: truncated or damaged after {samples} complete samples ({type(exc).__name__}: {exc})")
    return samples, problems[:MAX_PROBLEMS_PER_SHARD]


def _check_errors_file(out_dir: str, totals: dict[str, Any]) -> list[str]:
    path = os.path.join(out_dir, ERRORS)
    if not os.path.exists(path):
        return [f"{ERRORS} is missing"]
    by_reason: dict[str, int] = {}
    problems = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            try:
                err = json.loads(line)
                by_reason[err["reason"]] = by_reason.get(err["reason"], 0) + 1
                if not {"index", "id", "source", "reason", "detail"} <= set(err):
                    problems.append(f"{ERRORS} line {n}: lacks some of index/id/source/reason/detail")
            except (json.JSONDecodeError, KeyError, TypeError):
                problems.append(f"{ERRORS} line {n}: not a JSON object with a 'reason'")
    if by_reason != totals.get("rejected_by_reason"):
        problems.append(
            f"{ERRORS} counts by reason {by_reason} differ from index.json "
            f"rejected_by_reason {totals.get('rejected_by_reason')}"
        )
    return problems


def verify_output(out_dir: str) -> VerifyReport:
    """Check every shard of ``out_dir`` against its index.json; see the module docstring."""
    report = VerifyReport(out_dir=out_dir)
    index_path = os.path.join(out_dir, INDEX)
    try:
        with open(index_path, encoding="utf-8") as f:
            index = json.load(f)
        shards, totals, prefix = index["shards"], index["totals"], index["prefix"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        report.problems.append(f"{index_path}: missing or unreadable ({type(exc).__name__}: {exc})")
        return report
    if index.get("format") != FORMAT_TAG:
        report.problems.append(f"{index_path}: format {index.get('format')!r}, expected {FORMAT_TAG!r}")
    total_bytes = 0
    for i, entry in enumerate(shards):
        report.shards += 1
        path = os.path.join(out_dir, entry["name"])
        if not os.path.isfile(path):
            report.problems.append(f"{entry['name']}: listed in index.json but missing")
            continue
        size = os.path.getsize(path)
        total_bytes += size
        if size != entry["bytes"]:
            report.problems.append(f"{entry['name']}: {size} bytes on disk, index says {entry['bytes']}")
        if file_sha256(path) != entry["sha256"]:
            report.problems.append(f"{entry['name']}: sha256 differs from index.json")
        if entry["first_index"] != i * index["shard_size"]:
            report.problems.append(
                f"{entry['name']}: first_index {entry['first_index']}, expected {i * index['shard_size']}"
            )
        samples, problems = _check_tar(path, entry)
        report.samples += samples
        report.problems.extend(problems)
        if samples != entry["samples"]:
            report.problems.append(f"{entry['name']}: {samples} samples read, index says {entry['samples']}")
    listed = {e["name"] for e in shards}
    on_disk = {
        os.path.basename(p) for p in glob.glob(os.path.join(glob.escape(out_dir), f"{glob.escape(prefix)}-*.tar"))
    }
    for extra in sorted(on_disk - listed):
        report.problems.append(f"{extra}: shard file not listed in index.json")
    if report.samples != totals.get("converted"):
        report.problems.append(
            f"totals: {report.samples} samples in shards, index says converted={totals.get('converted')}"
        )
    if total_bytes != totals.get("bytes"):
        report.problems.append(f"totals: {total_bytes} shard bytes, index says {totals.get('bytes')}")
    if totals.get("converted", 0) + totals.get("rejected", 0) != totals.get("records"):
        report.problems.append("totals: converted + rejected != records")
    report.problems.extend(_check_errors_file(out_dir, totals))
    return report
