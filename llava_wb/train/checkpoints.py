"""Checkpoint folders: the loader position next to HF's state, a verified completion marker, rotation.

A checkpoint ``OUTPUT/checkpoint-STEP/`` holds what the HF Trainer writes (weights, optimizer,
scheduler, ``rng_state*.pth``, ``trainer_state.json``; DeepSpeed shards under DeepSpeed) plus, per
rank, ``loader_state_rank{R}.json``: the streaming loader's ``state_dict()`` and the number of
batches consumed. The loader state is written *first*; after every rank has finished, rank 0
writes ``complete.json``, *last* and atomically (temp file, fsync, rename): it lists every file of
the checkpoint with its size and sha256 (each file is fsynced while it is hashed). Only folders
with that marker count as checkpoints, and resume uses the newest one whose files still match it
(``resume_checkpoint``): a missing, truncated or overwritten file sends it back to an older one,
with a warning naming the file. Rotation (``save_total_limit``) happens after the marker, so a
complete checkpoint is never deleted in favour of an incomplete one.

The checksums detect torn and corrupted files, not tampering: whoever can write a checkpoint can
write its marker too. A checkpoint folder is trusted input (DeepSpeed unpickles it).

``publish_folder`` makes a folder appear atomically (the final model); ``disk_full_guard`` turns
a failed write on a full disk into an error that names the path and the space needed.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

PREFIX = "checkpoint-"
MARKER = "complete.json"
MARKER_FORMAT = 2  # 1 (no "files" list) was written before the marker held checksums
_STEP_RE = re.compile(rf"^{PREFIX}(\d+)$")
log = logging.getLogger("llava_wb.train")


class CheckpointError(RuntimeError):
    """No usable checkpoint to resume from, or a checkpoint / final model could not be written."""


def loader_state_file(folder: str | Path, rank: int) -> Path:
    return Path(folder) / f"loader_state_rank{rank}.json"


def write_loader_state(folder: str | Path, rank: int, state: dict[str, Any]) -> None:
    """Write one rank's loader position atomically (temp file + rename)."""
    path = loader_state_file(folder, rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(state))


def read_loader_state(folder: str | Path, rank: int) -> dict[str, Any]:
    path = loader_state_file(folder, rank)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: the checkpoint was saved by a run with a different world size "
            "or without the llava_wb trainer; exact resumption needs it"
        )
    return json.loads(path.read_text(encoding="utf-8"))


def write_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a reader sees the old file or the whole new one: a
    temp sibling, fsynced, renamed over ``path``; then the folder entry is fsynced."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.relative_to(folder).as_posix() != MARKER)


def _digest(path: Path, sync: bool = False) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
        if sync:
            os.fsync(f.fileno())  # on disk before the marker that vouches for it
    return h.hexdigest()


def mark_complete(folder: str | Path, step: int, world_size: int) -> None:
    """Write the completion marker: every file of ``folder`` with size and sha256 (rank 0, after
    all ranks finished writing)."""
    folder = Path(folder)
    files = {
        p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": _digest(p, sync=True)}
        for p in _files(folder)
    }
    for sub in {p.parent for p in _files(folder)}:
        _fsync_dir(sub)
    write_atomic(
        folder / MARKER,
        json.dumps(
            {"format": MARKER_FORMAT, "step": step, "world_size": world_size, "time": time.time(), "files": files},
            indent=1,
        ),
    )


def unmark(folder: str | Path) -> None:
    """Remove a stale marker before a checkpoint is written again into ``folder``."""
    Path(folder, MARKER).unlink(missing_ok=True)


def verify(folder: str | Path) -> list[str]:
    """What is wrong with a checkpoint folder compared to its marker ([] when it verifies)."""
    folder = Path(folder)
    try:
        marker = json.loads((folder / MARKER).read_text(encoding="utf-8"))
        listed = marker.get("files")
    except (OSError, ValueError, TypeError) as exc:
        return [f"{MARKER} is unreadable ({exc})"]
    if listed is None:
        log.warning("%s: its %s (written by an older llava_wb) lists no files: it cannot be verified", folder, MARKER)
        return []
    problems = []
    for name, want in listed.items():
        path = folder / name
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif path.stat().st_size != want["size"]:
            problems.append(f"{name} has {path.stat().st_size} bytes, the marker says {want['size']} (truncated?)")
        elif _digest(path) != want["sha256"]:
            problems.append(f"{name} does not match its sha256 in the marker (overwritten or corrupt)")
    extra = [p.relative_to(folder).as_posix() for p in _files(folder)]
    problems += [f"{name} is not listed in the marker" for name in extra if name not in listed]
    return problems


def checkpoints(output_dir: str | Path, complete_only: bool = True) -> list[Path]:
    """Checkpoint folders in ``output_dir`` (with a marker unless ``complete_only=False``), oldest first.
    The marker is not verified here: see ``resume_checkpoint``."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _STEP_RE.match(child.name)
        if match and child.is_dir() and (not complete_only or (child / MARKER).is_file()):
            found.append((int(match.group(1)), child))
    return [path for _, path in sorted(found)]


def resume_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest checkpoint whose files match its marker. A newer one that does not is skipped
    with a warning naming the bad files; None when there is no marked checkpoint at all, and a
    ``CheckpointError`` when there are some but none verifies."""
    rejected = []
    for folder in reversed(checkpoints(output_dir)):
        problems = verify(folder)
        if not problems:
            return folder
        log.warning("%s cannot be resumed from: %s; trying an older checkpoint", folder, "; ".join(problems))
        rejected.append(f"{folder.name}: {'; '.join(problems)}")
    if rejected:
        raise CheckpointError(
            f"no checkpoint in {output_dir} matches its {MARKER}, so none can be resumed from ("
            + " | ".join(rejected)
            + "); delete the damaged ones or start over with "
            "train.overwrite=true"
        )
    return None


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint that verifies, or None (see ``resume_checkpoint``)."""
    return resume_checkpoint(output_dir)


def checkpoint_world_size(folder: str | Path) -> int:
    return int(json.loads(Path(folder, MARKER).read_text(encoding="utf-8"))["world_size"])


def checkpoint_bytes(folder: str | Path) -> int:
    """Bytes a checkpoint occupies, as its marker lists them (0 when it lists none)."""
    try:
        marker = json.loads(Path(folder, MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return 0
    return sum(int(f["size"]) for f in marker.get("files", {}).values())


def rotate(output_dir: str | Path, keep: int | None) -> list[Path]:
    """Delete incomplete checkpoints older than the newest complete one, and all but the newest
    ``keep`` complete ones. Returns the deleted folders."""
    complete = checkpoints(output_dir)
    if not complete:
        return []
    newest = int(_STEP_RE.match(complete[-1].name).group(1))  # type: ignore[union-attr]
    doomed = [
        p
        for p in checkpoints(output_dir, complete_only=False)
        if p not in complete and int(_STEP_RE.match(p.name).group(1)) < newest
    ]  # type: ignore[union-attr]
    if keep is not None and len(complete) > keep:
        doomed += complete[: len(complete) - keep]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed


def publish_folder(staging: str | Path, target: str | Path) -> None:
    """Make the fully written folder ``staging`` appear as ``target`` in one rename: its files and
    entries are fsynced first, the parent after. A stale ``target`` is replaced."""
    staging, target = Path(staging), Path(target)
    for path in _files(staging):
        _fsync_path(path)
    for sub in {p.parent for p in _files(staging)} | {staging}:
        _fsync_dir(sub)
    if target.exists():
        shutil.rmtree(target)
    os.rename(staging, target)
    _fsync_dir(target.parent)


def _fsync_path(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _disk_full(exc: BaseException) -> bool:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            return True
        if "No space left" in str(cur):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def _free_bytes(path: Path) -> int:
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


@contextmanager
def disk_full_guard(folder: str | Path, needed: int, what: str) -> Iterator[None]:
    """Run a save into ``folder``; when it fails and the disk is full (ENOSPC in the error chain,
    or less free space than ``needed`` bytes), raise a ``CheckpointError`` naming the path, the
    free space and the space needed instead of the library's message (``basic_ios::clear``...)."""
    folder = Path(folder)
    try:
        yield
    except Exception as exc:
        free = _free_bytes(folder)
        if not (_disk_full(exc) or free < needed):
            raise
        raise CheckpointError(
            f"{what}: writing {folder} failed, the disk is full: {_human(free)} free on its file system, it needs "
            f"about {_human(needed)} ({type(exc).__name__}: {str(exc).strip()[:200]}). Free space (or point "
            f"train.output_dir elsewhere) and resume with train.resume=true; the unfinished folder has no "
            f"completion marker and is ignored"
        ) from exc


def load_model_weights(model: Any, folder: str | Path) -> None:
    """Load the weights HF saved in a checkpoint (``model.safetensors`` or its sharded form with
    ``model.safetensors.index.json``) into ``model``."""
    from safetensors.torch import load_file

    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
    elif (folder / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise FileNotFoundError(f"{folder} holds no model.safetensors: cannot rebuild the final model from it")
    state: dict[str, Any] = {}
    for name in files:
        state.update(load_file(str(folder / name)))
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise RuntimeError(f"{folder}: weights do not fit the model: unexpected {result.unexpected_keys[:5]}")
