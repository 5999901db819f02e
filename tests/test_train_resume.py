"""Kill and resume: the step counter, the learning rate and the sample order continue exactly.

A resumed run must log the same loss and learning rate at every step as an uninterrupted run with
the same seed, and consume the same batches (sample ids) in the same order. Two interruptions:
``train.stop_after`` (a clean stop after a checkpoint, in-process) and a real SIGKILL of the
training process (subprocesses, so every run has the same thread settings).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

import pytest
import torch
from safetensors.torch import load_file
from train_fixtures import ROOT, make_workspace, resume_config, run, subprocess_env, train_cmd, write_config
from train_fixtures import assert_same_run as same_run

from llava_wb.train import load_config, train
from llava_wb.train.checkpoints import latest_checkpoint

STEPS = 10


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return make_workspace(tmp_path_factory.mktemp("train_resume"), n=48, shard_size=16)


def config(ws, out, steps=STEPS, **train_kw):
    return resume_config(ws, out, steps, **train_kw)


def assert_same_run(ref, got, tol=0.0, steps=STEPS):
    same_run(ref, got, steps, tol)


def test_stop_after_then_resume_matches_uninterrupted(ws, tmp_path):
    ref, cut, steps = tmp_path / "ref", tmp_path / "cut", 6
    train(load_config(config(ws, ref, steps)))
    first = train(load_config(config(ws, cut, steps, stop_after=3)))
    assert first["global_step"] == 3 and not first["finished"] and first["final_dir"] is None
    assert latest_checkpoint(cut).name == "checkpoint-3"
    second = train(load_config(config(ws, cut, steps, resume=True)))
    assert second["resumed_from"].endswith("checkpoint-3") and second["global_step"] == steps
    assert_same_run(ref, cut, steps=steps)
    # resuming a finished run trains nothing and leaves the final model alone
    before = (cut / "final" / "model.safetensors").read_bytes()
    again = train(load_config(config(ws, cut, steps, resume=True)))
    assert again["global_step"] == steps and again["train_loss"] is None
    assert (cut / "final" / "model.safetensors").read_bytes() == before
    # died after the last checkpoint but before final/ was written: final/ is rebuilt from the checkpoint
    shutil.rmtree(cut / "final")
    train(load_config(config(ws, cut, steps, resume=True)))
    rebuilt = load_file(str(cut / "final" / "model.safetensors"))
    for name, tensor in load_file(str(ref / "final" / "model.safetensors")).items():
        assert torch.equal(tensor, rebuilt[name]), name


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted(ws, tmp_path):
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    run(train_cmd(write_config(tmp_path / "ref.yaml", config(ws, ref))))
    cfg_path = write_config(tmp_path / "cut.yaml", config(ws, cut))
    proc = subprocess.Popen(
        train_cmd(cfg_path),
        env=subprocess_env(),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        while not (cut / "checkpoint-4" / "complete.json").exists():
            assert proc.poll() is None, f"training ended before it could be killed:\n{proc.stderr.read()[-3000:]}"
            assert time.monotonic() < deadline, "no checkpoint-4 within 240 s"
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)  # the trainer and its loader workers, mid-run
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (cut / "final").exists()
    killed_at = latest_checkpoint(cut)
    assert killed_at is not None and int(killed_at.name.split("-")[1]) < STEPS
    out = run(train_cmd(cfg_path, "train.resume=true"))
    assert '"resumed_from"' in out.stdout and killed_at.name in out.stdout
    assert_same_run(ref, cut, tol=1e-6)
