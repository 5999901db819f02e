"""Tests for the video and audio tasks of the synthetic generator (data_tools.synth_av).

Media are decoded with the project's own readers (llava_wb.data.video / .audio) and checked against
the records' answers and meta: motion and appearance order from colour masks per frame, crossings
from meta.frames, pitch from the spectrum, beep count from an energy envelope; answer balance; the
converter takes a mixed dataset without rejections.
"""

from __future__ import annotations

import json
import tarfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from synth_fixtures import file_tree, generated, load_records

from data_tools import make_synthetic as ms
from data_tools import synth_av
from data_tools.convert_to_wds import convert
from data_tools.synth_core import pick_qtypes
from llava_wb.data.audio import read_audio
from llava_wb.data.video import read_video

MIX = {"image": 0.3, "video": 0.3, "audio": 0.3, "text": 0.1}
SMALL = dict(n_pretrain=20, n_instruct=60, n_heldout=40, progress=False, seed=1, mix=MIX)
VIDEO_QTYPES = ("motion", "first_colour", "last_colour", "crossing")
AUDIO_QTYPES = ("pitch", "beeps")
COLOUR_TOL = 45  # max channel distance of a decoded pixel to its palette colour (noise 6 + H.264)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return generated(tmp_path_factory.mktemp("synth_av"), **SMALL)


def _of(dataset: dict[str, Any], modality: str) -> list[dict[str, Any]]:
    return [r for r in dataset["all"] if r["meta"]["modality"] == modality]


def _mask(frame: np.ndarray, colour: str) -> np.ndarray:
    return np.abs(frame.astype(np.int16) - np.array(ms.COLOURS[colour])).max(axis=-1) <= COLOUR_TOL


def _beeps(wave: np.ndarray, rate: int) -> np.ndarray:
    """Onsets (samples) of the loud parts of ``wave``: 10 ms RMS above 40% of its maximum."""
    rms = np.sqrt(np.convolve(wave.astype(np.float64) ** 2, np.ones(rate // 100) / (rate // 100), mode="same"))
    loud = rms > 0.4 * rms.max()
    return np.flatnonzero(loud[1:] & ~loud[:-1]) + 1


# ----------------------------------------------------------------------------- records and info
def test_records_fields_and_info(dataset: dict[str, Any]) -> None:
    info, root = dataset["info"], dataset["root"]
    by_mod = Counter(r["meta"]["modality"] for r in dataset["all"])
    assert by_mod["video"] >= 20 and by_mod["audio"] >= 20 and by_mod["image"] >= 20
    assert info["params"]["video_frames"] == 8 and info["params"]["video_fps"] == 8
    assert info["params"]["audio_seconds"] == 2.0
    assert set(info["vocab"]) >= {*VIDEO_QTYPES, *AUDIO_QTYPES, "colour", "text"}
    assert info["render"]["video"]["frames"] == 8 and info["render"]["audio"]["sampling_rate"] == 16000
    formats = Counter()
    for r in dataset["all"]:
        split, idx = r["id"].split("-")
        conv, meta = r["conversations"], r["meta"]
        assert [t["from"] for t in conv] == ["human", "gpt"] * (len(conv) // 2)
        assert len(meta["qtypes"]) == len(meta["answers"]) == len(conv) // 2
        assert [t["value"] for t in conv[1::2]] == meta["answers"]
        for modality in ("image", "video", "audio"):
            tag = f"<{modality}>"
            assert sum(t["value"].count(tag) for t in conv) == (modality in r), (r["id"], modality)
            if modality in r:
                assert tag in conv[0]["value"] and (root / r[modality]).is_file()
        if "video" in r:
            assert r["video"] == f"videos/{split}/{idx}.mp4" and len(meta["frames"]) == 8
        if "audio" in r:
            assert r["audio"] == f"audio/{split}/{idx}.{meta['format']}"
            formats[meta["format"]] += 1
        if split != "pretrain":
            for qtype, answer in zip(meta["qtypes"], meta["answers"]):
                assert answer in info["vocab"][qtype] and " " not in answer
        else:
            assert meta["qtypes"] == ["caption"] and meta["modality"] != "text"
    assert set(formats) == {"wav", "flac", "mp3"}, formats


def test_captions_describe_clips(dataset: dict[str, Any]) -> None:
    for r in dataset["records"]["pretrain"]:
        caption, meta = r["conversations"][1]["value"], r["meta"]
        if meta["modality"] == "video":
            for k, o in enumerate(meta["objects"]):
                act = "stays still" if o["motion"] == "still" else f"moves {o['motion']}"
                assert f"a {o['colour']} {o['shape']} " + ("" if k == 0 else "appears and ") + act in caption
        elif meta["modality"] == "audio":
            n = len(meta["onsets"])
            assert caption == f"{synth_av.BEEP_WORDS[n - 1]} {meta['pitch']} beep{'s' * (n > 1)}."


def test_determinism(tmp_path: Path) -> None:
    kw = dict(n_pretrain=6, n_instruct=12, n_heldout=6, progress=False, mix={"video": 0.5, "audio": 0.5})
    ms.generate(tmp_path / "a", seed=2, **kw)
    ms.generate(tmp_path / "b", seed=2, workers=2, **kw)  # rendered in two processes: the same bytes
    ms.generate(tmp_path / "c", seed=3, **kw)
    a, b, c = file_tree(tmp_path / "a"), file_tree(tmp_path / "b"), file_tree(tmp_path / "c")
    assert a == b and len(a) > 20
    with pytest.raises(ValueError, match="workers must be >= 1"):
        ms.generate(tmp_path / "d", workers=0, **kw)
    assert any(k.startswith("videos/") for k in a) and any(k.startswith("audio/") for k in a)
    assert a["instruct.json"] != c["instruct.json"]
    cfg = ms.SynthConfig(seed=2, mix=(("video", 0.5), ("audio", 0.5)))
    for i in range(4):
        record, media = ms.make_record(cfg, "heldout", i)
        assert record == load_records(tmp_path / "a" / "heldout.json")[i]
        assert all(a[rel] == data for rel, data in media.items())


# ----------------------------------------------------------------------------- video
def test_video_decodes_and_matches_meta(dataset: dict[str, Any]) -> None:
    root, size = dataset["root"], 64
    checked = Counter()
    for r in _of(dataset, "video"):
        meta = r["meta"]
        frames, info = read_video((root / r["video"]).read_bytes(), num_frames=8)
        assert frames.shape == (8, size, size, 3) and info["frames_total"] == 8 and info["fps"] == 8.0
        objects = meta["objects"]
        visible_from = {}
        for i, o in enumerate(objects):
            for t in range(8):
                m, box = _mask(frames[t], o["colour"]), meta["frames"][t][i]
                if box is None:  # not there yet: its colour is absent
                    assert m.sum() <= 2 and t < o["appear"], (r["id"], o, t)
                    continue
                x0, y0, x1, y1 = box
                assert m[y0:y1, x0:x1].sum() >= 0.3 * (x1 - x0) * (y1 - y0) and m.sum() - m[y0:y1, x0:x1].sum() <= 2
                visible_from.setdefault(i, t)
            assert visible_from[i] == o["appear"]
        # first / last colour: what shows up first and last in the decoded frames
        order = sorted(visible_from, key=visible_from.get)
        assert len({visible_from[i] for i in order}) == len(order)  # distinct frames
        assert objects[order[0]]["colour"] == objects[0]["colour"] and visible_from[order[0]] == 0
        assert objects[order[-1]]["colour"] == objects[-1]["colour"]
        # motion: the mover's colour centroid in its first and last visible frame
        mover = objects[meta["mover"]]
        (y_a, x_a), (y_b, x_b) = (
            np.argwhere(_mask(frames[t], mover["colour"])).mean(axis=0) for t in (mover["appear"], 7)
        )
        dx, dy = x_b - x_a, y_b - y_a
        seen = ("right" if dx > 0 else "left") if abs(dx) > abs(dy) else ("down" if dy > 0 else "up")
        assert seen == mover["motion"] and max(abs(dx), abs(dy)) >= 0.45 * size, (r["id"], dx, dy)
        for qtype, answer in zip(meta["qtypes"], meta["answers"]):
            want = {
                "motion": mover["motion"],
                "first_colour": objects[0]["colour"],
                "last_colour": objects[-1]["colour"],
            }.get(qtype)
            assert want is None or answer == want
            checked[qtype] += 1
    assert checked["motion"] >= 3 and checked["first_colour"] >= 3


def test_video_crossing_and_layout_rules() -> None:
    cfg = ms.SynthConfig(seed=4, mix=(("video", 1.0),))
    half = cfg.image_size / 2
    for i in range(60):
        record, _ = ms.make_record(cfg, "heldout" if i % 2 else "instruct", i)
        meta = record["meta"]
        crossers = 0
        for k, o in enumerate(meta["objects"]):
            boxes = [f[k] for f in meta["frames"] if f[k] is not None]
            first, last = (b[0] + b[2] - 2 * half for b in (boxes[0], boxes[-1]))
            crossers += first * last < 0
            assert o["crosses"] == (first * last < 0) == (o["motion"] in ("left", "right"))
            if not o["crosses"]:  # still and vertical shapes keep off the centre line
                assert all(b[2] <= half for b in boxes) or all(b[0] >= half for b in boxes)
            if o["motion"] != "still":
                axis = 0 if o["motion"] in ("left", "right") else 1
                assert abs(boxes[-1][axis] - boxes[0][axis]) >= half
        for frame in meta["frames"]:  # shapes never touch
            boxes = [b for b in frame if b is not None]
            for a in range(len(boxes)):
                for b in range(a + 1, len(boxes)):
                    p, q = boxes[a], boxes[b]
                    assert p[2] + 2 <= q[0] or q[2] + 2 <= p[0] or p[3] + 2 <= q[1] or q[3] + 2 <= p[1]
        if "crossing" in meta["qtypes"]:
            assert meta["answers"][meta["qtypes"].index("crossing")] == synth_av.CROSS_WORDS[crossers]


def test_video_frames_fps_and_size(tmp_path: Path) -> None:
    out = ms.generate(
        tmp_path,
        n_pretrain=2,
        n_instruct=3,
        n_heldout=0,
        progress=False,
        seed=6,
        mix={"video": 1.0},
        video_frames=12,
        video_fps=12,
        image_size=32,
        noise=0,
    )
    for r in load_records(out["files"]["instruct"]):
        frames, info = read_video((tmp_path / r["video"]).read_bytes(), num_frames=12, backend="pyav")
        assert frames.shape == (12, 32, 32, 3) and info["frames_total"] == 12 and info["fps"] == 12.0
        assert len(r["meta"]["frames"]) == 12 and all(o["appear"] <= 6 for o in r["meta"]["objects"])


# ----------------------------------------------------------------------------- audio
def test_audio_decodes_pitch_and_beeps(dataset: dict[str, Any]) -> None:
    root = dataset["root"]
    cfg = ms.SynthConfig(seed=0, mix=(("audio", 1.0),))
    items = [(r, (root / r["audio"]).read_bytes()) for r in _of(dataset, "audio")]
    items += [
        (rec, media[rec["audio"]])
        for rec, media in (ms.make_record(cfg, "instruct", i) for i in range(20))
        if rec["meta"]["format"] == "mp3"
    ]  # make sure mp3 is decoded a few times too
    assert Counter(r["meta"]["format"] for r, _ in items)["mp3"] >= 2
    for r, data in items:
        meta = r["meta"]
        wave, info = read_audio(data, sampling_rate=16000)
        assert abs(len(wave) - 32000) <= 160 and info["channels"] == 1
        spectrum = np.abs(np.fft.rfft(wave))
        peak = np.fft.rfftfreq(len(wave), 1 / 16000)[spectrum.argmax()]
        assert ("high" if peak > 800 else "low") == meta["pitch"] and abs(peak - meta["frequency"]) < 5
        onsets = _beeps(wave, 16000)
        assert len(onsets) == len(meta["onsets"]), (r["id"], meta["format"], onsets / 16000, meta["onsets"])
        assert np.abs(onsets / 16000 - np.array(meta["onsets"])).max() < 0.02
        assert min(np.diff(np.array(meta["onsets"])) - np.array(meta["durations"][:-1]), default=1) >= 0.15
        want = {"pitch": meta["pitch"], "beeps": synth_av.BEEP_WORDS[len(onsets) - 1]}
        for qtype, answer in zip(meta["qtypes"], meta["answers"]):
            assert answer == want.get(qtype, answer)


# ----------------------------------------------------------------------------- balance
@pytest.mark.parametrize("modality,qtypes", [("video", VIDEO_QTYPES), ("audio", AUDIO_QTYPES)])
def test_answer_balance(tmp_path: Path, modality: str, qtypes: tuple[str, ...]) -> None:
    # 400 records: with motion drawn 3x as often, each other video type is asked in about 5 of 12 clips
    out = ms.generate(tmp_path, n_pretrain=0, n_instruct=0, n_heldout=400, progress=False, seed=11, mix={modality: 1.0})
    info = json.loads(Path(out["info"]).read_text())
    for qtype in qtypes:
        k = len(info["vocab"][qtype])
        counts = info["answer_counts"]["heldout"][qtype]
        baseline = info["majority_baseline"][qtype]
        assert set(counts) == set(info["vocab"][qtype]) and baseline["n"] >= 80, (qtype, counts)
        assert baseline["fraction"] <= 1 / k + 0.12, (qtype, baseline, counts)


def test_motion_questions_drawn_by_weight(tmp_path: Path) -> None:
    """``VIDEO_QTYPE_WEIGHTS``: motion (weight 3) is asked in about 3 of 4 QA clips, each other type in
    about 5 of 12 (1 of 2 each with uniform draws)."""
    assert synth_av.VIDEO_QTYPE_WEIGHTS == {"motion": 3.0, "first_colour": 1.0, "last_colour": 1.0, "crossing": 1.0}
    out = ms.generate(tmp_path, n_pretrain=0, n_instruct=400, n_heldout=0, progress=False, seed=5, mix={"video": 1.0})
    turns = out["counts"]["instruct"]["turns_by_qtype"]
    assert 0.68 * 400 <= turns["motion"] <= 0.82 * 400, turns
    for qtype in VIDEO_QTYPES[1:]:
        assert 0.33 * 400 <= turns[qtype] <= 0.50 * 400, (qtype, turns)


def test_pick_qtypes_weights() -> None:
    rng = np.random.default_rng(0)
    drawn = Counter(
        t for _ in range(3000) for t in pick_qtypes(rng, ["a", "b", "c"], max_turns=1, weights={"a": 2, "b": 1, "c": 0})
    )
    assert set(drawn) == {"a", "b"} and 1.8 <= drawn["a"] / drawn["b"] <= 2.2, drawn  # weight 0: never drawn
    # without weights the draws are the uniform ones of before (image, audio and caption records unchanged)
    a, b = np.random.default_rng(3), np.random.default_rng(3)
    k = min(int(b.integers(1, 4)), 4)
    assert pick_qtypes(a, ["w", "x", "y", "z"]) == [["w", "x", "y", "z"][i] for i in b.choice(4, size=k, replace=False)]


# ----------------------------------------------------------------------------- validation, CLI, converter
def test_validation_and_cli(tmp_path: Path) -> None:
    small = dict(n_pretrain=1, n_instruct=1, n_heldout=1, progress=False)
    for kwargs in (
        {"video_frames": 3},
        {"video_fps": 0},
        {"audio_seconds": 1.0},
        {"mix": {"video": 1.0}, "image_size": 16},
        {"mix": {"smell": 1.0}},
    ):
        with pytest.raises(ValueError):
            ms.generate(tmp_path / "bad", **{**small, **kwargs})
    ms.generate(tmp_path / "small_img_ok", image_size=16, **small)  # video-only limits do not apply
    assert (
        ms.main(
            [
                str(tmp_path / "cli"),
                "--n-pretrain",
                "2",
                "--n-instruct",
                "4",
                "--n-heldout",
                "0",
                "--mix",
                "video=0.5,audio=0.5",
                "--video-frames",
                "6",
                "--audio-seconds",
                "1.8",
                "--no-progress",
            ]
        )
        == 0
    )
    recs = load_records(tmp_path / "cli" / "instruct.json")
    assert {r["meta"]["modality"] for r in recs} == {"video", "audio"}
    assert all(len(r["meta"]["frames"]) == 6 for r in recs if "video" in r)
    with pytest.raises(SystemExit) as err:
        ms.main([str(tmp_path / "bad"), "--video-frames", "2", "--mix", "video=1"])
    assert err.value.code == 2


def test_default_mix_has_no_av(tmp_path: Path) -> None:
    out = ms.generate(tmp_path, n_pretrain=3, n_instruct=10, n_heldout=3, progress=False)
    info = json.loads(Path(out["info"]).read_text())
    assert not (tmp_path / "videos").exists() and not (tmp_path / "audio").exists()
    assert "motion" not in info["vocab"] and "video_frames" not in info["params"] and "video" not in info["render"]


def test_converter_accepts_mixed_dataset(dataset: dict[str, Any], tmp_path: Path) -> None:
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
    fields = Counter()
    for shard in sorted((tmp_path / "shards").glob("*.tar")):
        with tarfile.open(shard) as tar:
            fields.update(m.name.rsplit(".", 1)[1] for m in tar.getmembers())
    assert {"mp4", "wav", "mp3", "flac", "png", "json"} <= set(fields), fields
    by_mod = Counter(r["meta"]["modality"] for r in dataset["all"])
    assert fields["mp4"] == by_mod["video"] and fields["wav"] + fields["mp3"] + fields["flac"] == by_mod["audio"]
