"""Multi-process training on CPU (gloo): ``torchrun`` (DDP) and the ``deepspeed`` launcher (ZeRO-2).

Both ranks must take the same number of steps on disjoint samples, and end with the same weights
(the trainer checks this itself: ``replicas_in_sync``). The first DeepSpeed run JIT-compiles its
CPU communication op into ``TORCH_EXTENSIONS_DIR`` (``.cache/torch_extensions``, as the Makefile
sets), which takes 1-2 minutes once. ZeRO-3 (the 7B finetune recipe's setting) runs the same
check with ``LLAVA_WB_TEST_ZERO3=1``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
from train_fixtures import (
    demo_run_layout,
    free_port,
    make_workspace,
    read_ids,
    read_metrics,
    run,
    tiny_config,
    torchrun_cmd,
    write_config,
)

STEPS = 4


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return make_workspace(tmp_path_factory.mktemp("train_dist"), n=64, shard_size=8)


def check_ranks(out: Path, world: int = 2, in_sync: bool | None = True, packed: bool = False) -> dict:
    result = json.loads((out / "result.json").read_text())
    assert result["world_size"] == world and result["global_step"] == STEPS and result["finished"]
    assert result["replicas_in_sync"] is in_sync  # None: ZeRO-3 shards the weights, nothing to compare
    ids = [read_ids(out, r) for r in range(world)]
    assert [len(i) for i in ids] == [STEPS] * world  # same number of batches (= steps) on every rank
    flat = [[s for batch in i.values() for s in batch] for i in ids]
    if packed:  # packed rows hold a varying number of samples; the first batch comes from each rank's shards
        assert all(len(batch) >= 4 for i in ids for batch in i.values())  # 4 rows, at least a sample each
        flat = [i[min(i)] for i in ids]
    else:
        assert all(len(f) == STEPS * 4 == len(set(f)) for f in flat)
    assert not set(flat[0]) & set(flat[1])  # disjoint samples
    assert sorted(read_metrics(out)) == list(range(1, STEPS + 1))
    assert (out / f"checkpoint-{STEPS}" / "loader_state_rank1.json").is_file()
    return result


@pytest.mark.slow
def test_torchrun_two_processes(ws, tmp_path):
    out = tmp_path / "ddp"
    cfg = write_config(tmp_path / "ddp.yaml", tiny_config(ws, out, max_steps=STEPS, save_steps=STEPS))
    run(
        torchrun_cmd(["-m", "llava_wb.train", str(cfg), "-q"]),
        timeout=300,
    )
    assert check_ranks(out)["distributed"] == "DistributedType.MULTI_CPU"


@pytest.mark.slow
@pytest.mark.parametrize(
    "zero",
    [
        2,
        pytest.param(
            3,
            marks=pytest.mark.skipif(
                os.environ.get("LLAVA_WB_TEST_ZERO3") != "1", reason="ZeRO-3 adds ~40 s; set LLAVA_WB_TEST_ZERO3=1"
            ),
        ),
    ],
)
def test_deepspeed_launcher(ws, tmp_path, zero):
    launcher = Path(sys.executable).parent / "deepspeed"
    if not launcher.exists() and shutil.which("deepspeed") is None:
        pytest.skip("deepspeed launcher not installed")
    out = tmp_path / f"zero{zero}"
    cfg = write_config(
        tmp_path / f"zero{zero}.yaml",
        tiny_config(ws, out, max_steps=STEPS, save_steps=STEPS, deepspeed=f"configs/deepspeed/zero{zero}.json"),
    )
    port = free_port()
    run(
        [
            str(launcher) if launcher.exists() else "deepspeed",
            "--num_gpus",
            "2",
            "--master_port",
            str(port),
            "--module",
            "llava_wb.train",
            str(cfg),
            "-q",
        ],
        timeout=600,
    )
    result = check_ranks(out, in_sync=True if zero == 2 else None)
    assert result["distributed"] == "DistributedType.DEEPSPEED"
    assert (out / f"checkpoint-{STEPS}" / f"global_step{STEPS}").is_dir()  # DeepSpeed's own shards
    # DeepSpeed's CPU shm allreduce buffers (about 66 MB a rank) are gone with the run, not left in /dev/shm
    assert not list(Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{port}_*"))

    from llava_wb.model import load_bundle

    model, _ = load_bundle(out / "final")
    assert model.tokens_per_image == 16


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["torchrun", "deepspeed"])
def test_launchers_train_the_demo_stages(ws, tmp_path, monkeypatch, launcher):
    """configs/demo_tower.yaml -> demo_pretrain.yaml in-process (a few steps), then configs/demo.yaml
    itself with 2 processes under torchrun, or the deepspeed launcher with ZeRO-2 (its data section
    narrowed to this test's shards)."""
    from llava_wb.train import load_config, train

    run_dir = demo_run_layout(ws, tmp_path / "demo")
    monkeypatch.setenv("DEMO_RUN", str(run_dir))
    root = Path(__file__).resolve().parents[1] / "configs"
    train(
        load_config(
            root / "demo_tower.yaml", ["train.max_steps=2", "data.batch_size=8", "train.warmup.eval_sources=[]"]
        )
    )
    # this workspace has no audio clips to warm a tower up on (tests/test_audio_warmup.py does that):
    # stage 0b's tower shape, untrained, where demo_pretrain.yaml loads it
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    audio = load_config(root / "demo_audio.yaml").model.audio
    WhisperEncoder(WhisperConfig(**audio.config)).save_pretrained(run_dir / "audio" / "final")
    # a small packing pool: this workspace's "captions" are multi-turn records that the plain template
    # rejects, and a pool of 256 would read far enough for the skip-rate check to stop the run
    stage1 = ["train.max_steps=1", "data.batch_size=4", "data.packing.buffer=8", "train.report_to=none"]
    train(load_config(root / "demo_pretrain.yaml", stage1))
    overrides = [
        f"data.sources=[{run_dir / 'shards' / 'instruct'}]",
        f"train.max_steps={STEPS}",
        f"train.save_steps={STEPS}",
        "data.batch_size=4",
        "data.packing.buffer=16",  # each rank has 32 samples: a pool of 256 would span several passes
        "train.log_sample_ids=true",
        "train.logging_steps=1",
    ]
    if launcher == "torchrun":
        cmd = torchrun_cmd(["-m", "llava_wb.train", str(root / "demo.yaml"), "-q", *overrides])
    else:
        exe = Path(sys.executable).parent / "deepspeed"
        if not exe.exists() and shutil.which("deepspeed") is None:
            pytest.skip("deepspeed launcher not installed")
        cmd = [
            str(exe) if exe.exists() else "deepspeed",
            "--num_gpus",
            "2",
            "--master_port",
            str(free_port()),
            "--module",
            "llava_wb.train",
            str(root / "demo.yaml"),
            "-q",
            *overrides,
            "train.deepspeed=configs/deepspeed/zero2.json",
        ]
    run(cmd, timeout=600)
    result = check_ranks(run_dir / "train", packed=True)  # demo.yaml packs
    assert result["tokens_per_image"] == 16
