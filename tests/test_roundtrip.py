"""End to end: synthetic LLaVA data -> converter -> shards -> streaming loader, in one and two ranks.

Every converted sample must come back exactly once per epoch with the same conversation text and
byte-identical media, whatever the number of workers and ranks.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess

import pytest
from train_fixtures import torchrun_cmd

from data_tools.convert_to_wds import convert
from data_tools.make_synthetic import generate
from llava_wb.data.config import DataConfig
from llava_wb.data.loader import build_loader, build_train_loader
from llava_wb.data.pipeline import RawSample

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    base = tmp_path_factory.mktemp("rt")
    data = generate(base / "data", n_pretrain=0, n_instruct=240, n_heldout=0, progress=False)
    out = base / "shards"
    summary = convert([data["files"]["instruct"]], [data["media_root"]], out, shard_size=30, workers=2, progress=False)
    with open(data["files"]["instruct"], encoding="utf-8") as f:
        records = json.load(f)  # small test input; the converter itself streams
    return {"data": data, "out": str(out), "summary": summary, "records": records}


def expected(converted):
    """id -> (conversations, media sha256 list) from the source records and files."""
    root = converted["data"]["media_root"]
    want = {}
    for r in converted["records"]:
        media = []
        if "image" in r:
            with open(os.path.join(root, r["image"]), "rb") as f:
                media.append(hashlib.sha256(f.read()).hexdigest())
        want[r["id"]] = (r["conversations"], media)
    return want


def test_converted_plus_rejected_is_every_record(converted):
    s = converted["summary"]
    assert s.records == len(converted["records"]) == 240
    assert s.converted + s.rejected == s.records and s.rejected == 0
    with open(os.path.join(converted["out"], "index.json")) as f:
        index = json.load(f)
    assert sum(sh["samples"] for sh in index["shards"]) == s.converted


@pytest.mark.parametrize("workers", [0, 2])
def test_every_sample_streams_back_once_identical(converted, workers):
    cfg = DataConfig.from_dict(
        {"sources": [converted["out"]], "batch_size": 7, "num_workers": workers, "epoch_mode": "exact"}
    )
    got = [s for b in build_loader(cfg, process=RawSample()) for s in b["samples"]]
    want = expected(converted)
    assert sorted(s["id"] for s in got) == sorted(want)
    for s in got:
        conv, media = want[s["id"]]
        assert s["conversations"] == conv
        assert [hashlib.sha256(b).hexdigest() for b in s["media"].get("image", [])] == media


def test_two_ranks_two_workers_with_torchrun(converted, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    cmd = torchrun_cmd([os.path.join(ROOT, "tests", "dist_stream_worker.py"), converted["out"], str(tmp_path)])
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.load(open(tmp_path / f"rank{r}.json")) for r in range(2)]
    ids = [[s["id"] for s in r["samples"]] for r in ranks]
    assert ids[0] and ids[1] and not set(ids[0]) & set(ids[1])
    want = expected(converted)
    assert sorted(ids[0] + ids[1]) == sorted(want)
    for r in ranks:
        for s in r["samples"]:
            assert (s["conversations"], s["media"].get("image", [])) == want[s["id"]]
    assert ranks[0]["balanced_batches"] == ranks[1]["balanced_batches"] == [ranks[0]["len"]] * 2


def test_train_batches_have_labels_only_on_answers(converted):
    from llava_wb.tokenizer import build_demo_tokenizer, demo_corpus

    tok = build_demo_tokenizer(demo_corpus(records=converted["records"]))
    cfg = DataConfig.from_dict(
        {
            "sources": [converted["out"]],
            "batch_size": 8,
            "num_workers": 0,
            "epoch_mode": "exact",
            "max_length": 128,
            "image": {"size": 32},
        }
    )
    loader = build_train_loader(cfg, tok, media_tokens={"image": 4})
    batch = next(iter(loader))
    image_id = tok.convert_tokens_to_ids("<image>")
    n_images = int(batch["image_counts"].sum())
    assert batch["pixel_values"].shape == (n_images, 3, 32, 32)
    assert int((batch["input_ids"] == image_id).sum()) == 4 * n_images
    assert bool((batch["labels"][batch["input_ids"] == image_id] == -100).all())
    for ids, labels, meta in zip(batch["input_ids"], batch["labels"], batch["meta"]):
        learned = tok.decode(ids[labels != -100])
        for answer in meta["meta"]["answers"]:
            assert answer in learned
