"""The converter's durable bookkeeping: ``progress.jsonl`` while converting, then the final
``index.json`` and ``errors.jsonl`` assembled from it.

``progress.jsonl`` (kept in the output folder after the run; readers ignore it) is append-only:

* line 1: ``{"type": "header", ...}``: the settings that decide the output (input files with size
  and mtime, media roots, shard size, prefix, media validation, converter version). ``--resume``
  refuses to continue under different settings.
* then one ``{"type": "shard", ...}`` line per finished shard (a :class:`ShardResult`, including
  its rejected records), appended and fsynced by the main process after the shard file has been
  renamed into place. A line torn by a kill is ignored, and so is its shard: it is redone; so is
  a shard whose file no longer has the recorded size and sha256.

``index.json`` and ``errors.jsonl`` are written only at the end, sorted by shard, each to a temp
file renamed into place, so they are either complete or absent.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from collections.abc import Iterable
from typing import Any, TextIO

from data_tools.shards import ShardResult, shard_name

FORMAT_TAG = "llava_wb-shards/1"
CONVERTER_VERSION = "0.1.0"
PROGRESS = "progress.jsonl"
INDEX = "index.json"
ERRORS = "errors.jsonl"


class ResumeError(RuntimeError):
    """The output folder cannot be resumed (or would be overwritten); the message says why."""


def file_sha256(path: str) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def make_header(
    sources: list[dict[str, Any]],
    media_roots: list[str],
    shard_size: int,
    prefix: str,
    validate_media: bool,
    **caps: int,
) -> dict[str, Any]:
    """The settings line that a resumed run must match (``caps``: the media size caps)."""
    return {
        "type": "header",
        "format": FORMAT_TAG,
        "converter_version": CONVERTER_VERSION,
        "sources": sources,
        "media_roots": media_roots,
        "shard_size": shard_size,
        "prefix": prefix,
        "validate_media": validate_media,
        **caps,
    }


def owned_files(out_dir: str, prefix: str) -> list[str]:
    """Files in ``out_dir`` that a conversion with ``prefix`` writes (shards, temps, journals)."""
    names = glob.glob(os.path.join(glob.escape(out_dir), f"{glob.escape(prefix)}-*.tar*"))
    for fixed in (PROGRESS, INDEX, ERRORS, INDEX + ".tmp", ERRORS + ".tmp"):
        path = os.path.join(out_dir, fixed)
        if os.path.exists(path):
            names.append(path)
    return sorted(names)


def remove_temp_files(out_dir: str, prefix: str) -> None:
    """Delete half-written shard temp files left by a killed run."""
    for path in glob.glob(os.path.join(glob.escape(out_dir), f"{glob.escape(prefix)}-*.tar.tmp-*")):
        os.unlink(path)


def load_progress(out_dir: str, header: dict[str, Any]) -> dict[int, ShardResult]:
    """Read the finished shards of an earlier run, checking its settings match ``header``.

    A shard counts as finished only if its progress line is complete and its file exists with
    the recorded size and sha256 (shards are not fsynced, so after a power loss a renamed shard
    may be damaged; hashing is cheap next to converting); anything else is redone.
    """
    path = os.path.join(out_dir, PROGRESS)
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    entries: list[dict[str, Any]] = []
    for n, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            if n == len(lines) - 1:  # the last line, torn by a kill mid-write: ignore it
                continue
            raise ResumeError(
                f"{path}: line {n + 1} is not valid JSON; the journal is damaged. Rerun with --overwrite to start over."
            ) from None
    if not entries:
        return {}
    old = entries[0]
    if old.get("type") != "header":
        raise ResumeError(f"{path}: first line is not a header; rerun with --overwrite")
    diffs = [k for k in header if k != "type" and old.get(k) != header[k]]
    if diffs:
        details = "; ".join(f"{k}: was {old.get(k)!r}, now {header[k]!r}" for k in diffs)
        raise ResumeError(
            f"cannot resume {out_dir}: settings differ from the interrupted run "
            f"({details}). Use the same settings, or --overwrite to start over."
        )
    done: dict[int, ShardResult] = {}
    for entry in entries[1:]:
        result = ShardResult.from_json(entry)
        shard_file = os.path.join(out_dir, result.name)
        if (
            os.path.isfile(shard_file)
            and os.path.getsize(shard_file) == result.bytes
            and file_sha256(shard_file) == result.sha256
        ):
            done[result.shard] = result
    return done


class ProgressLog:
    """Append-only, fsynced writer of ``progress.jsonl``."""

    def __init__(self, out_dir: str, header: dict[str, Any], fresh: bool):
        self.path = os.path.join(out_dir, PROGRESS)
        if not fresh and os.path.exists(self.path):
            _truncate_torn_tail(self.path)  # may leave it empty (the header itself was torn)
            fresh = os.path.getsize(self.path) == 0
        else:
            fresh = True
        self.file: TextIO = open(self.path, "w" if fresh else "a", encoding="utf-8")
        if fresh:
            self._append(header)

    def _append(self, obj: dict[str, Any]) -> None:
        self.file.write(json.dumps(obj, sort_keys=True) + "\n")
        self.file.flush()
        os.fsync(self.file.fileno())

    def record(self, result: ShardResult) -> None:
        self._append({"type": "shard", **result.to_json()})

    def close(self) -> None:
        self.file.close()


def _truncate_torn_tail(path: str) -> None:
    """Cut a last line that a kill left without its newline, so appends start on a fresh line."""
    with open(path, "rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)
            f.flush()
            os.fsync(f.fileno())


def json_line(obj: dict[str, Any]) -> str:
    """One JSON line, UTF-8 readable; falls back to \\u escapes for text that is not valid Unicode."""
    line = json.dumps(obj, ensure_ascii=False, sort_keys=True)
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        line = json.dumps(obj, sort_keys=True)
    return line + "\n"


def _write_atomic(path: str, write: Any) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def totals_from(results: Iterable[ShardResult]) -> dict[str, Any]:
    """Sum the shard results into the ``totals`` block of index.json."""
    totals: dict[str, Any] = {
        "records": 0,
        "converted": 0,
        "rejected": 0,
        "rejected_by_reason": {},
        "bytes": 0,
        "by_modality": {},
    }
    for r in results:
        totals["records"] += r.records
        totals["converted"] += r.samples
        totals["rejected"] += len(r.rejected)
        totals["bytes"] += r.bytes
        for err in r.rejected:
            by_reason = totals["rejected_by_reason"]
            by_reason[err["reason"]] = by_reason.get(err["reason"], 0) + 1
        for m, n in r.by_modality.items():
            totals["by_modality"][m] = totals["by_modality"].get(m, 0) + n
    totals["rejected_by_reason"] = dict(sorted(totals["rejected_by_reason"].items()))
    totals["by_modality"] = dict(sorted(totals["by_modality"].items()))
    return totals


def write_outputs(out_dir: str, header: dict[str, Any], results: dict[int, ShardResult]) -> dict[str, Any]:
    """Write index.json and errors.jsonl from the finished shards; return the index."""
    ordered = [results[k] for k in sorted(results)]
    expected = list(range(len(ordered)))
    if sorted(results) != expected:
        missing = sorted(set(expected) - set(results))
        raise RuntimeError(f"internal error: shards {missing[:10]} have no result")
    index = {
        "format": FORMAT_TAG,
        "converter_version": CONVERTER_VERSION,
        "sources": [s["path"] for s in header["sources"]],
        "media_roots": header["media_roots"],
        "shard_size": header["shard_size"],
        "prefix": header["prefix"],
        "validate_media": header["validate_media"],
        "shards": [
            {
                "name": r.name,
                "samples": r.samples,
                "bytes": r.bytes,
                "sha256": r.sha256,
                "first_index": r.first_index,
                "last_index": r.last_index,
            }
            for r in ordered
        ],
        "totals": totals_from(ordered),
    }
    assert all(r.name == shard_name(header["prefix"], r.shard) for r in ordered)

    def write_errors(f: TextIO) -> None:
        for r in ordered:
            for err in sorted(r.rejected, key=lambda e: e["index"]):
                f.write(json_line(err))

    _write_atomic(os.path.join(out_dir, ERRORS), write_errors)
    _write_atomic(
        os.path.join(out_dir, INDEX), lambda f: f.write(json.dumps(index, ensure_ascii=False, indent=2) + "\n")
    )
    return index
