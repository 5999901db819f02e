"""Tests for the needle-in-a-clip task (data_tools.synth_needle_clip).

The needle shows in exactly the frames of its segment and so in exactly one of the uniformly
sampled frames, in its colour; the other shapes stay in every frame; answers and captions agree
with meta; answers are balanced; generation is deterministic; the converter stores the clips.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from synth_fixtures import file_tree, generated

from data_tools import make_synthetic as ms
from data_tools import synth_needle_clip as snc
from data_tools.convert_to_wds import convert
from llava_wb.data.video import read_video

MIX = {"needle_clip": 0.8, "text": 0.2}
COLOUR_TOL = 40  # h.264 at crf 10 plus the gray noise


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return generated(
        tmp_path_factory.mktemp("synth_needle_clip"),
        n_pretrain=4,
        n_instruct=12,
        n_heldout=8,
        progress=False,
        seed=3,
        mix=MIX,
    )


def _clips(dataset: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in dataset["all"] if r["meta"]["modality"] == snc.MODALITY]


def _shows(frame: np.ndarray, obj: dict[str, Any]) -> bool:
    """The object's colour fills the centre of its box in this frame."""
    x0, y0, x1, y1 = obj["bbox"]
    centre = frame[y0 + 4 : y1 - 3, x0 + 4 : x1 - 3].reshape(-1, 3).astype(np.int16)
    return bool((np.abs(centre - np.array(ms.COLOURS[obj["colour"]])).max(-1) <= COLOUR_TOL).mean() >= 0.5)


def test_needle_in_one_segment_only(dataset: dict[str, Any]) -> None:
    clips = _clips(dataset)
    assert len(clips) >= 15 and dataset["info"]["render"][snc.MODALITY]["clip_frames"] == 32
    for r in clips:
        meta, conv = r["meta"], r["conversations"]
        assert r["video"].endswith(".mp4") and "image" not in r
        assert sum(t["value"].count("<video>") for t in conv) == 1 and "<video>" in conv[0]["value"]
        data = (dataset["root"] / r["video"]).read_bytes()
        objects, k, (start, stop) = meta["objects"], meta["needle"], meta["visible"]
        assert stop - start == snc.SEGMENT_FRAMES and start == meta["segment"] * snc.SEGMENT_FRAMES
        every, info = read_video(data, num_frames=meta["clip_frames"])
        assert info["indices"] == list(range(32))
        assert [_shows(f, objects[k]) for f in every] == [start <= t < stop for t in range(32)]
        others = [o for i, o in enumerate(objects) if i != k]
        assert all(_shows(every[t], o) for t in (0, 13, 31) for o in others)  # the rest stays
        sampled, _ = read_video(data, num_frames=8)
        assert [_shows(f, objects[k]) for f in sampled] == [t == meta["sampled_frame"] for t in range(8)]
        target = objects[k]
        if r["id"].startswith("pretrain"):
            assert conv[1]["value"].endswith(
                f"a {target['colour']} {target['shape']} shows up in the "
                f"{'first' if meta['segment'] < 4 else 'second'} half."
            )
            continue
        want = {
            "needle_clip_colour": target["colour"],
            "needle_clip_position": "left" if target["bbox"][2] <= 32 else "right",
            "needle_clip_time": "first" if meta["segment"] < 4 else "second",
        }
        for q, qtype, answer in zip(conv[0::2], meta["qtypes"], meta["answers"]):
            assert f"the {target['shape']}" in q["value"] and answer == want[qtype]


def test_answer_balance() -> None:
    """Plans only (no rendering): the answers of each question type are near uniform."""
    cfg = ms.SynthConfig(seed=4, mix=((snc.MODALITY, 1.0),))
    counts: dict[str, Counter] = {t: Counter() for t in snc.CLIP_QUESTIONS}
    for i in range(300):
        ctx = ms.SampleContext("heldout", i, "qa", np.random.default_rng([4, i]), cfg)
        plan = snc.plan_clip(ctx)
        target = plan["objects"][plan["needle"]]
        counts["needle_clip_colour"][target["colour"]] += 1
        counts["needle_clip_position"]["left" if target["bbox"][2] <= 32 else "right"] += 1
        counts["needle_clip_time"][snc.half(plan["segment"], cfg.video_frames)] += 1
    for t, c in counts.items():
        vocab = ms.TASKS[snc.MODALITY].vocab[t]
        assert set(c) == set(vocab) and max(c.values()) / 300 <= 1 / len(vocab) + 0.08, (t, c)


def test_determinism_and_conversion(dataset: dict[str, Any], tmp_path: Path) -> None:
    kw = dict(n_pretrain=2, n_instruct=3, n_heldout=2, progress=False, mix={snc.MODALITY: 1.0})
    ms.generate(tmp_path / "a", seed=1, **kw)
    ms.generate(tmp_path / "b", seed=1, **kw)
    assert file_tree(tmp_path / "a") == file_tree(tmp_path / "b")
    files = dataset["result"]["files"]
    summary = convert(
        [files[s] for s in ms.SPLITS],
        [str(dataset["root"])],
        tmp_path / "shards",
        shard_size=50,
        workers=1,
        progress=False,
    )
    assert summary.converted == len(dataset["all"]) and summary.rejected == 0
    index = json.loads((tmp_path / "shards" / "index.json").read_text())
    assert sum(s["samples"] for s in index["shards"]) == len(dataset["all"])
