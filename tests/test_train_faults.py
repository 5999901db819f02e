"""Training fault matrix: damaged checkpoints, a kill inside the final save, torn logs, a full disk.

Each test breaks a run the way a crash, a bad disk or a full file system would, then resumes (or
saves) and checks the outcome: resumed exactly from the newest checkpoint that verifies, a final
model that loads, or a clear error naming the file. Kills are real SIGKILLs at a fixed point
(``crash_hook.py``); the full disk is a real tmpfs of a few hundred KiB in a private mount
namespace (skipped where mounting is not permitted). Under DeepSpeed, which unpickles its checkpoint files
(``weights_only=False``), a file that does not match its marker is refused before DeepSpeed opens it.
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_fixtures import (
    ROOT,
    assert_same_run,
    free_port,
    make_workspace,
    resume_config,
    run,
    subprocess_env,
    tiny_config,
    train_cmd,
    write_config,
)

from llava_wb.train import load_config, train

STEPS = 6
HOOK = str(Path(__file__).with_name("crash_hook.py"))


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return make_workspace(tmp_path_factory.mktemp("train_faults"), n=48, shard_size=16)


@pytest.fixture(scope="module")
def reference(ws, tmp_path_factory):
    """An uninterrupted run of the resume config."""
    out = tmp_path_factory.mktemp("reference") / "run"
    train(load_config(resume_config(ws, out, STEPS)))
    return out


def stopped_at_4(ws, out):
    """A run stopped after step 4: complete checkpoints 2 and 4."""
    first = train(load_config(resume_config(ws, out, STEPS, stop_after=4)))
    assert first["global_step"] == 4 and (out / "checkpoint-2").is_dir() and (out / "checkpoint-4").is_dir()


def delete(path: Path) -> None:
    path.unlink()


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def overwrite(path: Path) -> None:  # same size, other bytes: only the checksum can tell
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "name,damage",
    [
        ("optimizer.pt", delete),
        ("scheduler.pt", delete),
        ("model.safetensors", truncate),
        ("rng_state.pth", overwrite),
        ("trainer_state.json", overwrite),
    ],
)
def test_damaged_latest_checkpoint_falls_back_to_the_previous_one_exactly(
    ws, reference, tmp_path, caplog, name, damage
):
    out = tmp_path / "cut"
    stopped_at_4(ws, out)
    damage(out / "checkpoint-4" / name)
    with caplog.at_level(logging.WARNING, logger="llava_wb.train"):
        result = train(load_config(resume_config(ws, out, STEPS, resume=True)))
    assert result["resumed_from"].endswith("checkpoint-2") and result["global_step"] == STEPS
    warned = [r.getMessage() for r in caplog.records if "cannot be resumed from" in r.getMessage()]
    assert len(warned) == 1 and "checkpoint-4" in warned[0] and name in warned[0], warned
    assert_same_run(reference, out, STEPS)  # steps 3-6 redone from checkpoint-2: identical to the uninterrupted run


def test_no_checkpoint_verifies_is_a_clear_error(ws, tmp_path):
    from llava_wb.train import checkpoints as ckpt

    out = tmp_path / "cut"
    stopped_at_4(ws, out)
    delete(out / "checkpoint-4" / "optimizer.pt")
    truncate(out / "checkpoint-2" / "scheduler.pt")
    with pytest.raises(
        ckpt.CheckpointError,
        match=r"checkpoint-4: optimizer\.pt is missing.*checkpoint-2: "
        r"scheduler\.pt has \d+ bytes, the marker says \d+",
    ):
        train(load_config(resume_config(ws, out, STEPS, resume=True)))
    # from the command line: the same message, no traceback, exit status 3
    config = write_config(tmp_path / "resume.yaml", resume_config(ws, out, STEPS, resume=True))
    proc = subprocess.run(
        train_cmd(config), env=subprocess_env(), cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 3 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "checkpoint error: " in proc.stderr and "optimizer.pt is missing" in proc.stderr


def test_torn_last_log_lines_are_dropped_with_a_warning(ws, reference, tmp_path, caplog):
    out = tmp_path / "cut"
    stopped_at_4(ws, out)
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "loss": 1.2')  # the kill landed inside a write
    with open(out / "sample_ids" / "rank0.jsonl", "a") as f:
        f.write('{"batch": 8, "epo')
    with caplog.at_level(logging.WARNING, logger="llava_wb.train"):
        result = train(load_config(resume_config(ws, out, STEPS, resume=True)))
    assert result["resumed_from"].endswith("checkpoint-4")
    torn = [r.getMessage() for r in caplog.records if "not valid JSON" in r.getMessage()]
    assert len(torn) == 2 and any("metrics.jsonl" in m for m in torn) and any("rank0.jsonl" in m for m in torn)
    assert_same_run(reference, out, STEPS)


def test_sigkill_inside_the_final_save_leaves_no_final_and_resume_completes_it(ws, tmp_path):
    from llava_wb.model import load_bundle

    out = tmp_path / "run"
    cfg = tiny_config(ws, out, max_steps=4, save_steps=2, report_to="none")
    path = write_config(tmp_path / "run.yaml", cfg)
    # killed right before the final model's weights are written (config.json is already there)
    proc = subprocess.run(
        [
            sys.executable,
            HOOK,
            "transformers.modeling_utils:safe_save_file",
            r"/final[^/]*/model\.safetensors$",
            "--",
            str(path),
            "-q",
        ],
        env=subprocess_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        start_new_session=True,
        check=False,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert (out / "checkpoint-4" / "complete.json").is_file()
    assert not (out / "final").exists()  # a half-written final model never carries the name
    result = train(load_config(cfg, ["train.resume=true"]))
    assert result["finished"] and result["global_step"] == 4 and not (out / "final.partial").exists()
    load_bundle(out / "final")  # loads: a complete bundle
    final, saved = (
        load_file(str(out / "final" / "model.safetensors")),
        load_file(str(out / "checkpoint-4" / "model.safetensors")),
    )
    assert final.keys() == saved.keys() and all(torch.equal(final[k], saved[k]) for k in final)


def _can_mount_tmpfs(where: Path) -> bool:
    if not shutil.which("unshare"):
        return False
    where.mkdir()
    probe = subprocess.run(
        ["unshare", "-Urm", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs '{where}'"], capture_output=True, check=False
    )
    return probe.returncode == 0


def _pages(n: int) -> int:
    return -(-n // 4096) * 4096


@pytest.mark.parametrize("where", ["checkpoint", "final"])
def test_disk_full_save_names_the_path_and_the_space_needed(ws, reference, tmp_path, where):
    """A real ENOSPC: the run folder is a tmpfs too small for the first checkpoint's optimizer state
    (today torch.save dies there with ``basic_ios::clear``), or one that holds the checkpoint but
    not the final model after it."""
    out = tmp_path / "full"
    if not _can_mount_tmpfs(out):
        pytest.skip("cannot mount a tmpfs in a private mount namespace here (unshare -Urm + mount not permitted)")
    sizes = {p.name: p.stat().st_size for p in (reference / f"checkpoint-{STEPS}").iterdir()}
    if where == "checkpoint":  # the weights fit, the optimizer state does not
        limit, steps, failed = (
            _pages(sizes["model.safetensors"]) + _pages(sizes["optimizer.pt"] // 2),
            4,
            "checkpoint-2",
        )
    else:  # the one checkpoint (at the last step) fits, the final model after it does not
        limit, steps, failed = sum(_pages(n) for n in sizes.values()), 2, "final.partial"
    limit += 64 * 1024  # config, logs, loader state
    cfg = write_config(tmp_path / "full.yaml", tiny_config(ws, out, max_steps=steps, save_steps=2, report_to="none"))
    script = f'mount -t tmpfs -o size={limit} tmpfs "$0" && exec "$@"'
    proc = subprocess.run(
        ["unshare", "-Urm", "sh", "-c", script, str(out), *train_cmd(cfg)],
        env=subprocess_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "disk is full" in last and str(out / failed) in last, proc.stderr[-3000:]
    assert "free on its file system" in last and "it needs about" in last


class _Planted:
    """Unpickling this creates a file: stands for any code a pickle can run."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return open, (self.path, "w")


@pytest.mark.slow
def test_deepspeed_resume_refuses_a_file_that_does_not_match_the_marker_before_unpickling(ws, tmp_path):
    launcher = Path(sys.executable).parent / "deepspeed"
    if not launcher.exists():
        pytest.skip("deepspeed launcher not installed")
    out, planted = tmp_path / "ds", tmp_path / "PLANTED"
    cfg = write_config(
        tmp_path / "ds.yaml",
        tiny_config(
            ws, out, max_steps=6, save_steps=2, stop_after=4, report_to="none", deepspeed="configs/deepspeed/zero2.json"
        ),
    )

    def launch(*overrides: str) -> subprocess.CompletedProcess:
        return run(
            [
                str(launcher),
                "--num_gpus",
                "2",
                "--master_port",
                str(free_port()),
                "--module",
                "llava_wb.train",
                str(cfg),
                "-q",
                *overrides,
            ],
            timeout=600,
        )

    launch()
    states = out / "checkpoint-4" / "global_step4" / "mp_rank_00_model_states.pt"
    assert states.is_file() and (out / "checkpoint-2" / "complete.json").is_file()
    torch.save({"module": _Planted(str(planted))}, states)  # what DeepSpeed would unpickle on resume
    proc = launch("train.resume=true", "train.stop_after=null")
    assert not planted.exists()  # DeepSpeed never opened the file
    assert "global_step4/mp_rank_00_model_states.pt" in proc.stderr and "cannot be resumed from" in proc.stderr
    result = json.loads((out / "result.json").read_text())
    assert result["resumed_from"].endswith("checkpoint-2") and result["finished"] and result["global_step"] == 6
