"""Smoke test of the data benchmark: ``bench_data --quick`` runs end to end and writes its report.

Only the structure of the results is checked (files, sections, keys); speed and memory are
measured by the benchmark itself, never asserted here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_data_quick_writes_md_and_json(tmp_path):
    out, cache = tmp_path / "results", tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": ROOT, "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.bench_data",
            "--quick",
            "--no-progress",
            "--out",
            str(out),
            "--cache",
            str(cache),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    md, js = out / "data.md", out / "data.json"
    assert md.is_file() and js.is_file()
    assert proc.stdout.strip().splitlines()[-1] == str(md)

    text = md.read_text(encoding="utf-8")
    assert text.startswith("# Data pipeline benchmark")
    assert "Machine: " in text and "QUICK MODE" in text
    for heading in (
        "## Targets",
        "## (a) Loader throughput",
        "## (b) Peak memory",
        "## (c) Converter throughput",
        "## (d) Decode + preprocess ceiling",
    ):
        assert heading in text, heading

    raw = json.loads(js.read_text(encoding="utf-8"))
    assert raw["name"] == "data" and raw["quick"] is True
    assert {"cpu", "cores", "ram_gib", "python", "torch", "date"} <= set(raw["machine"])
    runs = raw["throughput"]["runs"]
    assert set(runs) == {"stream/w0", "baseline/w0", "stream/w2", "baseline/w2"}
    for run in runs.values():
        assert {"median_rate", "median_cpu_rate", "rates", "seconds", "cpu_seconds", "other_share"} <= set(run)
        assert all(u > 0 for u in run["units"])
    mem = raw["memory"]["runs"]
    assert set(mem) == {"stream/N", "stream/10N", "baseline/N", "baseline/10N"}
    for probe in mem.values():
        assert probe["processes"] >= 3  # main + 2 dataloader workers were seen
        assert {"pss", "rss", "uss"} <= set(probe["peak_bytes"]) and probe["peak_bytes"]["rss"] > 0
    assert mem["stream/10N"]["records_file_bytes"] > 5 * mem["stream/N"]["records_file_bytes"]
    assert set(raw["converter"]["runs"]) == {"naive", "ours_no_validation", "ours_validation"}
    assert {"train_sample", "train_sample_collate", "tar_read_samples_per_s"} <= set(raw["ceiling"])
    assert {t["id"] for t in raw["targets"]} == {"a_w0", "a_w2", "b_stream", "b_baseline", "c", "d"}
    assert all(isinstance(t["met"], bool) for t in raw["targets"])


def test_run_all_discovers_bench_modules():
    from benchmarks.run_all import discover

    names = discover()
    assert "benchmarks.bench_data" in names
    assert all(n.startswith("benchmarks.bench_") for n in names)


def test_bench_merge_quick_writes_every_part(tmp_path):
    out, cache = tmp_path / "results", tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": ROOT, "TOKENIZERS_PARALLELISM": "false", "MPLBACKEND": "Agg"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.bench_merge",
            "--quick",
            "--seeds",
            "0",
            "--control-seeds",
            "",
            "--out",
            str(out),
            "--cache",
            str(cache),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = (out / "merge.md").read_text(encoding="utf-8")
    for heading in ("## (a) Merge time", "## (b) Token budget", "## (c) Held-out accuracy", "## (d) Training step"):
        assert heading in text, heading
    raw = json.loads((out / "merge.json").read_text(encoding="utf-8"))
    from benchmarks.bench_merge import C_REDUCERS

    assert set(raw["c"]["runs"]) == {f"pos/{r}/0" for r in C_REDUCERS}
    assert raw["c"]["runs"]["pos/local_merge/0"]["tokens_per_image"] == 16
    assert raw["b"]["rows"][0]["visual_tokens"] == 576 and raw["b"]["rows"][2]["visual_tokens"] == 144
    (cpu,) = raw["d"]["runs"]  # no GPU in CI: the CPU row only, one step time per reducer
    assert set(cpu["results"]) == {"identity", "local_merge r=0.75", "avgpool 2x2"}
    assert cpu["results"]["identity"]["visual_tokens"] == 4 * cpu["results"]["local_merge r=0.75"]["visual_tokens"]


def test_quick_runs_write_under_runs_never_into_the_committed_results(tmp_path, monkeypatch):
    """``--quick`` numbers mean nothing: without ``--out`` they go to ``runs/bench_quick``, and the
    measured tables in ``benchmarks/results`` stay as committed."""
    from benchmarks import bench_video, common

    assert common.QUICK_RESULTS.relative_to(common.ROOT).parts == ("runs", "bench_quick")
    assert common.results_dir(None, quick=False) == str(common.RESULTS)
    assert common.results_dir(str(tmp_path), quick=True) == str(tmp_path)
    committed = {p.name: p.read_bytes() for p in common.RESULTS.glob("video.*")}
    monkeypatch.setattr(common, "QUICK_RESULTS", tmp_path / "runs" / "bench_quick")
    paths = bench_video.main(["--quick", "--parts", "b"])
    assert all(Path(p).parent == tmp_path / "runs" / "bench_quick" for p in paths), paths
    assert {p.name: p.read_bytes() for p in common.RESULTS.glob("video.*")} == committed


def test_bench_packing_quick_writes_every_part(tmp_path):
    """``bench_packing --quick``: (a) padding both ways, (b) CPU passes of every layout on the same samples,
    (c) the GPU code path at the tiny shape on the CPU (SDPA; flex_attention and flash_attention_2 skipped)."""
    out, cache = tmp_path / "results", tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": ROOT, "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "benchmarks.bench_packing", "--quick", "--out", str(out), "--cache", str(cache)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    md = out / "packing.md"
    assert proc.stdout.strip().splitlines()[-1] == str(md)
    text = md.read_text(encoding="utf-8")
    assert "QUICK MODE" in text and "Machine: " in text
    for heading in ("## (a)(i) Padding, demo mix", "## (a)(ii) Padding, LLaVA-1.5", "## (b)(i) CPU", "## (c) GPU"):
        assert heading in text, heading
    raw = json.loads((out / "packing.json").read_text(encoding="utf-8"))
    assert raw["name"] == "packing" and raw["quick"] is True
    from benchmarks import bench_packing
    from llava_wb.train.config import load_config

    a = raw["a_demo"]
    assert a["media_tokens"] == {
        "image": 16,
        "video": 20,
        "audio": 20,
    }  # the demo config (4 frames x 2x2 + a separator each), not hard-coded in the bench
    padded, *packed = a["layouts"].values()
    demo_rows = bench_packing.demo_layouts(load_config(f"{ROOT}/configs/demo.yaml").data.packing)
    assert len(packed) == len(bench_packing.STRATEGIES) * len(demo_rows) and all(
        p["samples"] == padded["samples"] > 0 for p in packed
    )
    assert all(p["real_tokens"] == padded["real_tokens"] and p["padding"] < padded["padding"] for p in packed)
    padded, *packed = raw["a_llava"]["layouts"].values()
    n_rows = len(bench_packing.STRATEGIES) * len(bench_packing.LLAVA_ROW_LENGTHS)
    assert len(packed) == n_rows + 1 + 3 and all(p["padding"] < padded["padding"] for p in packed)  # + flattened, refs
    flat = [v for k, v in raw["a_llava"]["layouts"].items() if "flattened" in k]
    assert len(flat) == 1 and flat[0]["padding"] == 0.0
    b = raw["b"]["layouts"]
    assert len(b) == 1 + len(bench_packing.B_STRATEGIES) * len(demo_rows)
    assert len({v["real_tokens"] for v in b.values()}) == 1  # the same samples every way
    assert all(len(v["timing"]["seconds"]) == 1 and v["median_towers_forward_s"] > 0 for v in b.values())
    from llava_wb.train.run import resolve_bf16

    trained = raw["b_trained"]  # (b)(ii): as the demo trains, on the same samples
    assert trained["as_trained"] and trained["bf16"] == resolve_bf16(load_config(f"{ROOT}/configs/demo.yaml").train)
    assert trained["timed_misses"] == 0 and trained["feature_cache"]["hits"] > 0  # the towers' features are cached
    assert {v["real_tokens"] for v in trained["layouts"].values()} == {v["real_tokens"] for v in b.values()}
    assert "## (b)(ii) CPU training throughput as the demo trains" in text
    for part in (b, trained["layouts"]):  # the LLM alone on the same batches, beside each whole pass
        assert all(0 < v["median_llm_s"] and len(v["llm_timing"]["seconds"]) == 1 for v in part.values())
    assert "LLM alone ratio" in text
    c = raw["c"]
    assert c["run"] and set(c["runs"]) == {"sdpa", "flex_attention", "flash_attention_2"}
    assert "skipped" in c["runs"]["flex_attention"]
    sdpa = c["runs"]["sdpa"]
    assert "error" not in sdpa and sdpa["ratio"] > 0 and set(c["layouts"]) <= set(sdpa)


def test_bench_packing_gpu_only_without_cuda_is_a_clear_error(capsys):
    import torch

    from benchmarks import bench_packing

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible")
    with pytest.raises(SystemExit) as exc:
        bench_packing.main(["--gpu-only"])
    assert exc.value.code == 2
    assert "--gpu-only needs a CUDA device" in capsys.readouterr().err


def test_bench_transport_quick_receives_real_demo_batches_both_ways(tmp_path):
    """``bench_transport --quick``: real demo batches through a one-worker loader, per tensor and in one block."""
    out, cache = tmp_path / "results", tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": ROOT, "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "benchmarks.bench_transport", "--quick", "--out", str(out), "--cache", str(cache)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    raw = json.loads((out / "transport.json").read_text(encoding="utf-8"))
    from benchmarks.bench_transport import WAYS

    assert raw["quick"] is True and raw["tensors_per_batch"] >= 8 and raw["first_batch"]["pixel_values"][1] == "uint8"
    assert set(raw["runs"]) == set(WAYS) and all(
        r["batches"] == raw["batches"] - 1 for v in raw["runs"].values() for r in v
    )
    assert "## Receiving a demo stage-2 batch" in (out / "transport.md").read_text(encoding="utf-8")


def test_bench_overheads_quick_times_both_ways_of_each(tmp_path):
    from benchmarks import bench_overheads

    paths = bench_overheads.main(["--quick", "--out", str(tmp_path)])
    raw = json.loads(Path(paths["json"]).read_text(encoding="utf-8"))
    assert set(raw["keys"]) == set(bench_overheads.KEY_BATCHES)
    assert all(len(b["us_per_input"]) == 2 and min(b["us_per_input"].values()) > 0 for b in raw["keys"].values())
    assert raw["splice"]["same_values_and_gradients"] is True and min(raw["splice"]["ms"].values()) > 0
    text = Path(paths["md"]).read_text(encoding="utf-8")
    assert "## (a) Content keys" in text and "## (b) Splicing" in text
