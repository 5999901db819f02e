"""Evaluation: exact-match scoring with the majority baseline, and batched generation over shards."""

from __future__ import annotations

import json

import pytest
from tiny import tiny_model

from data_tools.convert_to_wds import convert
from data_tools.make_synthetic import generate
from llava_wb.data.config import ImageConfig
from llava_wb.eval.evaluate import evaluate
from llava_wb.eval.metrics import EvalResult, normalize
from llava_wb.tokenizer import build_demo_tokenizer, demo_corpus


def test_normalize_and_per_type_scores_with_majority_baseline():
    assert normalize("  Red. ") == "red" and normalize("two!") == "two"
    r = EvalResult()
    for qtype, answer, pred in [
        ("colour", "red", "red"),
        ("colour", "red", "blue"),
        ("colour", "blue", "Blue."),
        ("shape", "circle", "square"),
    ]:
        r.add(id="x", qtype=qtype, turn=0, question="q", answer=answer, prediction=pred)
    t = r.per_type
    assert t["colour"] == {
        "n": 3,
        "correct": 2,
        "accuracy": 2 / 3,
        "majority_answer": "red",
        "majority_accuracy": 2 / 3,
    }
    assert t["shape"]["accuracy"] == 0.0 and r.overall["correct"] == 2
    assert "| colour | 3 | 66.7% | 66.7% (red) |" in r.to_markdown()


@pytest.fixture(scope="module")
def heldout(tmp_path_factory):
    base = tmp_path_factory.mktemp("ev")
    data = generate(base / "data", n_pretrain=0, n_instruct=0, n_heldout=24, progress=False)
    convert([data["files"]["heldout"]], [data["media_root"]], base / "shards", shard_size=10, progress=False)
    records = json.loads(open(data["files"]["heldout"]).read())
    tok = build_demo_tokenizer(demo_corpus(records=records))
    model = tiny_model(tok)
    return {"shards": str(base / "shards"), "records": records, "tok": tok, "model": model}


def test_evaluate_answers_every_question_and_batching_does_not_change_answers(heldout):
    image = ImageConfig(size=32)
    kw = dict(image=image, max_new_tokens=3, progress=False)
    big = evaluate(heldout["model"], heldout["tok"], [heldout["shards"]], batch_size=16, **kw)
    one = evaluate(heldout["model"], heldout["tok"], [heldout["shards"]], batch_size=1, **kw)
    n_questions = sum(len(r["meta"]["qtypes"]) for r in heldout["records"])
    assert big.overall["n"] == n_questions
    by_key = lambda r: {(p["id"], p["turn"]): p["prediction"] for p in r.predictions}  # noqa: E731
    assert by_key(big) == by_key(one), "left-padded batched generation must equal one-by-one"
    want_types = {t for r in heldout["records"] for t in r["meta"]["qtypes"]}
    assert set(big.per_type) == want_types
    for p in big.predictions:
        assert p["answer"] in next(r for r in heldout["records"] if r["id"] == p["id"])["meta"]["answers"]
