"""Streaming loader: exactly-once epochs, rank/worker splits, equal batches, mixing, resumption."""

from __future__ import annotations

import json
import logging
from collections import Counter

import pytest
from shardkit import write_shards

from llava_wb.data.config import DataConfig
from llava_wb.data.errors import DataConfigError, TooManySkipsError
from llava_wb.data.loader import build_loader
from llava_wb.data.pipeline import DecodeOnly, RawSample

SIZES = [7, 3, 9, 5, 6, 4]  # uneven on purpose
TOTAL = sum(SIZES)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("shards")
    write_shards(str(d), SIZES)
    return str(d)


def cfg(src, **kw):
    base = {"sources": [src], "batch_size": 4, "num_workers": 0, "shuffle_buffer": 5, "epoch_mode": "exact"}
    base.update(kw)
    return DataConfig.from_dict(base)


def ids_of(loader, limit=None):
    """Sample ids of one epoch, or of the first ``limit`` batches (no batch beyond is fetched)."""
    out = []
    if limit == 0:
        return out
    for i, b in enumerate(loader, 1):
        out += [s["id"] for s in b["samples"]]
        if i == limit:
            break
    return out


@pytest.mark.parametrize("workers", [0, 2])
def test_exact_epoch_sees_every_sample_once_and_reshuffles(shards, workers):
    loader = build_loader(cfg(shards, num_workers=workers), process=RawSample())
    e0, e1 = ids_of(loader), ids_of(loader)
    assert sorted(e0) == sorted(f"id{i}" for i in range(TOTAL))
    assert sorted(e1) == sorted(e0)
    assert e0 != e1, "shard/sample order must change between epochs"
    again = build_loader(cfg(shards, num_workers=workers), process=RawSample())
    assert ids_of(again) == e0, "same seed, same order"


def test_ranks_and_workers_partition_the_data(shards):
    seen = []
    for rank in range(2):
        loader = build_loader(cfg(shards, num_workers=2), process=RawSample(), rank=rank, world_size=2)
        seen.append(ids_of(loader))
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == sorted(f"id{i}" for i in range(TOTAL))


def test_balanced_mode_gives_every_rank_the_same_batch_count(shards):
    lens = []
    for rank in range(2):
        loader = build_loader(
            cfg(shards, epoch_mode="balanced", num_workers=2), process=RawSample(), rank=rank, world_size=2
        )
        assert len(loader) == TOTAL // (2 * 4)
        lens.append([sum(1 for _ in loader) for _epoch in range(3)])
    assert lens[0] == lens[1] == [TOTAL // 8] * 3


def test_balanced_stream_covers_data_evenly_over_epochs(shards):
    loader = build_loader(cfg(shards, epoch_mode="balanced", batch_size=2), process=RawSample())
    counts = Counter(ids_of(loader) + ids_of(loader) + ids_of(loader) + ids_of(loader))
    assert set(counts) == {f"id{i}" for i in range(TOTAL)}
    assert max(counts.values()) - min(counts.values()) <= 1


@pytest.mark.parametrize("workers,stop", [(0, 1), (0, 5), (2, 1), (2, 4), (2, 7)])
def test_resume_mid_epoch_continues_exactly(shards, workers, stop):
    full = ids_of(build_loader(cfg(shards, num_workers=workers), process=RawSample()))
    first = build_loader(cfg(shards, num_workers=workers), process=RawSample())
    head = ids_of(first, limit=stop)
    state = json.loads(json.dumps(first.state_dict()))  # must survive JSON
    second = build_loader(cfg(shards, num_workers=workers), process=RawSample())
    second.load_state_dict(state)
    assert head + ids_of(second) == full


def test_resume_in_balanced_mode_across_an_epoch_boundary(shards):
    c = cfg(shards, epoch_mode="balanced", num_workers=2, batch_size=3)
    ref = build_loader(c, process=RawSample())
    full = ids_of(ref) + ids_of(ref)
    first = build_loader(c, process=RawSample())
    head = ids_of(first) + ids_of(first, limit=2)
    second = build_loader(c, process=RawSample())
    second.load_state_dict(first.state_dict())
    assert head + ids_of(second) == full


def test_state_from_a_different_setup_is_refused(shards):
    first = build_loader(cfg(shards, num_workers=2), process=RawSample())
    ids_of(first, limit=1)
    other = build_loader(cfg(shards, num_workers=0), process=RawSample())
    with pytest.raises(DataConfigError, match="num_workers"):
        other.load_state_dict(first.state_dict())


def test_mixing_weights(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    write_shards(a, [50, 50], prefix="a")
    write_shards(b, [50, 50], prefix="b")
    c = DataConfig.from_dict(
        {
            "sources": [{"path": a, "weight": 3}, {"path": b, "weight": 1}],
            "batch_size": 10,
            "num_workers": 0,
            "batches_per_epoch": 40,
        }
    )
    ids = ids_of(build_loader(c, process=RawSample()))
    frac_a = sum(i.startswith("a") for i in ids) / len(ids)
    assert 0.68 < frac_a < 0.82, frac_a


def test_more_workers_than_shards_still_reads_everything(tmp_path, caplog):
    d = str(tmp_path / "s")
    write_shards(d, [5, 6])
    with caplog.at_level(logging.WARNING, logger="llava_wb.data"):
        loader = build_loader(cfg(d, num_workers=4), process=RawSample())
        ids = ids_of(loader)
    assert sorted(ids) == sorted(f"id{i}" for i in range(11))
    assert "idle" in caplog.text


def test_fewer_shards_than_ranks_is_a_config_error(tmp_path):
    d = str(tmp_path / "s")
    write_shards(d, [5])
    with pytest.raises(DataConfigError, match="fewer than world_size"):
        build_loader(cfg(d), process=RawSample(), rank=0, world_size=2)


def test_truncated_shard_keeps_samples_before_the_damage(tmp_path):
    d = str(tmp_path / "s")
    paths = write_shards(d, [10, 10])
    data = open(paths[1], "rb").read()
    open(paths[1], "wb").write(data[: len(data) // 2])
    loader = build_loader(cfg(d, shuffle_shards=False, max_skip_rate=1.0), process=RawSample())
    ids = ids_of(loader)
    assert set(f"id{i}" for i in range(10)) <= set(ids)
    assert 10 < len(ids) < 20 and len(ids) == len(set(ids))
    st = loader.skip_state()
    # Every sample the cut shard should hold and did not yield is counted (index.json says 10).
    lost = 20 - len(ids)
    assert st["skipped"] == {"truncated_shard": lost} and st["seen"] == 20
    assert (st["expected"], st["read"]) == (20, len(ids))
    assert "shard-000001.tar" in st["examples"]["truncated_shard"][0]
    assert f"expected 20 samples (index.json), read {len(ids)}" in loader.skip_summary()


def test_corrupt_media_is_skipped_counted_and_limited(tmp_path):
    d = str(tmp_path / "s")
    write_shards(d, [20, 20], corrupt={3, 25})
    loader = build_loader(
        cfg(d, max_skip_rate=0.1, skip_check_min_samples=10, image={"size": 16}),
        process=DecodeOnly(cfg(d, image={"size": 16}).image),
    )
    ids = ids_of(loader)
    assert len(ids) == 38 and "id3" not in ids and "id25" not in ids
    st = loader.skip_state()
    assert st["skipped"] == {"corrupt_media": 2} and st["seen"] == 40
    summary = loader.skip_summary()
    assert "corrupt_media" in summary and ("000000003_id3" in summary or "000000025_id25" in summary)
    many = str(tmp_path / "many")
    write_shards(many, [20, 20], corrupt=set(range(0, 40, 3)))
    strict = build_loader(
        cfg(many, max_skip_rate=0.05, skip_check_min_samples=10, image={"size": 16}),
        process=DecodeOnly(cfg(many, image={"size": 16}).image),
    )
    with pytest.raises(TooManySkipsError, match="corrupt_media"):
        ids_of(strict)


def test_source_forms(tmp_path):
    d = str(tmp_path / "s")
    paths = write_shards(d, [3, 4, 5])
    listfile = tmp_path / "shards.txt"
    listfile.write_text("# shards\n" + "\n".join(paths) + "\n")
    forms = [
        d,
        f"{d}/index.json",
        f"{d}/*.tar",
        f"{d}/shard-{{000000..000002}}.tar",
        str(listfile),
        f"pipe:cat {paths[0]}",
    ]
    for form in forms:
        c = cfg(form, batches_per_epoch=None)
        ids = ids_of(build_loader(c, process=RawSample()))
        want = 3 if form.startswith("pipe:") else 12
        assert len(ids) == want == len(set(ids)), form


def test_unknown_source_and_field_errors_name_the_problem(tmp_path):
    with pytest.raises(DataConfigError, match="no such file"):
        build_loader(cfg(str(tmp_path / "nope")), process=RawSample())
    with pytest.raises(DataConfigError, match="data.shuffle_bufer"):
        DataConfig.from_dict({"sources": ["x"], "shuffle_bufer": 3})
    d = str(tmp_path / "glob")
    write_shards(d, [3])
    with pytest.raises(DataConfigError, match="batches_per_epoch must be set"):
        build_loader(cfg(f"{d}/*.tar", epoch_mode="balanced"), process=RawSample())
