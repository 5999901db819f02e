"""Checkpoint folders: the loader position next to HF's state, a completeness marker, rotation.

A checkpoint ``OUTPUT/checkpoint-STEP/`` holds what the HF Trainer writes (weights, optimizer,
scheduler, ``rng_state*.pth``, ``trainer_state.json``; DeepSpeed shards under DeepSpeed) plus, per
rank, ``loader_state_rank{R}.json``: the streaming loader's ``state_dict()`` and the number of
batches consumed. The loader state is written *first*; after every rank has finished, rank 0
writes ``complete.json``. Only folders with that marker count as checkpoints: a run killed while
saving resumes from the previous one. Rotation (``save_total_limit``) happens after the marker,
so a complete checkpoint is never deleted in favour of an incomplete one.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

PREFIX = "checkpoint-"
MARKER = "complete.json"
_STEP_RE = re.compile(rf"^{PREFIX}(\d+)$")


def loader_state_file(folder: str | Path, rank: int) -> Path:
    return Path(folder) / f"loader_state_rank{rank}.json"


def write_loader_state(folder: str | Path, rank: int, state: dict[str, Any]) -> None:
    """Write one rank's loader position atomically (temp file + rename)."""
    path = loader_state_file(folder, rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state), encoding="utf-8")
    tmp.replace(path)


def read_loader_state(folder: str | Path, rank: int) -> dict[str, Any]:
    path = loader_state_file(folder, rank)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the checkpoint was saved by a run with a different world size "
                                "or without the llava_wb trainer; exact resumption needs it")
    return json.loads(path.read_text(encoding="utf-8"))


def mark_complete(folder: str | Path, step: int, world_size: int) -> None:
    Path(folder, MARKER).write_text(json.dumps({"step": step, "world_size": world_size, "time": time.time()}),
                                    encoding="utf-8")


def checkpoints(output_dir: str | Path, complete_only: bool = True) -> list[Path]:
    """Checkpoint folders in ``output_dir``, oldest step first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _STEP_RE.match(child.name)
        if match and child.is_dir() and (not complete_only or (child / MARKER).is_file()):
            found.append((int(match.group(1)), child))
    return [path for _, path in sorted(found)]


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint, or None."""
    found = checkpoints(output_dir)
    return found[-1] if found else None


def checkpoint_world_size(folder: str | Path) -> int:
    return int(json.loads(Path(folder, MARKER).read_text(encoding="utf-8"))["world_size"])


def rotate(output_dir: str | Path, keep: int | None) -> list[Path]:
    """Delete incomplete checkpoints older than the newest complete one, and all but the newest
    ``keep`` complete ones. Returns the deleted folders."""
    complete = checkpoints(output_dir)
    if not complete:
        return []
    newest = int(_STEP_RE.match(complete[-1].name).group(1))  # type: ignore[union-attr]
    doomed = [p for p in checkpoints(output_dir, complete_only=False)
              if p not in complete and int(_STEP_RE.match(p.name).group(1)) < newest]  # type: ignore[union-attr]
    if keep is not None and len(complete) > keep:
        doomed += complete[: len(complete) - keep]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed


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
