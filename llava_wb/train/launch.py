"""Start ``python -m llava_wb.train`` under ``torchrun`` or the ``deepspeed`` launcher from Python.

Notebooks use this for more than one process (one process trains in the kernel itself). The
child's output streams through; a non-zero exit raises with the command and the log tail.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def command(config: str, overrides: Sequence[str] = (), *, nproc: int = 2, launcher: str = "torchrun") -> list[str]:
    """The launch command line for ``nproc`` local processes."""
    port = str(free_port())
    if launcher == "torchrun":
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(nproc),
            "--master_port",
            port,
            "-m",
            "llava_wb.train",
            config,
            *overrides,
        ]
    if launcher == "deepspeed":
        exe = shutil.which("deepspeed", path=os.path.dirname(sys.executable)) or "deepspeed"
        return [exe, "--num_gpus", str(nproc), "--master_port", port, "--module", "llava_wb.train", config, *overrides]
    raise ValueError(f"unknown launcher {launcher!r}; known: deepspeed, torchrun")


def launch(
    config: str,
    overrides: Sequence[str] = (),
    *,
    nproc: int = 2,
    launcher: str = "torchrun",
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run training in ``nproc`` processes and return the run's ``result.json``."""
    from .config import load_config

    out = Path(load_config(config, list(overrides)).train.output_dir)
    cmd = command(config, overrides, nproc=nproc, launcher=launcher)
    run_env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), **(env or {})}
    proc = subprocess.Popen(cmd, env=run_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tail: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        print(line, end="")
        tail = (tail + [line])[-40:]
    if proc.wait() != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited with {proc.returncode}:\n{''.join(tail)}")
    with open(out / "result.json", encoding="utf-8") as f:
        return json.load(f)
