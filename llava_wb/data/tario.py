"""Read one webdataset shard as a stream of raw samples, with damage reported instead of raised.

Opening is :func:`open_shard`: local paths and ``file:`` are opened directly; ``s3://``, ``gs://``
and ``http(s)://`` are fetched by a command run with an argument list (``aws s3 cp``, ``gsutil cat``,
``curl``), never through a shell, so a URL is only ever data; ``pipe:`` runs its command through the
shell, which is why ``sources`` accepts it only from the run's own config. A command that exits
non-zero is reported as ``command_failed`` (with its status), not as a damaged shard. Member
iteration goes through ``webdataset.tariterators.tar_file_iterator``; grouping by key uses webdataset's
rule (the key ends at the first dot of the basename). A shard that cannot be opened or ends early
raises ``ShardError`` *after* yielding every complete sample before the damage, so the caller can
keep those and count the rest.

Local plain-USTAR shards (what ``llava-wb-convert`` writes) take a fast path that parses the
512-byte headers directly (about 5x cheaper than ``tarfile``); any header it does not handle (pax,
GNU long names, a bad checksum) sends the shard back through the webdataset path, which skips the
samples already yielded, so the fast path can never change what is read.
"""

from __future__ import annotations

import os
import subprocess
import tarfile
from collections.abc import Iterator
from typing import IO, Any

from webdataset.tariterators import base_plus_ext, tar_file_iterator


class ShardError(Exception):
    def __init__(self, url: str, reason: str, detail: str, samples_read: int):
        self.url, self.reason, self.detail, self.samples_read = url, reason, detail, samples_read
        super().__init__(f"shard {url}: {reason} after {samples_read} samples ({detail})")


class _Unsupported(Exception):
    """A header the fast path does not parse; the caller falls back to tarfile."""


def _fast_members(f) -> Iterator[tuple[str, bytes]]:
    """(name, data) of the regular files of a plain USTAR/v7 tar; raises ``_Unsupported`` for
    anything else and ``tarfile.ReadError`` when the data ends inside a member."""
    while True:
        header = f.read(512)
        if not header or header == b"\0" * 512:
            return  # end of archive (a missing end marker is tolerated, as tarfile does)
        if len(header) < 512:
            raise tarfile.ReadError("unexpected end of data in a header")
        stored = header[148:156].split(b"\0", 1)[0].strip()
        if not stored or int(stored, 8) != sum(header[:148]) + 256 + sum(header[156:]):
            raise _Unsupported("checksum")
        size_field = header[124:136]
        if size_field[0] & 0x80:
            raise _Unsupported("base-256 size")
        size = int(size_field.split(b"\0", 1)[0].strip() or b"0", 8)
        kind = header[156:157]
        if kind not in (b"0", b"\0", b"5"):
            raise _Unsupported(f"member type {kind!r}")
        name = header[:100].split(b"\0", 1)[0]
        if header[257:262] == b"ustar" and header[345] != 0:
            name = header[345:500].split(b"\0", 1)[0] + b"/" + name
        data = f.read(size)
        if len(data) < size:
            raise tarfile.ReadError("unexpected end of data")
        f.read(-size % 512)
        if kind != b"5":
            yield name.decode("utf-8"), data


def _tarfile_members(stream) -> Iterator[tuple[str, bytes]]:
    for member in tar_file_iterator(stream):
        yield member["fname"], member["data"]


def iter_shard(url: str) -> Iterator[dict[str, Any]]:
    """Yield ``{"__key__", "__url__", ext: bytes, ...}`` per sample, in tar order."""
    if os.path.isfile(url):
        done = 0
        try:
            with open(url, "rb", buffering=1 << 20) as f:
                for sample in _group(url, _fast_members(f)):
                    done += 1
                    yield sample
            return
        except _Unsupported:
            pass  # fall through: the webdataset path re-reads the shard and skips what was yielded
        for i, sample in enumerate(_iter_shard_webdataset(url)):
            if i >= done:
                yield sample
        return
    yield from _iter_shard_webdataset(url)


def fetch_command(url: str) -> list[str] | str | None:
    """The command that streams ``url`` to stdout: an argv list for remote URLs (no shell), the
    shell command of a ``pipe:`` URL, or None for a local path."""
    if url.startswith("pipe:"):
        return url[len("pipe:") :]
    if url.startswith("s3://"):
        return ["aws", "s3", "cp", url, "-"]
    if url.startswith("gs://"):
        return ["gsutil", "cat", url]
    if url.startswith(("http://", "https://")):
        return [
            "curl",
            "--connect-timeout",
            "30",
            "--retry",
            "5",
            "--retry-delay",
            "2",
            "-f",
            "-s",
            "-S",
            "-L",
            "--",
            url,
        ]
    return None


def open_shard(url: str) -> tuple[IO[bytes], subprocess.Popen | None]:
    """A binary stream of the shard at ``url`` and the process producing it (None if local)."""
    cmd = fetch_command(url)
    if cmd is None:
        return open(url.removeprefix("file:"), "rb"), None
    proc = subprocess.Popen(
        cmd, shell=isinstance(cmd, str), stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, bufsize=1 << 20
    )
    assert proc.stdout is not None
    return proc.stdout, proc


def _finish(proc: subprocess.Popen, stream: IO[bytes], wait: float | None) -> int | None:
    """Exit status of ``proc``; None when it did not end within ``wait`` s (then it is killed)."""
    try:
        rc = proc.wait(timeout=wait)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        rc = None
    stream.close()
    return rc


def _iter_shard_webdataset(url: str) -> Iterator[dict[str, Any]]:
    try:
        stream, proc = open_shard(url)
    except Exception as e:  # OSError for a missing file or command, ValueError, ...
        raise ShardError(url, "unreadable_shard", f"{type(e).__name__}: {e}", 0) from e
    n = 0
    finished = False
    try:
        try:
            for sample in _group(url, _tarfile_members(stream)):
                n += 1
                yield sample
        except ShardError as e:
            # Unparseable data from a command that failed is the command's failure; a command
            # still writing (not within 10 s) was cut off by damage in what it sent.
            rc = _finish(proc, stream, 10.0) if proc is not None else 0
            finished = True
            if rc:
                raise ShardError(
                    url, "command_failed", f"{_cmd_name(proc)} exited with status {rc}", e.samples_read
                ) from e
            raise
        if proc is not None:
            stream.read()  # drain what follows the archive so the command can exit
            rc = _finish(proc, stream, None)
            finished = True
            if rc:
                raise ShardError(url, "command_failed", f"{_cmd_name(proc)} exited with status {rc}", n)
    finally:
        if not finished:
            if proc is not None:  # the consumer stopped early: stop the command
                proc.kill()
                _finish(proc, stream, None)
            else:
                stream.close()


def _cmd_name(proc: subprocess.Popen | None) -> str:
    args = proc.args if proc is not None else ""
    return repr(args if isinstance(args, str) else " ".join(map(str, args)))[:200]


def _group(url: str, members: Iterator[tuple[str, bytes]]) -> Iterator[dict[str, Any]]:
    """Consecutive members with the same key form one sample (webdataset's rule)."""
    current: dict[str, Any] | None = None
    n = 0
    try:
        for fname, data in members:
            if "/" not in fname and fname.startswith("__") and fname.endswith("__"):
                continue  # webdataset's metadata members
            prefix, suffix = base_plus_ext(fname)
            if prefix is None:
                continue
            if current is None or current["__key__"] != prefix:
                if current is not None:
                    n += 1
                    yield current
                current = {"__key__": prefix, "__url__": url}
            if suffix in current:
                raise ShardError(url, "truncated_shard", f"duplicate member {fname!r}", n)
            current[suffix] = data
        if current is not None:
            n += 1
            yield current
    except (tarfile.TarError, EOFError, OSError, ValueError, UnicodeDecodeError) as e:
        # The sample being assembled when the damage hit is incomplete: it is dropped, and counted
        # by the caller as part of this shard error.
        raise ShardError(url, "truncated_shard", f"{type(e).__name__}: {e}", n) from e
