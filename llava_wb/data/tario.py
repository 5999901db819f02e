"""Read one webdataset shard as a stream of raw samples, with damage reported instead of raised.

Opening goes through ``webdataset.gopen`` (local paths, ``pipe:``, http(s) via curl, gs://), member
iteration through ``webdataset.tariterators.tar_file_iterator``; grouping by key uses webdataset's
rule (the key ends at the first dot of the basename). A shard that cannot be opened or ends early
raises ``ShardError`` *after* yielding every complete sample before the damage, so the caller can
keep those and count the rest.
"""

from __future__ import annotations

import tarfile
from typing import Any, Iterator

from webdataset.gopen import gopen
from webdataset.tariterators import base_plus_ext, tar_file_iterator


class ShardError(Exception):
    def __init__(self, url: str, reason: str, detail: str, samples_read: int):
        self.url, self.reason, self.detail, self.samples_read = url, reason, detail, samples_read
        super().__init__(f"shard {url}: {reason} after {samples_read} samples ({detail})")


def iter_shard(url: str) -> Iterator[dict[str, Any]]:
    """Yield ``{"__key__", "__url__", ext: bytes, ...}`` per sample, in tar order."""
    try:
        stream = gopen(url, "rb")
    except Exception as e:  # gopen raises many types (OSError, ValueError for bad schemes, ...)
        raise ShardError(url, "unreadable_shard", f"{type(e).__name__}: {e}", 0) from e
    current: dict[str, Any] | None = None
    n = 0
    try:
        for member in tar_file_iterator(stream):
            prefix, suffix = base_plus_ext(member["fname"])
            if prefix is None:
                continue
            if current is None or current["__key__"] != prefix:
                if current is not None:
                    n += 1
                    yield current
                current = {"__key__": prefix, "__url__": url}
            if suffix in current:
                raise ShardError(url, "truncated_shard", f"duplicate member {member['fname']!r}", n)
            current[suffix] = member["data"]
        if current is not None:
            n += 1
            yield current
    except (tarfile.TarError, EOFError, OSError, ValueError) as e:
        # The sample being assembled when the damage hit is incomplete: it is dropped, and counted
        # by the caller as part of this shard error.
        raise ShardError(url, "truncated_shard", f"{type(e).__name__}: {e}", n) from e
    finally:
        try:
            stream.close()
        except Exception:  # a pipe: stream reports the command's exit status on close
            pass
