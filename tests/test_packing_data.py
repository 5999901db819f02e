"""Packing in the loader: rows within budget, every sample exactly once, exact resumption (0 and 2
workers), and packed training that resumes exactly and keeps ranks in step under torchrun."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from train_fixtures import (
    make_workspace,
    read_ids,
    read_metrics,
    resume_config,
    run,
    tiny_config,
    torchrun_cmd,
    write_config,
)

from llava_wb.data.config import DataConfig, PackingConfig
from llava_wb.data.errors import DataConfigError
from llava_wb.data.loader import build_train_loader
from llava_wb.data.packing import Pending, RowPacker, fill_row, padding_fraction
from llava_wb.train.config import load_config
from llava_wb.train.run import train

MEDIA = {"image": 16}


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return make_workspace(tmp_path_factory.mktemp("packing"), n=60, shard_size=8)  # 8 shards, the last short


@pytest.fixture(scope="module")
def tok(ws):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(ws["tokenizer"])


def data_cfg(ws: dict[str, str], workers: int, **kw: Any) -> DataConfig:
    base = tiny_config(ws, "unused")["data"]
    base.update(num_workers=workers, epoch_mode="exact", batch_size=2, packing={"max_tokens": 160, "buffer": 12})
    base.update(kw)
    return DataConfig.from_dict(base)


def batches(loader, limit: int | None = None) -> list[dict]:
    out = []
    for b in loader:
        out.append(b)
        if limit is not None and len(out) == limit:
            break
    return out


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 64), min_size=1, max_size=80),
    rows=st.integers(1, 4),
    buffer=st.integers(1, 24),
    strategy=st.sampled_from(["best_fit", "first_fit", "max_fill"]),
)
def test_rows_stay_within_budget_and_every_sample_leaves_once(lengths, rows, buffer, strategy):
    packer = RowPacker(PackingConfig(max_tokens=64, buffer=buffer, strategy=strategy), rows)
    out: list[list[int]] = []
    for i, n in enumerate(lengths):
        packer.add(Pending(i, n, {"id": i}, {}))
        if packer.ready():
            pending = [p.ordinal for p in packer.pool]
            taken = packer.take()
            assert taken[0][0].ordinal == min(pending)  # the oldest sample never waits behind newer ones
            out += [[p.ordinal for p in row] for row in taken]
    while packer.pool:
        out += [[p.ordinal for p in row] for row in packer.take()]
    assert sorted(i for row in out for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 64 for row in out)


@settings(max_examples=200, deadline=None)
@given(lengths=st.lists(st.integers(1, 30), max_size=10), free=st.integers(-3, 60))
def test_fill_row_is_the_fullest_subset_reaching_least_far(lengths, free):
    """Against every subset: the largest sum <= free, and of the subsets making it, one whose newest item
    is as old as any can be (the pool is in arrival order: older samples go first)."""
    picks = fill_row(lengths, free)
    assert picks == sorted(set(picks)) and all(0 <= i < len(lengths) for i in picks)
    subsets = [[i for i in range(len(lengths)) if m >> i & 1] for m in range(1 << len(lengths))]
    fits = [c for c in subsets if sum(lengths[i] for i in c) <= max(free, 0)]
    best = max(sum(lengths[i] for i in c) for c in fits)
    assert sum(lengths[i] for i in picks) == best
    reach = min(max(c, default=-1) for c in fits if sum(lengths[i] for i in c) == best)
    assert max(picks, default=-1) == reach


def test_max_fill_fills_a_row_that_best_fit_leaves_short():
    """Row of 10, pool 6 (oldest), 3, 2, 2: best_fit takes the largest that fits (6 + 3, one position
    empty); max_fill finds 6 + 2 + 2."""
    rows = {}
    for strategy in ("best_fit", "max_fill"):
        packer = RowPacker(PackingConfig(max_tokens=10, buffer=4, strategy=strategy), 1)
        for i, n in enumerate((6, 3, 2, 2)):
            packer.add(Pending(i, n, {"id": i}, {}))
        rows[strategy] = [p.length for p in packer.take()[0]]
    assert rows == {"best_fit": [6, 3], "max_fill": [6, 2, 2]}


def test_a_sample_longer_than_a_row_is_refused_by_config_and_by_name():
    with pytest.raises(DataConfigError, match="packing.max_tokens \\(64\\) is below data.max_length \\(128\\)"):
        DataConfig.from_dict({"sources": ["x"], "max_length": 128, "packing": {"max_tokens": 64}})
    packer = RowPacker(PackingConfig(max_tokens=8), 1)
    with pytest.raises(ValueError, match="sample id 'big' has 9 LLM tokens"):
        packer.add(Pending(0, 9, {"id": "big"}, {}))


@pytest.mark.parametrize("workers", [0, 2])
def test_packed_epoch_sees_every_sample_once_with_little_padding(ws, tok, workers):
    loader = build_train_loader(data_cfg(ws, workers), tok, media_tokens=MEDIA, rank=0, world_size=1)
    got = batches(loader)
    ids = [i for b in got for i in b["id"]]
    assert sorted(ids) == sorted(set(ids)) and len(ids) == 60
    for b in got:
        assert "attention_mask" not in b and b["input_ids"].shape[1] <= 160
        assert int(b["samples_per_row"].sum()) == len(b["id"])
        assert int(b["image_counts"].sum()) == b["pixel_values"].shape[0]
    full = [b for b in got[:-2]]  # the last batches drain the pool
    assert sum(padding_fraction(b) for b in full) / len(full) < 0.1


@pytest.mark.parametrize(
    "workers,stop,strategy",
    [(w, s, "best_fit") for w in (0, 2) for s in (1, 3, 5)] + [(0, 3, "max_fill"), (2, 3, "max_fill")],
)
def test_packed_resume_mid_epoch_continues_exactly(ws, tok, workers, stop, strategy):
    cfg = data_cfg(ws, workers, packing={"max_tokens": 160, "buffer": 12, "strategy": strategy})
    ref = [b["id"] for b in batches(build_train_loader(cfg, tok, media_tokens=MEDIA, rank=0, world_size=1))]
    first = build_train_loader(cfg, tok, media_tokens=MEDIA, rank=0, world_size=1)
    seen = [b["id"] for b in batches(first, stop)]
    state = json.loads(json.dumps(first.state_dict()))  # it travels as JSON in checkpoints
    second = build_train_loader(cfg, tok, media_tokens=MEDIA, rank=0, world_size=1)
    second.load_state_dict(state)
    rest = [b["id"] for b in batches(second)]
    assert seen + rest == ref


def test_state_from_a_different_packing_is_refused(ws, tok):
    first = build_train_loader(data_cfg(ws, 0), tok, media_tokens=MEDIA, rank=0, world_size=1)
    batches(first, 1)
    other = build_train_loader(
        data_cfg(ws, 0, packing={"max_tokens": 200, "buffer": 12}), tok, media_tokens=MEDIA, rank=0, world_size=1
    )
    with pytest.raises(DataConfigError, match="packing"):
        other.load_state_dict(first.state_dict())


def packed_run(ws, out, steps, **train_kw):
    cfg = resume_config(ws, out, steps, **train_kw)
    cfg["data"].update(batch_size=2, packing={"max_tokens": 160, "buffer": 12})
    return cfg


def test_packed_training_resumes_exactly(ws, tmp_path):
    ref, cut, steps = tmp_path / "ref", tmp_path / "cut", 6
    train(load_config(packed_run(ws, ref, steps)))
    first = train(load_config(packed_run(ws, cut, steps, stop_after=3)))
    assert first["global_step"] == 3
    train(load_config(packed_run(ws, cut, steps, resume=True)))
    a, b = read_metrics(ref), read_metrics(cut)
    assert sorted(a) == sorted(b) == list(range(1, steps + 1))
    for step in a:
        assert a[step]["loss"] == b[step]["loss"] and a[step]["grad_norm"] == b[step]["grad_norm"], step
    assert read_ids(ref) == read_ids(cut)
    assert all(len(ids) > 2 for ids in read_ids(ref).values())  # rows really hold several samples


@pytest.mark.slow
def test_torchrun_ranks_take_equal_packed_steps_on_uneven_shards(ws, tmp_path):
    out, steps = tmp_path / "ddp", 6
    cfg = tiny_config(ws, out, max_steps=steps, save_steps=steps)
    cfg["data"].update(batch_size=2, packing={"max_tokens": 160, "buffer": 12})
    run(torchrun_cmd(["-m", "llava_wb.train", str(write_config(tmp_path / "ddp.yaml", cfg)), "-q"]), timeout=300)
    result = json.loads((out / "result.json").read_text())
    assert result["world_size"] == 2 and result["global_step"] == steps and result["replicas_in_sync"] is True
    ids = [read_ids(out, r) for r in range(2)]
    assert [len(i) for i in ids] == [steps, steps]
    # the first batches come from each rank's first pass over its own shards (later passes reshuffle)
    first = [{s for b in sorted(i)[:2] for s in i[b]} for i in ids]
    assert first[0] and first[1] and not first[0] & first[1]
    assert sorted(read_metrics(out)) == list(range(1, steps + 1))


def test_packing_untokenized_samples_is_a_clear_error(ws):
    from llava_wb.data.loader import build_loader

    loader = build_loader(data_cfg(ws, 0))  # raw decoded samples, no input_ids (e.g. the tower warm-up)
    with pytest.raises(ValueError, match="packs tokenized samples.*set data.packing: null"):
        next(iter(loader))


def test_padding_fraction_counts_real_tokens():
    batch = {"token_mask": torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])}
    assert padding_fraction(batch) == pytest.approx(1 / 8)
