"""Data pipeline benchmark: streaming loader vs a LLaVA-style map-style baseline, and the converter.

    python -m benchmarks.bench_data [--quick] [--out benchmarks/results] [--cache runs/bench_cache]

Writes ``<out>/data.md`` and ``<out>/data.json`` (``--quick``: tiny sizes, default out
``runs/bench_quick``; for smoke tests, the numbers mean nothing). Measured in one run:

(a) samples/s of ``build_train_loader`` over converted shards vs ``LazySupervisedDataset`` +
    ``DataLoader(shuffle=True)`` over the records file and loose JPEGs, at 0 and 2 workers; the
    streaming loader ships uint8 pixels as in training and the consuming process normalises each
    batch (``normalise_batch``, timed); the baseline normalises to float32 per sample, as LLaVA does;
(b) peak memory of each loader's process tree (main + workers, sampled from outside in a child
    process) with N and 10N records of metadata;
(c) converter records/s: ``convert(workers=2)`` with media validation on and off vs the seed
    note's single-process tarfile loop (``data_tools.naive_convert``) on the same input;
(d) the decode+preprocess ceiling (``TrainSample`` over raw samples in memory, one process, one
    thread, to normalised float32 pixels: per sample in float32, or in uint8 then
    ``normalise_pixels``, whichever is faster) and the streaming loader's fraction of it.

The driver runs with ``torch.set_num_threads(1)`` so "per core" means one core; dataloader
workers use one thread each anyway. Inputs are cached (``benchmarks.fixtures``). The report is
assembled by ``benchmarks.report_data``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # as `make bench` and training runs set it
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import DEFAULT_CACHE, ROOT, Timing, TreeMemorySampler, machine_info, repeat_timed, results_dir
from benchmarks.fixtures import (
    FULL,
    QUICK,
    STREAM_PIXELS,
    Fixture,
    Sizes,
    baseline_dataset,
    baseline_loader,
    image_config,
    iterate,
    load_tokenizer,
    prepare,
    stream_loader,
)

NAME = "data"


def _say(msg: str) -> None:
    print(f"[bench_data] {msg}", file=sys.stderr, flush=True)


def warm_page_cache(fx: Fixture) -> int:
    """Read every shard and image once so both loaders start from a warm page cache."""
    total = 0
    for folder in (fx.shards, os.path.join(fx.data, "images")):
        for dirpath, _, files in os.walk(folder):
            for name in files:
                with open(os.path.join(dirpath, name), "rb") as f:
                    total += len(f.read())
    return total


# ----------------------------------------------------------------------------- (d) ceiling
# (d)'s rows that (a)'s loaders are compared with: timed in (a)'s interleaved loop, beside the loaders, so
# that a change in the machine's speed between parts (seen here: 20% within minutes) hits both alike
ALONGSIDE = ("train_sample", "train_sample_uint8", "train_sample_uint8_collate")


def ceiling_parts(fx: Fixture, tok) -> tuple[dict[str, Callable[[], int]], dict[str, Any]]:
    """(d)'s timed loops over raw samples in memory (one process, one thread), each returning the
    samples it did, and what they ran on: TrainSample, with collation, and its parts.

    Two ways to the same normalised float32 pixels are timed: ``train_sample`` (float32 per
    sample, LLaVA's way) and ``train_sample_uint8`` (uint8, then ``normalise_pixels`` per sample);
    the ceiling is the faster of the two (``ceiling_key``)."""
    import glob

    from llava_wb.data.collate import Collator
    from llava_wb.data.conversation import get_template
    from llava_wb.data.decode import ImageTransform, parse_json
    from llava_wb.data.image import normalise_batch, normalise_pixels
    from llava_wb.data.pipeline import TrainSample
    from llava_wb.data.tario import iter_shard

    s = fx.sizes
    urls = sorted(glob.glob(os.path.join(fx.shards, "*.tar")))
    t0 = time.perf_counter()
    read = sum(1 for u in urls for _ in iter_shard(u))
    tar_rate = read / (time.perf_counter() - t0)
    raws: list[dict] = []
    for u in urls:
        raws.extend(iter_shard(u))
        if len(raws) >= s.ceiling_samples:
            break
    raws = raws[: s.ceiling_samples]
    image, image_u8 = image_config(s), image_config(s, STREAM_PIXELS)

    def train_sample_for(img) -> TrainSample:
        return TrainSample(
            tok, template=s.template, max_length=s.max_length, media=img, media_tokens={"image": s.media_tokens}
        )

    process, process_u8 = train_sample_for(image), train_sample_for(image_u8)
    collate = Collator(pad_token_id=tok.pad_token_id)
    transform, transform_u8 = ImageTransform(image), ImageTransform(image_u8)
    template = get_template(s.template, tok)
    images = [r["jpg"] for r in raws if "jpg" in r]
    metas = [parse_json(r) for r in raws]
    for r in raws[:50]:
        process(r)  # warm-up
        process_u8(r)

    def train_sample() -> int:
        for r in raws:
            process(r)
        return len(raws)

    def train_sample_uint8() -> int:
        for r in raws:
            for px in process_u8(r)["media"].get("image", []):
                normalise_pixels(px, image)
        return len(raws)

    def train_sample_collate() -> int:
        for i in range(0, len(raws), s.batch_size):
            collate([process(r) for r in raws[i : i + s.batch_size]])
        return len(raws)

    def train_sample_uint8_collate() -> int:
        for i in range(0, len(raws), s.batch_size):
            normalise_batch(collate([process_u8(r) for r in raws[i : i + s.batch_size]]), image)
        return len(raws)

    def decode_only() -> int:
        for b in images:
            transform(b)
        return len(images)

    def decode_only_uint8() -> int:
        for b in images:
            transform_u8(b)
        return len(images)

    def tokenize_only() -> int:
        for m in metas:
            template.tokenize(
                m["conversations"],
                max_length=s.max_length,
                media_tokens={"image": s.media_tokens},
                expected_media={"image": len(m.get("media", []))},
            )
        return len(metas)

    parts = {
        "train_sample": train_sample,
        "train_sample_uint8": train_sample_uint8,
        "train_sample_collate": train_sample_collate,
        "train_sample_uint8_collate": train_sample_uint8_collate,
        "image_decode_transform": decode_only,
        "image_decode_uint8": decode_only_uint8,
        "tokenize_template": tokenize_only,
    }
    meta = {
        "samples_in_memory": len(raws),
        "images_in_memory": len(images),
        "tar_read_samples_per_s": tar_rate,
        "pixels": {"stream": STREAM_PIXELS, "baseline": "float32"},
    }
    return parts, meta


def measure_ceiling(
    parts: dict[str, Callable[[], int]], meta: dict[str, Any], repeats: int, timings: dict[str, Timing]
) -> dict[str, Any]:
    """Time ``parts`` in interleaved repeats, into ``timings`` (which may already hold the
    ``ALONGSIDE`` rows from (a)); the ceiling is the faster per-sample path per CPU-second."""
    for _ in range(repeats):  # interleaved, like (a): machine load hits every part alike
        for k, fn in parts.items():
            timings[k] = repeat_timed(fn, 1, timing=timings.get(k))
    ceiling_key = max(("train_sample", "train_sample_uint8"), key=lambda k: timings[k].cpu_rate)
    return {
        **meta,
        "ceiling_key": ceiling_key,
        "timed_with_loaders": [k for k in ALONGSIDE if k in timings and k not in parts],
        **{k: t.as_dict() for k, t in timings.items()},
    }


# ----------------------------------------------------------------------------- (a) throughput
def measure_throughput(
    fx: Fixture, tok, alongside: dict[str, Callable[[], int]] | None = None, timings: dict[str, Timing] | None = None
) -> dict[str, Any]:
    """(a): fresh stream and baseline loaders at each worker count, interleaved; at the start of each
    round the ``alongside`` loops (d's rows) are timed too, into ``timings``."""
    s = fx.sizes
    alongside, timings = alongside or {}, {} if timings is None else timings
    t0 = time.perf_counter()
    dataset = baseline_dataset(fx.records, fx.media_root, tok, s)
    baseline_init = time.perf_counter() - t0
    # Both consumers call normalise_batch, as the trainer does on its device: it normalises the
    # stream's uint8 pixels (timed, in this process) and passes the baseline's float32 through.
    image = image_config(s)
    for nw in s.workers:  # warm-up: imports, first worker start, template caches
        iterate(stream_loader(fx.shards, tok, s, num_workers=nw), max_batches=3, normalise=image)
        iterate(baseline_loader(dataset, tok, s, num_workers=nw), max_batches=3, normalise=image)
    runs: dict[str, Timing] = {}
    normalise_cpu: dict[str, list[float]] = {}  # CPU seconds of the consumer's normalise_batch, per run
    for rep in range(s.repeats):
        for k, fn in alongside.items():
            _say(f"(a) repeat {rep + 1}/{s.repeats}: (d) {k}")
            timings[k] = repeat_timed(fn, 1, timing=timings.get(k))
        for nw in s.workers:
            for kind in ("stream", "baseline"):
                key = f"{kind}/w{nw}"
                _say(f"(a) repeat {rep + 1}/{s.repeats}: {key}")

                def one_pass(kind: str = kind, nw: int = nw, rep: int = rep) -> int:
                    if kind == "stream":
                        loader = stream_loader(fx.shards, tok, s, num_workers=nw, seed=rep)
                    else:
                        loader = baseline_loader(dataset, tok, s, num_workers=nw, seed=rep)
                    return iterate(
                        loader, max_batches=s.pass_batches, normalise=image, spent=normalise_cpu.setdefault(key, [])
                    )

                runs[key] = repeat_timed(one_pass, 1, timing=runs.get(key))
    return {
        "pixels": {"stream": STREAM_PIXELS, "baseline": "float32", "normalised_in": "consumer (normalise_batch)"},
        "batch_size": s.batch_size,
        "baseline_init_seconds": baseline_init,
        "records": len(dataset),
        "pass_batches": s.pass_batches,
        "runs": {k: {**t.as_dict(), "normalise_cpu_seconds": normalise_cpu[k]} for k, t in runs.items()},
    }


# ----------------------------------------------------------------------------- (b) memory
def _probe(spec: dict[str, Any], timeout: float = 600) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.memprobe", json.dumps(spec)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    with TreeMemorySampler(proc.pid) as sampler:
        out, err = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"memory probe {spec['kind']} failed (exit {proc.returncode}):\n{err[-3000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    result.update(
        metric=sampler.metric,
        samples_taken=sampler.samples,
        processes=sampler.max_processes,
        peak_bytes=dict(sampler.peak),
        at_peak=sampler.at_peak,
    )
    return result


def measure_memory(fx: Fixture) -> dict[str, Any]:
    """Each (loader, metadata size) probed ``mem_repeats`` times, interleaved; the median probe counts.

    A single peak is noisy: batches in flight between workers and the main process (up to
    ``prefetch_factor x workers`` of them, each ~19 MB of float32 pixels for the baseline, ~5 MB of
    uint8 for streaming) and the workers' malloc high-water mark depend on scheduling, which moves
    one probe's peak by ~100 MB on a busy machine.
    """
    import statistics

    s = fx.sizes
    base = {"sizes": asdict(s), "tokenizer": fx.tokenizer, "media_root": fx.media_root}
    sets = {"N": (fx.records, fx.shards), f"{s.big_factor}N": (fx.big_records, fx.big_shards)}
    probes: dict[str, list[dict[str, Any]]] = {}
    for rep in range(s.mem_repeats):
        for kind in ("stream", "baseline"):
            for label, (records, shards) in sets.items():
                _say(f"(b) memory probe {rep + 1}/{s.mem_repeats}: {kind} with {label} records")
                probes.setdefault(f"{kind}/{label}", []).append(
                    _probe({**base, "kind": kind, "records": records, "shards": shards})
                )
    runs: dict[str, Any] = {}
    for key, ps in probes.items():
        records, shards = sets[key.split("/")[1]]
        metric = "rss" if any(p["metric"] == "rss" for p in ps) else "pss"
        median_probe = sorted(ps, key=lambda p: p["peak_bytes"][metric])[(len(ps) - 1) // 2]
        metrics = ("pss", "rss", "uss")
        runs[key] = {
            "metric": metric,
            "processes": max(p["processes"] for p in ps),
            "peak_bytes": {m: statistics.median(p["peak_bytes"][m] for p in ps) for m in metrics},
            "peaks_each": {m: [p["peak_bytes"][m] for p in ps] for m in metrics},
            "at_peak": median_probe["at_peak"],
            "build_seconds": statistics.median(p["build_seconds"] for p in ps),
            "records_file": records,
            "records_file_bytes": os.path.getsize(records),
            "index_json_bytes": os.path.getsize(os.path.join(shards, "index.json")),
            "probes": ps,
        }
    return {
        "runs": runs,
        "labels": list(sets),
        "batches": s.mem_batches,
        "workers": s.mem_workers,
        "repeats": s.mem_repeats,
    }


# ----------------------------------------------------------------------------- (c) converter
def measure_converter(fx: Fixture, cache: Path) -> dict[str, Any]:
    from data_tools.convert_to_wds import convert
    from data_tools.naive_convert import create_sharded_tars_image

    s = fx.sizes
    with open(fx.image_records, encoding="utf-8") as f:
        n = len(json.load(f))
    work = cache / "tmp_convert"
    outs = {k: work / k for k in ("naive", "ours_no_validation", "ours_validation")}
    runs = {
        "naive": lambda: create_sharded_tars_image(fx.image_records, fx.media_root, str(outs["naive"]), s.shard_size),
        "ours_no_validation": lambda: (
            convert(
                [fx.image_records],
                [fx.media_root],
                outs["ours_no_validation"],
                shard_size=s.shard_size,
                workers=2,
                validate_media=False,
                progress=False,
            ).records
        ),
        "ours_validation": lambda: (
            convert(
                [fx.image_records],
                [fx.media_root],
                outs["ours_validation"],
                shard_size=s.shard_size,
                workers=2,
                validate_media=True,
                progress=False,
            ).records
        ),
    }
    timings: dict[str, Timing] = {}
    try:
        for rep in range(s.convert_repeats):
            for key, fn in runs.items():
                _say(f"(c) converter repeat {rep + 1}/{s.convert_repeats}: {key}")
                shutil.rmtree(outs[key], ignore_errors=True)  # fresh output folder, outside the timing
                timings[key] = repeat_timed(fn, 1, timing=timings.get(key))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "input_records": n,
        "shard_size": s.shard_size,
        "workers": 2,
        "runs": {k: t.as_dict() for k, t in timings.items()},
    }


# ----------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_data", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes for smoke tests (< 60 s; numbers meaningless)")
    p.add_argument("--out", default=None, help="results folder (default benchmarks/results; --quick: runs/bench_quick)")
    p.add_argument("--cache", default=str(DEFAULT_CACHE), help="cache for generated inputs (default runs/bench_cache)")
    p.add_argument("--parts", default="abcd", help="which measurements to run (default abcd)")
    p.add_argument("--repeats", type=int, default=None, help="override the number of repeats")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, str]:
    args = build_parser().parse_args(argv)
    import torch

    from benchmarks.report_data import write_report

    torch.set_num_threads(1)
    sizes: Sizes = QUICK if args.quick else FULL
    if args.repeats:
        sizes = Sizes(**{**asdict(sizes), "repeats": args.repeats, "convert_repeats": args.repeats})
    out = results_dir(args.out, args.quick)
    started = time.perf_counter()
    _say(f"preparing inputs in {args.cache} ({sizes.n} records)")
    fx = prepare(sizes, args.cache, progress=args.progress)
    tok = load_tokenizer(fx.tokenizer)
    raw: dict[str, Any] = {
        "quick": args.quick,
        "fixture": fx.as_dict(),
        "prepare_seconds": time.perf_counter() - started,
    }
    raw["warm_bytes"] = warm_page_cache(fx)
    parts, meta = ceiling_parts(fx, tok) if "d" in args.parts else ({}, {})
    timings: dict[str, Timing] = {}
    if "a" in args.parts:
        alongside = {k: parts.pop(k) for k in ALONGSIDE if k in parts}
        raw["throughput"] = measure_throughput(fx, tok, alongside=alongside, timings=timings)
    if "d" in args.parts:
        _say("(d) decode+preprocess ceiling")
        raw["ceiling"] = measure_ceiling(parts, meta, sizes.repeats, timings)
    if "b" in args.parts:
        raw["memory"] = measure_memory(fx)
    if "c" in args.parts:
        raw["converter"] = measure_converter(fx, Path(args.cache))
    raw["total_seconds"] = time.perf_counter() - started
    paths = write_report(out, NAME, raw, machine_info())
    _say(f"done in {raw['total_seconds']:.0f} s: {paths['md']}")
    print(paths["md"])
    return paths


if __name__ == "__main__":
    main()
