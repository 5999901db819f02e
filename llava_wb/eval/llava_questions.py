"""LLaVA's question files in, LLaVA's answer files out, so LLaVA's own scoring scripts apply unchanged.

A question file is JSONL, one question per line, as LLaVA's ``model_vqa_loader`` reads it::

    {"question_id": 7, "image": "COCO_val2014_000000000042.jpg", "text": "What is ...?", "category": "..."}

``image`` is relative to the image folder (it may name a subfolder, never leave the folder: an
absolute path or a ``..`` that climbs out is refused, naming the line); a line without ``image`` is
a text-only question. As in LLaVA, the prompt is ``"<image>\\n" + text`` (unless ``text`` already
holds the placeholder) put through the model's conversation template; the image goes through
llava_wb's own preprocessing. Answers are greedy. Each answer line is LLaVA's::

    {"question_id": 7, "prompt": "What is ...?", "text": "<answer>", "answer_id": "<unique>", "model_id": "...", "metadata": {}}

with ``question_id`` kept as it was (int or string), ``prompt`` the question's ``text`` and lines in
question order.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from ..data.config import ImageConfig
from ..data.errors import SampleError

PLACEHOLDER = "<image>"


class QuestionFileError(ValueError):
    """A question file line that cannot be answered: names the file, the line and what is wrong."""


def _image_path(folder: Path, name: Any, where: str) -> Path:
    if not isinstance(name, str) or not name:
        raise QuestionFileError(f"{where}: 'image' must be a non-empty string, got {name!r}")
    if PurePosixPath(name).is_absolute() or PureWindowsPath(name).is_absolute() or PureWindowsPath(name).drive:
        raise QuestionFileError(f"{where}: image path {name!r} is absolute; it must be relative to the image folder")
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        raise QuestionFileError(f"{where}: image path {name!r} contains '..'; it must stay inside the image folder")
    path = (folder / name).resolve()
    if not path.is_relative_to(folder.resolve()):
        raise QuestionFileError(f"{where}: image path {name!r} leads outside the image folder (a link?)")
    if not path.is_file():
        raise QuestionFileError(f"{where}: image {name!r} not found in {folder}")
    return path


def read_questions(question_file: str | Path, image_folder: str | Path | None) -> list[dict[str, Any]]:
    """Every question of ``question_file`` (checked), with ``image_path`` resolved inside ``image_folder``."""
    questions = []
    folder = Path(image_folder) if image_folder is not None else None
    with open(question_file, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{question_file}, line {number}"
            try:
                q = json.loads(line)
            except ValueError as e:
                raise QuestionFileError(f"{where}: not JSON ({e})") from None
            if not isinstance(q, dict):
                raise QuestionFileError(f"{where}: a line must be a JSON object, got {type(q).__name__}")
            missing = [k for k in ("question_id", "text") if k not in q]
            if missing:
                raise QuestionFileError(f"{where}: missing {', '.join(missing)}")
            if not isinstance(q["text"], str):
                raise QuestionFileError(f"{where}: 'text' must be a string, got {type(q['text']).__name__}")
            image = q.get("image")
            if image is not None:
                if folder is None:
                    raise QuestionFileError(f"{where}: the question has an image but no image folder was given")
                image = _image_path(folder, image, where)
            questions.append({**q, "image_path": image, "line": number})
    return questions


def _prompts(
    questions: list[dict[str, Any]],
    model: Any,
    tokenizer: Any,
    template: str,
    image: ImageConfig,
    max_length: int,
    question_file: str | Path,
) -> Iterator[dict[str, Any]]:
    from ..data.conversation import get_template
    from ..data.decode import image_transform

    tmpl = get_template(template, tokenizer)
    transform = image_transform(image)
    for q in questions:
        text = q["text"]
        media: dict[str, list] = {}
        where = f"{question_file}, line {q['line']}"
        if q["image_path"] is not None:
            if PLACEHOLDER not in text:
                text = f"{PLACEHOLDER}\n{text}"
            try:
                media["image"] = [transform(q["image_path"].read_bytes())]
            except SampleError as e:
                raise QuestionFileError(f"{where}: image {q['image']!r}: {e.detail}") from None
        try:
            tok = tmpl.tokenize(
                [{"from": "human", "value": text}],
                max_length=max_length,
                media_tokens=model.media_tokens,
                add_generation_prompt=True,
                expected_media={k: len(v) for k, v in media.items()},
            )
        except SampleError as e:
            raise QuestionFileError(f"{where}: {e.reason}: {e.detail}") from None
        yield {"question": q, "ids": tok.input_ids, "instruction": tok.instruction_mask, "media": media}


def answer_questions(
    model: Any,
    tokenizer: Any,
    question_file: str | Path,
    image_folder: str | Path | None,
    *,
    image: ImageConfig,
    template: str = "vicuna_v1",
    model_id: str = "llava_wb",
    max_new_tokens: int = 128,
    max_length: int = 2048,
    batch_size: int = 8,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """LLaVA answer records for every question of ``question_file`` (greedy, in question order)."""
    import torch
    from tqdm.auto import tqdm

    from .evaluate import answer_batch

    questions = read_questions(question_file, image_folder)  # every line checked before the model runs
    model.eval()
    answers: list[dict[str, Any]] = []
    items = _prompts(questions, model, tokenizer, template, image, max_length, question_file)
    with torch.no_grad(), tqdm(total=len(questions), desc="answering", unit="q", disable=not progress) as bar:
        while chunk := [it for _, it in zip(range(batch_size), items)]:
            for c, text in zip(chunk, answer_batch(model, tokenizer, chunk, max_new_tokens=max_new_tokens)):
                q = c["question"]
                answers.append(
                    {
                        "question_id": q["question_id"],
                        "prompt": q["text"],
                        "text": text.strip(),
                        "answer_id": uuid.uuid4().hex,
                        "model_id": model_id,
                        "metadata": {},
                    }
                )
            bar.update(len(chunk))
    return answers


def write_answers(path: str | Path, answers: list[dict[str, Any]]) -> Path:
    """One JSON object per line, as LLaVA's ``model_vqa_loader`` writes its answers file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for a in answers:
            f.write(json.dumps(a, ensure_ascii=False) + "\n")
    return path
