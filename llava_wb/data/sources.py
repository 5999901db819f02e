"""Turn a source spec (folder, index.json, glob, brace pattern, list file, URL) into a shard list.

A folder written by ``llava-wb-convert`` carries ``index.json`` with per-shard sample counts; the
loader uses those counts to give every rank the same number of batches. Other sources have no
counts, and then ``balanced`` mode needs an explicit ``batches_per_epoch``.
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
            urls, counts = tuple(sorted(glob.glob(os.path.join(path, "*.tar")))), None
    elif path.endswith(".json") and not _URL.match(path):
        urls, counts = _from_index(path)
    elif path.endswith(_LIST_SUFFIXES) and not _URL.match(path):
        urls, counts = _from_list(path), None
    elif "{" in path:
        urls, counts = tuple(_expand_url(u) for u in _braceexpand(path)), None
    elif _URL.match(path):
        urls, counts = (_expand_url(path),), None
    elif any(c in path for c in "*?["):
        urls, counts = tuple(sorted(glob.glob(path))), None
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
        urls = tuple(os.path.join(base, s["name"]) for s in shards)
        counts = tuple(int(s["samples"]) for s in shards)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataConfigError(f"{index_path}: not a readable llava_wb index.json ({e})") from e
    missing = [u for u in urls if not os.path.exists(u)]
    if missing:
        raise DataConfigError(f"{index_path}: {len(missing)} shard(s) listed but missing, e.g. {missing[0]}")
    return urls, counts


def _from_list(list_path: str) -> tuple[str, ...]:
    base = os.path.dirname(os.path.abspath(list_path))
    urls = []
    with open(list_path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if not _URL.match(line) and not os.path.isabs(line):
                line = os.path.join(base, line)
            urls.append(_expand_url(line))
    return tuple(urls)


def _expand_url(url: str) -> str:
    """webdataset has no native s3://; stream it through the AWS CLI like its docs suggest."""
    if url.startswith("s3://"):
        return f"pipe:aws s3 cp {url} -"
    return url


def _braceexpand(pattern: str) -> list[str]:
    import braceexpand  # a webdataset dependency

    return list(braceexpand.braceexpand(pattern))
