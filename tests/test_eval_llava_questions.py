"""LLaVA question files -> ``python -m llava_wb.eval`` -> LLaVA answer files, on real photos.

The photos are matplotlib's ``grace_hopper.jpg`` and scikit-image's sample images, written to
``tmp_path``; the model is the tiny random one (the answers are words, not good ones): what is
tested is the file formats, the prompt and image each answer comes from, and the path checks.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from tiny import tiny_model

from llava_wb.data.config import ImageConfig
from llava_wb.data.conversation import get_template
from llava_wb.data.decode import ImageTransform
from llava_wb.eval.__main__ import main
from llava_wb.eval.llava_questions import QuestionFileError, read_questions
from llava_wb.model import save_bundle
from llava_wb.tokenizer import build_demo_tokenizer, demo_corpus

QUESTIONS = [
    "What is in the image?",
    "Describe the image briefly.",
    "What colour is the circle?",
    "How many shapes are there?",
    "Is the square on the left or the right?",
]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    import matplotlib.cbook
    import skimage.data

    folder = tmp_path_factory.mktemp("photos")
    (folder / "coco").mkdir()
    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
        (folder / "coco" / "grace_hopper.jpg").write_bytes(f.read())
    for name, fmt in [("astronaut", "jpg"), ("coffee", "png"), ("chelsea", "jpg"), ("camera", "png")]:
        Image.fromarray(np.asarray(getattr(skimage.data, name)())).save(folder / f"{name}.{fmt}")
    return folder


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> dict[str, Any]:
    tok = build_demo_tokenizer(demo_corpus(QUESTIONS))
    model = tiny_model(tok)
    path = save_bundle(model, tok, tmp_path_factory.mktemp("model") / "tiny-llava")
    return {"tok": tok, "model": model, "path": path}


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_question_file_round_trip_with_real_photos(photos: Path, bundle: dict[str, Any], tmp_path: Path) -> None:
    images = ["coco/grace_hopper.jpg", "astronaut.jpg", "coffee.png", "chelsea.jpg", "camera.png"]
    rows = [
        {
            "question_id": i if i % 2 else f"q{i}",
            "image": img,
            "text": QUESTIONS[i % len(QUESTIONS)],
            "category": "photo",
        }
        for i, img in enumerate(images + images[:2])
    ]
    rows.append({"question_id": 99, "text": "How many shapes are there?", "category": "text"})  # no image
    qfile = write_jsonl(tmp_path / "questions.jsonl", rows)
    answers_file = tmp_path / "out" / "answers.jsonl"
    assert (
        main(
            [
                str(bundle["path"]),
                "--question-file",
                str(qfile),
                "--image-folder",
                str(photos),
                "--answers-file",
                str(answers_file),
                "--batch-size",
                "3",
                "--max-new-tokens",
                "6",
            ]
        )
        == 0
    )

    answers = [json.loads(line) for line in answers_file.read_text().splitlines()]  # as LLaVA's scripts read it
    assert [a["question_id"] for a in answers] == [r["question_id"] for r in rows]  # order and id types kept
    assert all(set(a) == {"question_id", "prompt", "text", "answer_id", "model_id", "metadata"} for a in answers)
    assert [a["prompt"] for a in answers] == [r["text"] for r in rows]
    assert {a["model_id"] for a in answers} == {"tiny-llava"} and all(a["metadata"] == {} for a in answers)
    assert len({a["answer_id"] for a in answers}) == len(answers)

    # each answer is the greedy answer to "<image>\n" + text on that photo, computed here one by one
    model, tok = bundle["model"], bundle["tok"]
    transform = ImageTransform(ImageConfig(size=32))
    template = get_template("vicuna_v1", tok)
    for row, answer in zip(rows, answers):
        value = f"<image>\n{row['text']}" if "image" in row else row["text"]
        ids = template.tokenize(
            [{"from": "human", "value": value}],
            max_length=None,
            media_tokens=model.media_tokens,
            add_generation_prompt=True,
        ).input_ids
        pixels = transform((photos / row["image"]).read_bytes())[None] if "image" in row else None
        with torch.no_grad():
            out = model.generate(
                input_ids=torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                pixel_values=pixels,
                image_counts=torch.tensor([1 if "image" in row else 0]),
                max_new_tokens=6,
                eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id,
            )
        new = out[0].tolist()
        new = new[: new.index(tok.eos_token_id)] if tok.eos_token_id in new else new
        assert answer["text"] == tok.decode(new, skip_special_tokens=True).strip(), row
    assert len({a["text"] for a in answers[:5]}) > 1, "different photos, same answer for all: images unused?"


@pytest.mark.parametrize(
    "name,why",
    [
        ("../outside.jpg", "contains '..'"),
        ("coco/../../outside.jpg", "contains '..'"),
        ("/etc/hosts", "is absolute"),
        ("C:\\\\images\\\\x.jpg", "is absolute"),
        ("missing.jpg", "not found"),
        ("link.jpg", "leads outside the image folder"),
    ],
)
def test_image_paths_must_stay_inside_the_image_folder(photos: Path, tmp_path: Path, name: str, why: str) -> None:
    (tmp_path / "outside.jpg").write_bytes((photos / "astronaut.jpg").read_bytes())
    folder = tmp_path / "images"
    (folder / "coco").mkdir(parents=True)
    os.symlink(tmp_path / "outside.jpg", folder / "link.jpg")
    qfile = write_jsonl(
        tmp_path / "q.jsonl",
        [{"question_id": 0, "text": "text only"}, {"question_id": 1, "image": name, "text": "What is it?"}],
    )
    with pytest.raises(QuestionFileError, match=rf"q\.jsonl, line 2: .*{why}"):
        read_questions(qfile, folder)


def test_bad_lines_are_refused_with_their_line_number(tmp_path: Path) -> None:
    for rows, why in [
        (["{not json"], "line 1: not JSON"),
        ([{"text": "q"}], "line 1: missing question_id"),
        ([{"question_id": 1, "text": "a"}, {"question_id": 2, "text": 3}], "line 2: 'text' must be"),
        ([{"question_id": 1, "text": "a", "image": "x.jpg"}], "no image folder was given"),
    ]:
        with pytest.raises(QuestionFileError, match=why):
            read_questions(write_jsonl(tmp_path / "q.jsonl", rows), None)


def test_cli_wants_shards_or_a_question_file(bundle: dict[str, Any]) -> None:
    with pytest.raises(SystemExit):
        main([str(bundle["path"])])
