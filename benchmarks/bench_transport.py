"""Batch transport benchmark: what receiving a worker's batch costs the training process, one shared block
per batch (``llava_wb.data.transport``) against torch's one segment per tensor.

    python -m benchmarks.bench_transport [--quick] [--out benchmarks/results] [--batches N] [--repeats R]

Writes ``<out>/transport.md`` and ``<out>/transport.json`` (``--quick``: tiny sizes, default out
``runs/bench_quick``; the numbers mean nothing there).

The batches are real: the first ``--batches`` batches of ``configs/demo.yaml``'s stage-2 loader (packed
rows of 96, uint8 pixels as training ships them) on the demo-mix shards of ``bench_packing``, collated
in this process. A ``torch.utils.data.DataLoader`` with one worker then sends them to this process
again and again, each time as fresh tensors (a clone, as a worker's collate makes), either as they
are (torch's default: a shared-memory segment and a file descriptor per tensor) or ``pack``-ed into
one block and ``unpack``-ed here. The table gives the CPU time of this process's receiving thread per
batch (``time.thread_time`` around ``next()``: the work the step waits for, whatever the worker does
meanwhile), the worker's CPU per batch, and ``pack``'s cost, which the worker pays; medians of
interleaved repeats.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from collections.abc import Sequence
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from benchmarks.bench_packing import FULL, QUICK, demo_overrides, prepare_demo
from benchmarks.common import DEFAULT_CACHE, ROOT, Section, machine_info, results_dir, write_results

NAME = "transport"
WAYS = ("per tensor (torch's default)", "one block (transport)")


def demo_batches(quick: bool, cache: str, n: int) -> list[dict[str, Any]]:
    """The first ``n`` stage-2 batches of the demo config, uint8 pixels, collated in this process."""
    import dataclasses

    import torch

    from benchmarks.fixtures import load_tokenizer
    from llava_wb.data.loader import build_train_loader
    from llava_wb.model import build_model
    from llava_wb.model.media import media_settings
    from llava_wb.train.config import load_config

    paths = prepare_demo(QUICK if quick else FULL, cache)
    cfg = load_config(str(ROOT / "configs" / "demo.yaml"), demo_overrides(paths))
    cfg.data = dataclasses.replace(cfg.data, num_workers=0)
    torch.manual_seed(0)
    model = build_model(cfg.model, load_tokenizer(paths["tokenizer"]))
    media = media_settings(model, cfg.data)
    media = dataclasses.replace(media, image=dataclasses.replace(media.image, pixels="uint8"))
    loader = build_train_loader(
        cfg.data, load_tokenizer(paths["tokenizer"]), media_tokens=model.media_tokens, media=media
    )
    out = []
    for batch in loader:
        out.append(batch)
        if len(out) == n:
            return out
    return out


class Replay:
    """An iterable dataset that yields fresh copies of ``batches``, ``rounds`` times, packed or not."""

    def __init__(self, batches: list[dict[str, Any]], rounds: int, packed: bool):
        self.batches, self.rounds, self.packed = batches, rounds, packed

    def __iter__(self):
        import torch

        from llava_wb.data.transport import pack

        for _ in range(self.rounds):
            for b in self.batches:
                fresh = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in b.items()}
                yield pack(fresh) if self.packed else fresh


def receive(batches: list[dict[str, Any]], rounds: int, packed: bool) -> dict[str, float]:
    """This thread's CPU per batch in ``next()`` and the worker's CPU per batch, over one loader's life."""
    import psutil
    import torch.utils.data as tud

    from llava_wb.data.transport import unpack

    class Data(tud.IterableDataset):
        def __iter__(self):
            return iter(Replay(batches, rounds, packed))

    loader = iter(tud.DataLoader(Data(), batch_size=None, num_workers=1, collate_fn=lambda b: b, prefetch_factor=2))
    first = unpack(next(loader))  # the worker is up
    workers = psutil.Process().children()  # the earlier loaders' workers have exited
    if len(workers) != 1:
        raise RuntimeError(f"expected one loader worker, found {len(workers)} child processes")
    worker = workers[0]
    worker_cpu = sum(worker.cpu_times()[:2])
    cpu, n, worker_end = 0.0, 0, worker_cpu
    while True:
        start = time.thread_time()
        try:
            batch = unpack(next(loader))
        except StopIteration:
            break
        cpu += time.thread_time() - start
        n += 1
        del batch
        with contextlib.suppress(psutil.Error):  # read after each batch: the worker exits with the last
            worker_end = sum(worker.cpu_times()[:2])
    worker_cpu = worker_end - worker_cpu
    del first, loader
    return {"main_ms": cpu / n * 1000, "worker_ms": worker_cpu / n * 1000, "batches": n}


def measure(quick: bool, cache: str, n_batches: int, repeats: int) -> dict[str, Any]:
    import torch

    from llava_wb.data.transport import pack

    torch.set_num_threads(1)
    batches = demo_batches(quick, cache, n_batches)
    rounds = 1 if quick else max(1, 300 // len(batches))
    runs: dict[str, list[dict[str, float]]] = {w: [] for w in WAYS}
    for r in range(repeats):
        order = WAYS if r % 2 == 0 else WAYS[::-1]
        for way in order:
            runs[way].append(receive(batches, rounds, packed=way == WAYS[1]))
            print(f"[bench_transport] repeat {r + 1}/{repeats} {way}: {runs[way][-1]['main_ms']:.2f} ms", flush=True)
    pack_us = []
    for _ in range(repeats):
        start = time.perf_counter()
        for b in batches:
            pack(b)
        pack_us.append((time.perf_counter() - start) / len(batches) * 1e6)
    first = batches[0]
    tensors = {k: [list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in first.items() if hasattr(v, "dtype")}
    nbytes = [sum(v.numel() * v.element_size() for v in b.values() if hasattr(v, "dtype")) for b in batches]
    return {
        "batches": len(batches),
        "rounds": rounds,
        "repeats": repeats,
        "tensors_per_batch": len(tensors),
        "first_batch": tensors,
        "median_batch_kib": statistics.median(nbytes) / 1024,
        "runs": runs,
        "pack_us": statistics.median(pack_us),
    }


def sections(raw: dict[str, Any]) -> list[Section]:
    med = {w: {k: statistics.median(r[k] for r in raw["runs"][w]) for k in ("main_ms", "worker_ms")} for w in WAYS}
    base = med[WAYS[0]]["main_ms"]
    rows = [
        [
            w,
            med[w]["main_ms"],
            f"{base / med[w]['main_ms']:.2f}x",
            ", ".join(f"{r['main_ms']:.2f}" for r in raw["runs"][w]),
            med[w]["worker_ms"],
        ]
        for w in WAYS
    ]
    return [
        Section(
            title="Receiving a demo stage-2 batch from a loader worker",
            explain=f"{raw['batches']} real batches ({raw['tensors_per_batch']} tensors, median "
            f"{raw['median_batch_kib']:.0f} KiB each), sent {raw['rounds']} times over per loader, "
            f"{raw['repeats']} loaders per way, interleaved; medians. 'receiving thread': CPU milliseconds of "
            "this process's thread per batch inside `next()` (unpickling, receiving the descriptors, "
            "`unpack`); 'worker': the worker process's CPU per batch (the copies and `pack` included).",
            headers=["way", "receiving thread, ms/batch", "speed-up, receiving", "each loader", "worker, ms/batch"],
            rows=rows,
            notes=[
                f"`pack` in the worker: {raw['pack_us']:.0f} us per batch (in the worker's column).",
                "tensors of the first batch: "
                + ", ".join(f"{k} {'x'.join(map(str, s))} {d}" for k, (s, d) in raw["first_batch"].items()),
            ],
        )
    ]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_transport", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes (smoke test; numbers meaningless)")
    p.add_argument("--out", default=None, help="results folder (default benchmarks/results; --quick: runs/bench_quick)")
    p.add_argument("--cache", default=str(DEFAULT_CACHE), help="where the synthetic shards are kept between runs")
    p.add_argument("--batches", type=int, default=None, help="distinct demo batches (default 60; quick 3)")
    p.add_argument("--repeats", type=int, default=None, help="loaders per way (default 5; quick 1)")
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, str]:
    args = build_parser().parse_args(argv)
    raw = measure(
        args.quick, args.cache, args.batches or (3 if args.quick else 60), args.repeats or (1 if args.quick else 5)
    )
    return write_results(
        results_dir(args.out, args.quick),
        NAME,
        title="Batch transport benchmark",
        intro=__doc__.split("\n\n")[3],
        sections=sections(raw),
        raw={**raw, "quick": args.quick},
        machine=machine_info(),
    )


if __name__ == "__main__":
    main()
