"""Smoke test of the resampling benchmark: ``bench_resample --quick`` runs end to end and writes its report.

Only the structure of the results is checked (files, sections, keys, token counts); recall, accuracy
and time fractions are measured by the benchmark itself, never asserted here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_resample_quick_writes_every_part(tmp_path):
    out, cache = tmp_path / "results", tmp_path / "cache"
    env = {
        **os.environ,
        "PYTHONPATH": ROOT,
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_resample", "--quick", "--out", str(out), "--cache", str(cache)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    md, js = out / "resample.md", out / "resample.json"
    assert proc.stdout.strip().splitlines()[-1] == str(md)
    text = md.read_text(encoding="utf-8")
    assert text.startswith("# Instruction-aware resampling benchmark") and "QUICK MODE" in text
    for heading in (
        "## (a) Resampler time",
        "## (b) Needle-token recall",
        "## (c) Needle accuracy per budget: swapped at inference, trained with identity",
        "## (d) Needle-token recall in long clips",
    ):
        assert heading in text, heading

    raw = json.loads(js.read_text(encoding="utf-8"))
    from benchmarks.bench_resample import BUDGETS, CLIP_REDUCERS, SWAP_REDUCERS

    assert raw["name"] == "resample" and raw["quick"] is True
    assert set(raw["a"]["inputs"]) == {"1 image", "8-frame clip"}
    for entry in raw["a"]["inputs"].values():
        assert set(entry["budgets"]) == set(BUDGETS) and entry["tower_seconds"] > 0
    per_frame = raw["a"]["tokens_per_frame"]
    assert raw["a"]["inputs"]["1 image"]["budgets"]["1/8"]["keep"] == per_frame // 8
    assert raw["a"]["inputs"]["8-frame clip"]["budgets"]["1/16"]["keep"] == 8 * per_frame // 16
    swap = raw["swap"]
    assert set(swap) == {"swap/0/identity/all"} | {f"swap/0/{r}/{b}" for r in SWAP_REDUCERS for b in BUDGETS}
    assert swap["swap/0/identity/all"]["tokens"] == 64 and swap["swap/0/identity/all"]["recall_kept"] == 1.0
    for budget, keep in (("1/4", 16), ("1/8", 8), ("1/16", 4)):
        for r in SWAP_REDUCERS:
            row = swap[f"swap/0/{r}/{budget}"]
            assert row["tokens"] == keep and row["questions"] > 0
            assert 0.0 <= row["recall_kept"] <= 1.0 and 0.0 <= row["needle_share"] <= 1.0
            assert {"needle_colour", "needle_position"} <= set(row["accuracy"])
    clip = raw["clip"]
    assert set(clip) == {f"clip/0/{r}/{b}" for r in CLIP_REDUCERS for b in BUDGETS}
    for budget, keep in (("1/4", 128), ("1/8", 64), ("1/16", 32)):  # of 8 frames x 64 patches
        for r in CLIP_REDUCERS:
            row = clip[f"clip/0/{r}/{budget}"]
            assert row["tokens"] == keep and row["questions"] > 0 and row["no_needle_patch"] < row["questions"]
            assert 0.0 <= row["recall_kept"] <= 1.0 and 0.0 <= row["needle_share"] <= 1.0
    # avgpool 2x2x2 averages the needle's frame with its neighbour: no needle patch is ever kept alone
    assert clip["clip/0/avgpool/1/8"]["recall_unmixed"] == 0.0
