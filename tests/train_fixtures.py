"""Shared helpers for the training tests: tiny synthetic shards, a tokenizer, a tiny run config.

``make_workspace`` writes (once per test module) synthetic LLaVA records converted to shards, a
one-shard source of exactly one batch (for the "loss falls on a repeated batch" check) and the
demo tokenizer. ``tiny_config`` is a run config small enough for a step in ~0.1 s on one core:
a 2-layer CLIP-like tower on 32x32 images (4x4 patches of 8 px = 16 visual tokens) and a 2-layer
LLaMA of width 32.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]

TINY_MODEL: dict[str, Any] = {
    "vision": {
        "type": "clip",
        "freeze": False,
        "feature_layer": -1,
        "config": {
            "image_size": 32,
            "patch_size": 8,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
        },
    },
    "projector": {"type": "mlp2x_gelu"},
    "reducer": {"type": "identity"},
    "llm": {
        "config": {
            "model_type": "llama",
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "max_position_embeddings": 256,
        }
    },
}


def make_workspace(base: Path, n: int = 96, shard_size: int = 16) -> dict[str, str]:
    """Shards of ``n`` instruction records, a 4-record single-shard source and a tokenizer folder."""
    from data_tools.convert_to_wds import convert
    from data_tools.make_synthetic import generate
    from llava_wb.tokenizer import build_demo_tokenizer, demo_corpus

    data = generate(base / "data", n_pretrain=0, n_instruct=n, n_heldout=0, progress=False)
    convert(
        [data["files"]["instruct"]],
        [data["media_root"]],
        base / "shards",
        shard_size=shard_size,
        workers=1,
        progress=False,
    )
    one = generate(base / "data_one", n_pretrain=0, n_instruct=4, n_heldout=0, seed=7, progress=False)
    convert(
        [one["files"]["instruct"]], [one["media_root"]], base / "one_batch", shard_size=4, workers=1, progress=False
    )
    records = json.loads(Path(data["files"]["instruct"]).read_text()) + json.loads(
        Path(one["files"]["instruct"]).read_text()
    )
    tok = build_demo_tokenizer(demo_corpus(records=records))
    tok.save_pretrained(base / "tokenizer")
    return {
        "shards": str(base / "shards"),
        "one_batch": str(base / "one_batch"),
        "tokenizer": str(base / "tokenizer"),
        "base": str(base),
    }


def demo_run_layout(ws: dict[str, str], run_dir: Path) -> Path:
    """A ``$DEMO_RUN`` folder for ``configs/demo*.yaml``: the workspace's tokenizer, and its shards as every split."""
    (run_dir / "shards").mkdir(parents=True)
    (run_dir / "tokenizer").symlink_to(ws["tokenizer"])
    for split in ("instruct", "pretrain", "heldout"):
        (run_dir / "shards" / split).symlink_to(ws["shards"])
    return run_dir


def tiny_config(ws: dict[str, str], output_dir: Path | str, **train: Any) -> dict[str, Any]:
    """A complete run config dict; ``train`` keys override the ``train:`` section."""
    cfg = {
        "tokenizer": ws["tokenizer"],
        "model": copy.deepcopy(TINY_MODEL),
        "data": {
            "sources": [ws["shards"]],
            "template": "vicuna_v1",
            "max_length": 128,
            "batch_size": 4,
            "num_workers": 1,
            "shuffle_buffer": 16,
            "seed": 0,
            "image": {"size": 32},
        },
        "train": {
            "output_dir": str(output_dir),
            "stage": "finetune",
            "learning_rate": 3e-3,
            "warmup_ratio": 0.1,
            "lr_scheduler_type": "cosine",
            "max_steps": 8,
            "logging_steps": 1,
            "save_steps": 100,
            "report_to": ["tensorboard"],
            "seed": 0,
            "log_sample_ids": True,
        },
    }
    cfg["train"].update(train)
    return cfg


def resume_config(ws: dict[str, str], out: Path | str, steps: int, **train: Any) -> dict[str, Any]:
    """The exact-resume test config: a checkpoint every 2 steps, grad_accum 2 and 2 loader workers
    (resumption must restore the micro-batch and worker order too)."""
    cfg = tiny_config(ws, out, max_steps=steps, save_steps=2, grad_accum=2, report_to="none", **train)
    cfg["data"]["num_workers"] = 2
    return cfg


def assert_same_run(ref: Path | str, got: Path | str, steps: int, tol: float = 0.0) -> None:
    """Same loss, learning rate and grad norm at every step, and the same batches in the same order."""
    a, b = read_metrics(ref), read_metrics(got)
    assert sorted(a) == sorted(b) == list(range(1, steps + 1))
    for step in a:
        for key in ("loss", "learning_rate", "grad_norm"):
            assert abs(a[step][key] - b[step][key]) <= tol * max(1.0, abs(a[step][key])), (step, key, a[step], b[step])
    assert read_ids(ref) == read_ids(got)
    assert len(read_ids(ref)) == steps * 2  # two micro-batches per step


def write_config(path: Path, cfg: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path


def read_metrics(output_dir: Path | str) -> dict[int, dict[str, Any]]:
    """Training log rows by step (the last row wins when a step was logged twice)."""
    rows: dict[int, dict[str, Any]] = {}
    for line in Path(output_dir, "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "loss" in row:
            rows[row["step"]] = row
    return rows


def read_ids(output_dir: Path | str, rank: int = 0) -> dict[int, list[str]]:
    """Sample ids of every consumed batch of ``rank`` (batch index -> ids)."""
    out: dict[int, list[str]] = {}
    for line in Path(output_dir, "sample_ids", f"rank{rank}.jsonl").read_text().splitlines():
        row = json.loads(line)
        out[row["batch"]] = row["ids"]
    return out


def subprocess_env(threads: int = 1) -> dict[str, str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": str(threads),
        "TOKENIZERS_PARALLELISM": "false",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    env.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))
    return env


def train_cmd(config: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "llava_wb.train", str(config), "-q", *overrides]


def torchrun_cmd(target: list[str], nproc: int = 2) -> list[str]:
    """``torchrun`` with ``nproc`` local processes on a free port; ``target``: ``["-m", module, ...]`` or
    ``[script, ...]``."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(nproc),
        "--master_port",
        str(free_port()),
        *target,
    ]


def run(cmd: list[str], timeout: int = 300, **kwargs: Any) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        cmd, env=subprocess_env(), cwd=ROOT, capture_output=True, text=True, timeout=timeout, **kwargs
    )
    assert proc.returncode == 0, f"{' '.join(cmd)}\nSTDOUT:\n{proc.stdout[-3000:]}\nSTDERR:\n{proc.stderr[-5000:]}"
    return proc


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
