"""Tests for data_tools.make_synthetic: LLaVA structure, determinism, answers vs meta, balance, CLI."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from data_tools import make_synthetic as ms

REPO = Path(__file__).resolve().parents[1]
SMALL = dict(n_pretrain=40, n_instruct=200, n_heldout=100, progress=False)
IMAGE_QTYPES = ("colour", "shape", "position", "relation", "count")


def _load(path: str | Path) -> list[dict[str, Any]]:
    text = Path(path).read_text(encoding="utf-8")
    if str(path).endswith(".jsonl"):
        return [json.loads(line) for line in text.splitlines()]
    return json.loads(text)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("synth")
    result = ms.generate(root, seed=3, text_only_frac=0.1, **SMALL)
    records = {split: _load(path) for split, path in result["files"].items()}
    info = json.loads((root / "dataset_info.json").read_text())
    return {"root": root, "result": result, "records": records, "info": info}


def test_counts_and_info(dataset: dict[str, Any]) -> None:
    records, info, result = dataset["records"], dataset["info"], dataset["result"]
    for split in ms.SPLITS:
        n = SMALL[f"n_{split}"]
        assert len(records[split]) == n
        assert result["counts"][split]["records"] == n == info["counts"][split]["records"]
        by_mod = Counter(r["meta"]["modality"] for r in records[split])
        assert dict(by_mod) == info["counts"][split]["by_modality"]
    assert Path(result["media_root"]) == dataset["root"]
    assert info["params"]["seed"] == 3 and info["format"] == ms.FORMAT
    assert set(info["vocab"]) >= set(IMAGE_QTYPES) | {"text"}


def test_llava_structure_and_media(dataset: dict[str, Any]) -> None:
    root = dataset["root"]
    for split, recs in dataset["records"].items():
        assert len({r["id"] for r in recs}) == len(recs)
        for r in recs:
            conv = r["conversations"]
            assert conv and len(conv) % 2 == 0
            assert [t["from"] for t in conv] == ["human", "gpt"] * (len(conv) // 2)
            n_placeholders = sum(t["value"].count("<image>") for t in conv)
            assert r["meta"]["split"] == split
            if "image" in r:
                assert n_placeholders == 1 and "<image>" in conv[0]["value"]
                assert r["image"] == f"images/{split}/{r['id'].split('-')[1]}.png"
                with Image.open(root / r["image"]) as im:
                    assert im.format == "PNG" and im.mode == "RGB" and im.size == (64, 64)
            else:
                assert n_placeholders == 0 and r["meta"]["modality"] == "text"
            assert len(r["meta"]["qtypes"]) == len(r["meta"]["answers"]) == len(conv) // 2


def test_answers_match_meta_and_vocab(dataset: dict[str, Any]) -> None:
    vocab = dataset["info"]["vocab"]
    for split in ("instruct", "heldout"):
        for r in dataset["records"][split]:
            meta, objects = r["meta"], r["meta"]["objects"]
            gpt = [t["value"] for t in r["conversations"][1::2]]
            human = [t["value"] for t in r["conversations"][0::2]]
            assert gpt == meta["answers"]
            for qtype, question, answer in zip(meta["qtypes"], human, gpt):
                assert answer in vocab[qtype] and answer == answer.lower() and " " not in answer
                if qtype == "count":
                    assert answer == ms.COUNT_WORDS[len(objects)]
                elif qtype == "colour":  # "the <shape>" names exactly one object
                    (obj,) = [o for o in objects if f"the {o['shape']}" in question]
                    assert answer == obj["colour"]
                elif qtype == "shape":
                    (obj,) = [o for o in objects if o["colour"] in question]
                    assert answer == obj["shape"]
                elif qtype == "position":
                    (obj,) = [o for o in objects if f"{o['colour']} {o['shape']}" in question]
                    assert answer == ("left" if obj["cell"][1] == 0 else "right")
                elif qtype == "relation":
                    named = sorted(
                        (question.index(f"{o['colour']} {o['shape']}"), o)
                        for o in objects
                        if f"{o['colour']} {o['shape']}" in question
                    )
                    (_, a), (_, b) = named  # first named object is the subject
                    assert a["cell"][1] != b["cell"][1]
                    assert answer == ("left" if a["cell"][1] < b["cell"][1] else "right")


def test_pixels_match_meta(dataset: dict[str, Any]) -> None:
    root = dataset["root"]
    for r in dataset["records"]["instruct"][:60]:
        if "image" not in r:
            continue
        pixels = np.asarray(Image.open(root / r["image"]), dtype=np.int16)
        objects = r["meta"]["objects"]
        assert len({o["shape"] for o in objects}) == len({o["colour"] for o in objects}) == len(objects)
        assert len({tuple(o["cell"]) for o in objects}) == len(objects)
        for o in objects:
            x0, y0, x1, y1 = o["bbox"]
            assert x1 - x0 >= 0.65 * 32 and 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
            centre = pixels[int(o["cy"]), int(o["cx"])]
            assert np.abs(centre - np.array(ms.COLOURS[o["colour"]])).max() <= 10
        occupied = {tuple(o["cell"]) for o in objects}
        for row, col in {(0, 0), (0, 1), (1, 0), (1, 1)} - occupied:  # empty cells are background
            patch = pixels[row * 32 + 4 : row * 32 + 28, col * 32 + 4 : col * 32 + 28]
            assert np.abs(patch - np.array(ms.BACKGROUND)).max() <= 10


def test_answer_balance_and_text_fraction(dataset: dict[str, Any]) -> None:
    records = dataset["records"]["instruct"] + dataset["records"]["heldout"]
    per_type: dict[str, Counter[str]] = {}
    for r in records:
        for qtype, answer in zip(r["meta"]["qtypes"], r["meta"]["answers"]):
            per_type.setdefault(qtype, Counter())[answer] += 1
    for qtype in IMAGE_QTYPES:
        counter = per_type[qtype]
        assert sum(counter.values()) >= 30, qtype
        assert max(counter.values()) / sum(counter.values()) < 0.7, (qtype, counter)
        assert len(counter) == len(dataset["info"]["vocab"][qtype]), (qtype, counter)
    text_frac = sum("image" not in r for r in dataset["records"]["instruct"]) / SMALL["n_instruct"]
    assert abs(text_frac - 0.1) <= 0.02
    assert all("image" in r for r in dataset["records"]["pretrain"])
    heldout = dataset["info"]["majority_baseline"]
    for qtype in IMAGE_QTYPES:
        counts = Counter(
            a
            for r in dataset["records"]["heldout"]
            for t, a in zip(r["meta"]["qtypes"], r["meta"]["answers"])
            if t == qtype
        )
        assert heldout[qtype]["fraction"] == pytest.approx(max(counts.values()) / sum(counts.values()), abs=1e-4)


def test_captions_describe_objects(dataset: dict[str, Any]) -> None:
    for r in dataset["records"]["pretrain"]:
        prompt, caption = r["conversations"][0]["value"], r["conversations"][1]["value"]
        assert prompt.startswith("<image>\n") or prompt.endswith("\n<image>")
        assert r["meta"]["qtypes"] == ["caption"]
        for o in r["meta"]["objects"]:
            assert f"a {o['colour']} {o['shape']} in the" in caption


def test_heldout_disjoint_from_training(dataset: dict[str, Any]) -> None:
    root = dataset["root"]

    def hashes(split: str) -> set[str]:
        return {
            hashlib.sha256((root / r["image"]).read_bytes()).hexdigest()
            for r in dataset["records"][split]
            if "image" in r
        }

    train = hashes("pretrain") | hashes("instruct")
    assert hashes("heldout").isdisjoint(train)


def test_determinism_and_prefix_stability(tmp_path: Path) -> None:
    kw = dict(n_pretrain=10, n_instruct=30, n_heldout=10, progress=False)
    ms.generate(tmp_path / "a", seed=1, **kw)
    ms.generate(tmp_path / "b", seed=1, **kw)
    ms.generate(tmp_path / "c", seed=2, **kw)
    ms.generate(tmp_path / "d", seed=1, **{**kw, "n_pretrain": 3, "n_instruct": 12})
    a, b, c = _tree(tmp_path / "a"), _tree(tmp_path / "b"), _tree(tmp_path / "c")
    assert a == b
    assert a["instruct.json"] != c["instruct.json"]
    assert sum(a[k] != c.get(k) for k in a if k.startswith("images/")) >= 0.9 * sum(k.startswith("images/") for k in a)
    short = _load(tmp_path / "d" / "instruct.json")
    assert short == _load(tmp_path / "a" / "instruct.json")[:12]
    d = _tree(tmp_path / "d")
    assert all(d[k] == a[k] for k in d if k.startswith("images/"))
    # a record is a pure function of (config, split, index)
    record, media = ms.make_record(ms.SynthConfig(seed=1, mix=(("image", 0.95), ("text", 0.05))), "heldout", 7)
    assert record == _load(tmp_path / "a" / "heldout.json")[7]
    assert all(a[rel] == data for rel, data in media.items())


def test_jsonl_and_jpg(tmp_path: Path) -> None:
    kw = dict(n_pretrain=5, n_instruct=20, n_heldout=5, progress=False, seed=4)
    out_json = ms.generate(tmp_path / "json", **kw)
    out_jsonl = ms.generate(tmp_path / "jsonl", jsonl=True, image_format="jpg", **kw)
    for split in ms.SPLITS:
        assert out_jsonl["files"][split].endswith(f"{split}.jsonl")
        lines = Path(out_jsonl["files"][split]).read_text().splitlines()
        recs = [json.loads(line) for line in lines]
        plain = _load(out_json["files"][split])
        assert len(recs) == len(plain)
        for r, p in zip(recs, plain):
            assert r["conversations"] == p["conversations"] and r["meta"] == p["meta"]
            if "image" in r:
                assert r["image"] == p["image"][:-3] + "jpg"
                with Image.open(tmp_path / "jsonl" / r["image"]) as im:
                    assert im.format == "JPEG" and im.size == (64, 64)


def test_mix_registry_and_validation(tmp_path: Path) -> None:
    assert {"image", "text"} <= set(ms.TASKS)
    out = ms.generate(tmp_path / "img", n_pretrain=0, n_instruct=20, n_heldout=0, progress=False, mix={"image": 1.0})
    assert all("image" in r for r in _load(out["files"]["instruct"]))
    out = ms.generate(tmp_path / "txt", n_pretrain=0, n_instruct=10, n_heldout=0, progress=False, mix={"text": 1.0})
    assert all("image" not in r for r in _load(out["files"]["instruct"]))
    bad: list[dict[str, Any]] = [
        {"mix": {"smell": 1.0}},
        {"image_format": "gif"},
        {"text_only_frac": 1.5},
        {"seed": -1},
        {"image_size": 8},
        {"grid": 5},
        {"n_instruct": -1},
        {"mix": {"text": 1.0}},
    ]  # text cannot caption the pretrain split
    for kwargs in bad:
        with pytest.raises(ValueError):
            ms.generate(tmp_path / "bad", **{**dict(n_pretrain=2, n_instruct=2, n_heldout=2, progress=False), **kwargs})


def test_grid3_positions(tmp_path: Path) -> None:
    out = ms.generate(tmp_path, n_pretrain=20, n_instruct=60, n_heldout=0, progress=False, grid=3, image_size=96)
    for r in _load(out["files"]["instruct"]):
        for qtype, answer in zip(r["meta"]["qtypes"], r["meta"]["answers"]):
            if qtype in ("position", "relation"):
                assert answer in ("left", "right")
        for o in r["meta"]["objects"]:
            assert 0 <= o["cell"][0] < 3 and 0 <= o["cell"][1] < 3


def test_cli(tmp_path: Path) -> None:
    help_run = subprocess.run(
        [sys.executable, "-m", "data_tools.make_synthetic", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--n-instruct" in help_run.stdout and "--seed" in help_run.stdout
    out = tmp_path / "cli"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "data_tools.make_synthetic",
            str(out),
            "--n-pretrain",
            "3",
            "--n-instruct",
            "7",
            "--n-heldout",
            "2",
            "--seed",
            "5",
            "--jsonl",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert len((out / "instruct.jsonl").read_text().splitlines()) == 7
    assert json.loads((out / "dataset_info.json").read_text())["params"]["seed"] == 5
    assert (
        ms.main([str(tmp_path / "main"), "--n-pretrain", "1", "--n-instruct", "1", "--n-heldout", "1", "--no-progress"])
        == 0
    )
    with pytest.raises(SystemExit) as err:
        ms.main([str(tmp_path / "bad"), "--image-format", "gif"])
    assert err.value.code == 2
    with pytest.raises(SystemExit):
        ms.main([str(tmp_path / "bad"), "--mix", "image"])
