"""The real lmms-eval CLI scores a llava_wb run (avgpool reducer, video, audio) through the
``llava_wb`` model adapter on a local task written from held-out shards: every prediction and
every per-type accuracy equal llava_wb's own evaluator. Needs the ``lmms`` extra installed (with
llava_wb installed in the same environment, so that lmms-eval sees its entry point)."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

pytest.importorskip("lmms_eval", reason="lmms-eval not installed (the optional 'lmms' extra; CI does not install it)")

from _lmms_fixtures import av_run  # noqa: E402


def test_lmms_eval_cli_matches_the_evaluator(tmp_path: Path) -> None:
    from llava_wb.eval.evaluate import evaluate, image_config_for
    from llava_wb.eval.lmms_task import write_task
    from llava_wb.model.bundle import load_bundle

    assert "llava_wb" in {ep.name for ep in entry_points(group="lmms_eval.models")}, (
        "llava_wb's lmms_eval.models entry point is missing: pip install -e . in this environment"
    )
    paths = av_run(tmp_path, n_heldout=16)
    write_task([str(paths["heldout"])], tmp_path / "task")
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
    }
    cmd = [
        sys.executable,
        "-m",
        "lmms_eval",
        "--model",
        "llava_wb",
        "--model_args",
        f"pretrained={paths['run']}",
        "--tasks",
        "llava_wb_heldout",
        "--include_path",
        str(tmp_path / "task"),
        "--batch_size",
        "4",
        "--output_path",
        str(tmp_path / "out"),
        "--log_samples",
    ]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    results = json.loads(Path(glob.glob(str(tmp_path / "out" / "*" / "*_results.json"))[0]).read_text())
    scores = results["results"]["llava_wb_heldout"]
    samples = [
        json.loads(line)
        for line in Path(glob.glob(str(tmp_path / "out" / "*" / "*_samples_llava_wb_heldout.jsonl"))[0])
        .read_text()
        .splitlines()
    ]
    docs = [json.loads(line) for line in (tmp_path / "task" / "questions.jsonl").read_text().splitlines()]

    model, tok = load_bundle(paths["run"] / "final")
    ours = evaluate(model, tok, [str(paths["heldout"])], image=image_config_for(model), progress=False)
    want = {(p["id"], p["turn"]): p["prediction"] for p in ours.predictions}
    got = {(docs[s["doc_id"]]["id"], docs[s["doc_id"]]["turn"]): s["filtered_resps"] for s in samples}
    assert got == want
    assert len(set(want.values())) > 1, "the untrained model's answers vary: the comparison is not vacuous"
    assert {q for q in ours.per_type} >= {"pitch", "motion"}  # audio and video questions are in
    for qtype, row in ours.per_type.items():
        assert scores[f"acc_{qtype},none"] == pytest.approx(row["accuracy"], abs=1e-12), qtype
    assert scores["exact_match,none"] == pytest.approx(ours.overall["accuracy"], abs=1e-12)
