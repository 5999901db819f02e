"""Turn a source spec (folder, index.json, glob, brace pattern, list file, URL) into a shard list.

A folder written by ``llava-wb-convert`` carries ``index.json`` with per-shard sample counts; the
loader uses those counts to give every rank the same number of batches. Other sources have no
counts, and then ``balanced`` mode needs an explicit ``batches_per_epoch``.

Trust: a ``pipe:`` command runs only when it is the source spec itself (or its brace expansion),
i.e. it comes from the run's own config. Lines of list files and shard names in ``index.json`` are
data: a ``pipe:`` line is refused, an index shard name must be a plain file name in its folder,
and local paths are made absolute, so no file content can become a shell command. Remote URLs
(``s3://``, ``gs://``, ``http(s)://``) are fetched by ``tario`` with an argument list, no shell.

A folder holding ``progress.jsonl`` (or shard temp files) but no ``index.json`` is an unfinished
``llava-wb-convert`` run and is refused: reading it would silently miss the shards still to come.
"""

from __future__ import annotations

import glob
import json
import os
import re
from dataclasses import dataclass

from .config import SourceConfig
from .errors import DataConfigError

_URL = re.compile(r"^(pipe:|https?://|gs://|s3://|file:)")
_LIST_SUFFIXES = (".txt", ".list", ".shards")


@dataclass(frozen=True)
class ShardList:
    name: str
    urls: tuple[str, ...]
    counts: tuple[int, ...] | None
    weight: float

    @property
    def total(self) -> int | None:
        return None if self.counts is None else sum(self.counts)


def source_name(source: SourceConfig) -> str:
    """The name a source goes by in loader states, skip counts and ``raw["__source__"]``."""
    return source.name or source.path


def resolve(source: SourceConfig) -> ShardList:
    """Expand one source into its shard URLs (sorted, deterministic) and counts when known."""
    path = source.path
    name = source_name(source)
    if os.path.isdir(path):
        index = os.path.join(path, "index.json")
        if os.path.exists(index):
            urls, counts = _from_index(index)
        else:
            _refuse_unfinished(path)
            urls, counts = _local_glob(os.path.join(glob.escape(path), "*.tar")), None
    elif path.endswith(".json") and not _URL.match(path):
        urls, counts = _from_index(path)
    elif path.endswith(_LIST_SUFFIXES) and not _URL.match(path):
        urls, counts = _from_list(path), None
    elif "{" in path:
        urls, counts = tuple(_braceexpand(path)), None
    elif _URL.match(path):
        urls, counts = (path,), None
    elif any(c in path for c in "*?["):
        urls, counts = _local_glob(path), None
    elif os.path.isfile(path):
        urls, counts = (path,), None
    else:
        raise DataConfigError(f"data source {path!r}: no such file or folder, and not a URL, glob or brace pattern")
    if not urls:
        raise DataConfigError(f"data source {path!r} matched no shards")
    return ShardList(name=name, urls=urls, counts=counts, weight=source.weight)


def _from_index(index_path: str) -> tuple[tuple[str, ...], tuple[int, ...]]:
    try:
        with open(index_path, encoding="utf-8") as f:
            index = json.load(f)
        shards = index["shards"]
        base = os.path.dirname(os.path.abspath(index_path))
        names = [s["name"] for s in shards]
        counts = tuple(int(s["samples"]) for s in shards)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataConfigError(f"{index_path}: not a readable llava_wb index.json ({e})") from e
    for name in names:  # data, not paths: a plain file name next to index.json, nothing else
        if (
            not isinstance(name, str)
            or name in ("", ".", "..")
            or os.path.basename(name) != name
            or "/" in name
            or "\0" in name
        ):
            raise DataConfigError(f"{index_path}: shard name {name!r} is not a plain file name in the index's folder")
    urls = tuple(os.path.join(base, n) for n in names)
    missing = [u for u in urls if not os.path.exists(u)]
    if missing:
        raise DataConfigError(f"{index_path}: {len(missing)} shard(s) listed but missing, e.g. {missing[0]}")
    return urls, counts


def _from_list(list_path: str) -> tuple[str, ...]:
    base = os.path.dirname(os.path.abspath(list_path))
    urls = []
    with open(list_path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("pipe:"):
                raise DataConfigError(
                    f"{list_path} line {line_no}: 'pipe:' commands are not read from list files "
                    "(their lines are data); give the command as the source itself in the config"
                )
            if not _URL.match(line):
                line = os.path.abspath(os.path.join(base, line))
            urls.append(line)
    return tuple(urls)


def _local_glob(pattern: str) -> tuple[str, ...]:
    """Matching files as absolute paths (a file named ``pipe:...`` stays a file)."""
    return tuple(sorted(os.path.abspath(p) for p in glob.glob(pattern)))


def _refuse_unfinished(folder: str) -> None:
    leftovers = [n for n in ("progress.jsonl",) if os.path.exists(os.path.join(folder, n))]
    leftovers += [os.path.basename(p) for p in glob.glob(os.path.join(glob.escape(folder), "*.tar.tmp-*"))]
    if leftovers:
        raise DataConfigError(
            f"data source {folder!r} is an unfinished llava-wb-convert output ({leftovers[0]} but no "
            "index.json): finish it with `llava-wb-convert ... --resume`, or name its shards with a "
            "glob to read them as they are"
        )


def _braceexpand(pattern: str) -> list[str]:
    import braceexpand  # a webdataset dependency

    return list(braceexpand.braceexpand(pattern))
