"""Tests for the needle task of the synthetic generator (data_tools.synth_needle).

Determinism, one object of the named shape, answers vs meta and pixels, boxes inside the image and
apart, every needle owning >= 50% of some 8-px patch, balanced answers, mixing with images, and the
converter taking the records as ordinary images.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from synth_fixtures import file_tree, generated, load_records

from data_tools import make_synthetic as ms
from data_tools import synth_needle as sn
from data_tools.convert_to_wds import convert

MIX = {"image": 0.5, "needle": 0.45, "text": 0.05}
SMALL = dict(n_pretrain=20, n_instruct=60, n_heldout=40, progress=False, seed=5, mix=MIX)
COLOUR_TOL = 20  # noise 6, lossless png


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return generated(tmp_path_factory.mktemp("synth_needle"), **SMALL)


def _needles(dataset: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in dataset["all"] if r["meta"]["modality"] == "needle"]


def test_mix_fields_and_info(dataset: dict[str, Any]) -> None:
    by_mod = Counter(r["meta"]["modality"] for r in dataset["all"])
    assert by_mod["needle"] >= 40 and by_mod["image"] >= 40 and set(by_mod) == {"image", "needle", "text"}
    info = dataset["info"]
    assert info["params"]["mix"] == MIX and info["render"]["needle"]["cell_grid"] == sn.CELL_GRID
    assert set(info["vocab"]) >= {"needle_colour", "needle_position", "colour"}
    for r in _needles(dataset):
        split, idx = r["id"].split("-")
        assert r["image"] == f"images/{split}/{idx}.png" and (dataset["root"] / r["image"]).is_file()
        assert "video" not in r and "audio" not in r
        conv = r["conversations"]
        assert sum(t["value"].count("<image>") for t in conv) == 1 and "<image>" in conv[0]["value"]
        assert [t["value"] for t in conv[1::2]] == r["meta"]["answers"]


def test_one_needle_and_answers_match_meta_and_pixels(dataset: dict[str, Any]) -> None:
    checked = Counter()
    for r in _needles(dataset):
        meta, size = r["meta"], 64
        objects, k = meta["objects"], meta["needle"]
        target = objects[k]
        assert sn.N_OBJECTS[0] <= len(objects) <= sn.N_OBJECTS[1]
        assert meta["needle_bbox"] == target["bbox"]
        assert [o["shape"] for o in objects].count(target["shape"]) == 1  # exactly one of the named shape
        assert objects == sorted(objects, key=lambda o: (o["cell"], o["bbox"][0], o["bbox"][1]))
        for o in objects:  # inside the image, apart, schema of the image task
            x0, y0, x1, y1 = o["bbox"]
            assert 0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size
            assert o["cx"] == (x0 + x1) / 2 and o["cy"] == (y0 + y1) / 2
            assert o["cell"] == [min(int(o["cy"] // 16), 3), min(int(o["cx"] // 16), 3)]
        boxes = [o["bbox"] for o in objects]
        for a in range(len(boxes)):
            for b in range(a + 1, len(boxes)):
                p, q, g = boxes[a], boxes[b], sn.GAP_PX
                assert p[2] + g <= q[0] or q[2] + g <= p[0] or p[3] + g <= q[1] or q[3] + g <= p[1]
        x0, y0, x1, y1 = target["bbox"]
        assert x1 <= size // 2 or x0 >= size // 2  # entirely on one side
        # the needle owns >= 50% of at least one 8-px patch of the demo tower
        edges = np.arange(9) * 8
        ox = (np.minimum(edges[1:], x1) - np.maximum(edges[:-1], x0)).clip(min=0)
        oy = (np.minimum(edges[1:], y1) - np.maximum(edges[:-1], y0)).clip(min=0)
        assert (np.outer(oy, ox) >= 32).any(), target["bbox"]
        # pixels: the needle's box is mostly its colour
        img = np.asarray(Image.open(dataset["root"] / r["image"]).convert("RGB")).astype(np.int16)
        crop = img[y0:y1, x0:x1]
        match = (np.abs(crop - np.array(ms.COLOURS[target["colour"]])).max(-1) <= COLOUR_TOL).mean()
        assert match >= 0.45, (r["id"], match)
        if r["id"].startswith("pretrain"):
            caption = r["conversations"][1]["value"]
            assert meta["qtypes"] == ["caption"]
            assert caption.endswith(f"the only {target['shape']} is {target['colour']}.")
            assert caption.startswith(f"{sn.NUMBER_WORDS[len(objects)]} shapes: ")
            continue
        questions = [t["value"] for t in r["conversations"][0::2]]
        for q, qtype, answer in zip(questions, meta["qtypes"], meta["answers"]):
            assert f"the {target['shape']}" in q
            want = {"needle_colour": target["colour"], "needle_position": "left" if x1 <= size // 2 else "right"}
            assert answer == want[qtype]
            checked[qtype] += 1
    assert checked["needle_colour"] >= 10 and checked["needle_position"] >= 10


def test_determinism(tmp_path: Path) -> None:
    kw = dict(n_pretrain=4, n_instruct=8, n_heldout=4, progress=False, mix={"needle": 1.0})
    ms.generate(tmp_path / "a", seed=2, **kw)
    ms.generate(tmp_path / "b", seed=2, **kw)
    ms.generate(tmp_path / "c", seed=3, **kw)
    a, b, c = file_tree(tmp_path / "a"), file_tree(tmp_path / "b"), file_tree(tmp_path / "c")
    assert a == b and a["instruct.json"] != c["instruct.json"]
    cfg = ms.SynthConfig(seed=2, mix=(("needle", 1.0),))
    for i in range(4):
        record, media = ms.make_record(cfg, "heldout", i)
        assert record == load_records(tmp_path / "a" / "heldout.json")[i]
        assert all(a[rel] == data for rel, data in media.items())


def test_answer_balance() -> None:
    cfg = ms.SynthConfig(seed=11, mix=(("needle", 1.0),))
    answers: dict[str, Counter] = {t: Counter() for t in sn.NEEDLE_QUESTIONS}
    shapes = Counter()
    for i in range(400):
        meta = ms.make_record(cfg, "heldout", i)[0]["meta"]
        shapes[meta["objects"][meta["needle"]]["shape"]] += 1
        for t, a in zip(meta["qtypes"], meta["answers"]):
            answers[t][a] += 1
    for t, counts in answers.items():
        vocab = ms.TASKS["needle"].vocab[t]
        assert set(counts) == set(vocab) and sum(counts.values()) >= 200
        assert max(counts.values()) / sum(counts.values()) <= 1 / len(vocab) + 0.08, (t, counts)
    assert set(shapes) == set(ms.SHAPES) and max(shapes.values()) <= 400 / 3 + 40


def test_small_image_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="image_size"):
        ms.generate(
            tmp_path, n_pretrain=0, n_instruct=1, n_heldout=0, progress=False, mix={"needle": 1.0}, image_size=32
        )


def test_converter_accepts_needle_records(dataset: dict[str, Any], tmp_path: Path) -> None:
    files = dataset["result"]["files"]
    summary = convert(
        [files[s] for s in ms.SPLITS],
        [str(dataset["root"])],
        tmp_path / "shards",
        shard_size=50,
        workers=1,
        progress=False,
    )
    assert summary.rejected == 0 and summary.converted == len(dataset["all"])
    metas = {}
    for shard in sorted((tmp_path / "shards").glob("*.tar")):
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                if m.name.endswith(".json"):
                    sample = json.loads(tar.extractfile(m).read())
                    metas[sample["id"]] = sample
                elif m.name.endswith(".png"):
                    Image.open(io.BytesIO(tar.extractfile(m).read())).verify()
    needles = _needles(dataset)
    for r in needles:
        assert metas[r["id"]]["meta"]["needle_bbox"] == r["meta"]["needle_bbox"]
