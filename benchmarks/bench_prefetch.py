"""Feature prefetch benchmark: a frozen-tower run's first epoch with and without ``train.feature_prefetch``.

    python -m benchmarks.bench_prefetch [--quick] [--out benchmarks/results] [--steps N] [--repeats R]

Writes ``<out>/prefetch.md`` and ``<out>/prefetch.json`` (``--quick``: tiny sizes, default out
``runs/bench_quick``; the numbers mean nothing there).

The run is ``configs/demo.yaml`` (stage 2: projector + LLM, both towers frozen, packed rows, feature
caches on) on the demo-mix shards of ``bench_packing`` (untrained towers of the demo's shape: the
weights do not change a step's time), for ``--steps`` steps: about 115 steps make the first pass
over the 2,500 samples, where every image, frame and audio clip is new to the cache (the case
prefetch is for), and the steps after it find everything cached (the prefetch thread stops after
``PREFETCH_PATIENCE`` such batches). Baseline: the same
run with ``train.feature_prefetch: false`` (the towers compute in the step). Both are real
``llava_wb.train.train`` calls with the loader's worker; runs alternate (off, on, on, off, ...) and
the table gives medians of the training seconds the run reports (start-up included), of the
per-step samples per second in the first pass (steps 6-100) and after it (steps 140 on), and how
busy other processes kept the machine. Each pair's losses are compared: prefetch must not change a single one.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from benchmarks.bench_packing import FULL, QUICK, demo_overrides, prepare_demo
from benchmarks.common import DEFAULT_CACHE, ROOT, CpuMeter, Section, machine_info, results_dir, write_results

NAME = "prefetch"
MODES = {"off": False, "on": True}
WINDOWS = {"first pass": (5, 100), "cached": (140, None)}  # step slices of the per-step rates


def run_once(paths: dict[str, str], out: Path, steps: int, prefetch: bool, quick: bool) -> dict[str, Any]:
    """One training run; its seconds, samples, losses and cache counts."""
    from llava_wb.train import load_config, train

    overrides = [
        *demo_overrides(paths),
        f"train.output_dir={out}",
        f"train.max_steps={steps}",
        f"train.save_steps={steps + 1}",
        "train.logging_steps=1",
        "train.report_to=none",
        f"train.feature_prefetch={str(prefetch).lower()}",
    ]
    if quick:
        overrides += ["data.batch_size=2"]
    with CpuMeter() as meter:
        result = train(load_config(str(ROOT / "configs" / "demo.yaml"), overrides))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in rows if "loss" in r]
    losses = [r["loss"] for r in logged]
    return {
        "seconds": result["seconds"],
        "wall": meter.wall,
        "other_share": meter.other_share,
        "samples": result["skips"]["seen"],
        "rates": [r["samples_per_s"] for r in logged],  # per step
        "prefetch_stopped_after_batch": result["prefetch_stopped_after_batch"],
        "losses": losses,
        "vision_cache": result["feature_cache"],
        "audio_cache": result["audio_feature_cache"],
    }


def measure(quick: bool, cache: str, steps: int, repeats: int) -> dict[str, Any]:
    paths = prepare_demo(QUICK if quick else FULL, cache)
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
    with tempfile.TemporaryDirectory(prefix="bench_prefetch_") as tmp:
        for r in range(repeats):
            order = list(MODES) if r % 2 == 0 else list(reversed(MODES))
            for mode in order:
                got = run_once(paths, Path(tmp) / f"{mode}{r}", steps, MODES[mode], quick)
                print(f"[bench_prefetch] repeat {r} prefetch {mode}: {got['seconds']:.1f} s", flush=True)
                runs[mode].append(got)
    same = all(a["losses"] == b["losses"] for a, b in zip(runs["off"], runs["on"], strict=True))
    return {"steps": steps, "repeats": repeats, "runs": runs, "same_losses": same}


def window_rate(rates: list[float], window: tuple[int, int | None]) -> float | None:
    part = rates[window[0] : window[1]]
    return statistics.median(part) if part else None


def summary(raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out = {}
    for mode, runs in raw["runs"].items():
        out[mode] = {key: statistics.median(r[key] for r in runs) for key in ("seconds", "other_share")}
        for name, window in WINDOWS.items():
            rates = [window_rate(r["rates"], window) for r in runs]
            out[mode][name] = statistics.median(rates) if None not in rates else None
    return out


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def sections(raw: dict[str, Any]) -> list[Section]:
    med = summary(raw)
    off = med["off"]
    first = raw["runs"]["on"][0]
    rows = []
    for label, m in (("off (baseline)", off), ("on", med["on"])):
        rates = [m[name] for name in WINDOWS]
        ratios = [_ratio(m[name], off[name]) for name in WINDOWS]
        rows.append([f"prefetch {label}", round(m["seconds"], 1), *rates, *ratios, f"{100 * m['other_share']:.0f}%"])
    return [
        Section(
            title=f"Demo stage 2, {raw['steps']} steps from scratch, medians of {raw['repeats']} runs each",
            explain="Training seconds as the run reports them (start-up included); median samples/s of the "
            "steps in each window, and their ratios to the baseline; share of the machine other processes kept busy.",
            headers=[
                "run",
                "seconds",
                *(f"samples/s, {n}" for n in WINDOWS),
                *(f"vs baseline, {n}" for n in WINDOWS),
                "others busy",
            ],
            rows=rows,
            notes=[
                f"every loss equal with and without prefetch: {'yes' if raw['same_losses'] else 'NO'}",
                f"cache counts of one prefetching run: vision {first['vision_cache']}, audio {first['audio_cache']}",
                "the prefetch thread stopped after batch "
                + ", ".join(str(r["prefetch_stopped_after_batch"]) for r in raw["runs"]["on"]),
            ],
        )
    ]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_prefetch", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes (smoke test; numbers meaningless)")
    p.add_argument("--out", default=None, help="results folder (default benchmarks/results; --quick: runs/bench_quick)")
    p.add_argument("--cache", default=str(DEFAULT_CACHE), help="where the synthetic shards are kept between runs")
    p.add_argument("--steps", type=int, default=None, help="steps per run (default 300; quick 3)")
    p.add_argument("--repeats", type=int, default=None, help="runs per mode (default 3; quick 1)")
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, str]:
    args = build_parser().parse_args(argv)
    steps = args.steps or (3 if args.quick else 300)
    repeats = args.repeats or (1 if args.quick else 3)
    raw = measure(args.quick, args.cache, steps, repeats)
    machine = machine_info()
    return write_results(
        results_dir(args.out, args.quick),
        NAME,
        title="Feature prefetch benchmark",
        intro=__doc__.split("\n\n")[3],
        sections=sections(raw),
        raw={**raw, "summary": summary(raw)},
        machine=machine,
    )


if __name__ == "__main__":
    main()
