"""The lmms-eval adapter's request -> prompt mapping (llava_wb.eval.lmms_prompt), without lmms-eval:
documents of the local task written from held-out shards become exactly the evaluator's prompts
(ids, instruction mask, decoded media) for an avgpool model with video and audio."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _lmms_fixtures import av_run
from PIL import Image

from llava_wb.data.conversation import get_template
from llava_wb.eval.lmms_prompt import (
    build_prompt_item,
    cut_at_stops,
    load_run,
    request_conversation,
    run_settings,
    visual_bytes,
)


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    from llava_wb.eval.lmms_task import write_task

    base = tmp_path_factory.mktemp("lmms_prompt")
    paths = av_run(base)
    counts = write_task([str(paths["heldout"])], base / "task")
    return {**paths, "task": base / "task", "counts": counts}


def _doc_to_visual(doc: dict) -> list:
    """The committed task's own hook (llava_wb/eval/lmms_tasks/utils.py), loaded from its file."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "lmms_task_utils", Path(__file__).resolve().parents[1] / "llava_wb/eval/lmms_tasks/utils.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.doc_to_visual(doc)


def test_task_documents_map_to_the_evaluators_prompts(setup) -> None:
    from llava_wb.eval.evaluate import _items

    model, tok, template_name, settings = load_run(setup["run"])
    template = get_template(template_name, tok)
    want = {
        (it["id"], it["turn"]): it
        for it in _items([str(setup["heldout"])], settings, template, model.media_tokens, 512, None)
    }
    docs = [json.loads(line) for line in (setup["task"] / "questions.jsonl").read_text().splitlines()]
    assert len(docs) == len(want) and sum(setup["counts"].values()) == len(docs)
    kinds = set()
    for doc in docs:
        item = build_prompt_item(
            doc["question"],
            _doc_to_visual(doc),
            doc,
            template=template,
            media_tokens=model.media_tokens,
            settings=settings,
            max_length=512,
        )
        ref = want[(doc["id"], doc["turn"])]
        assert doc["qtype"] == ref["qtype"] and doc["answer"] == ref["answer"]
        assert item["ids"] == ref["ids"] and item["instruction"] == ref["instruction"]
        assert sorted(item["media"]) == sorted(ref["media"])
        for kind, values in ref["media"].items():
            kinds.add(kind)
            assert all(torch.equal(a, b) for a, b in zip(item["media"][kind], values, strict=True)), doc["question_id"]
    assert kinds == {"image", "video", "audio"}


def test_a_plain_request_becomes_one_human_turn_with_placeholders_in_visual_order() -> None:
    assert request_conversation("What is it?", ["image", "audio"]) == [
        {"from": "human", "value": "<image>\n<audio>\nWhat is it?"}
    ]
    assert request_conversation("Compare <image> and <image>.", ["image", "image"]) == [
        {"from": "human", "value": "Compare <image> and <image>."}
    ]
    turns = [
        {"from": "human", "value": "<video>\nq1"},
        {"from": "gpt", "value": "a1"},
        {"from": "human", "value": "q2"},
    ]
    assert request_conversation("q2", ["video"], {"llava_wb_conversation": turns}) == turns


def test_visuals_reach_the_decoders_as_bytes(tmp_path: Path) -> None:
    from llava_wb.data.audio import read_audio

    img = Image.new("RGB", (20, 10), (200, 30, 40))
    img.save(tmp_path / "x.jpg", quality=70)
    data = (tmp_path / "x.jpg").read_bytes()
    assert visual_bytes(Image.open(tmp_path / "x.jpg")) == ("image", data)  # a file-backed image: its own bytes
    kind, png = visual_bytes(img)  # in memory: lossless PNG
    assert kind == "image" and np.array_equal(np.asarray(Image.open(io.BytesIO(png))), np.asarray(img))
    (tmp_path / "clip.MP4").write_bytes(b"not decoded here")
    assert visual_bytes(str(tmp_path / "clip.MP4")) == ("video", b"not decoded here")
    wave = np.sin(np.linspace(0, 200, 8000)).astype(np.float32) * 0.5
    kind, wav = visual_bytes({"array": wave, "sampling_rate": 16000})
    assert kind == "audio" and np.allclose(read_audio(wav, sampling_rate=16000)[0], wave, atol=1e-4)
    with pytest.raises(ValueError, match="unknown media extension 'txt'"):
        visual_bytes(str(tmp_path / "notes.txt"))
    with pytest.raises(ValueError, match="not supported"):
        visual_bytes(b"raw")


def test_run_settings_and_stops(setup, tmp_path: Path) -> None:
    s = run_settings(setup["run"])
    assert s.bundle == setup["run"] / "final" and (s.template, s.aspect) == ("vicuna_v1", "pad")
    assert run_settings(setup["run"] / "final").bundle == setup["run"] / "final"
    with pytest.raises(FileNotFoundError, match="neither a saved model"):
        run_settings(tmp_path)
    assert cut_at_stops("red.\n\nmore", ["\n\n"]) == "red." and cut_at_stops("red", ["</s>"]) == "red"
