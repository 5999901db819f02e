"""Step overheads outside the LLM: the frozen towers' cache keys and the media splice, each against the
code it replaced, at the shapes of one demo stage-2 step.

    python -m benchmarks.bench_overheads [--quick] [--out benchmarks/results]

Writes ``<out>/overheads.md`` and ``<out>/overheads.json`` (``--quick``: tiny loops, default out
``runs/bench_quick``; the numbers mean nothing there). The batch's trip from the loader's worker,
the third such overhead, has its own benchmark (``bench_transport``: real batches through a real
worker).

A demo stage-2 step packs 10 rows of 96 positions, about 22 samples: by ``DEMO_MIX`` about 10
images, 7 video clips of 4 frames and 3 audio clips. (a) ``FeatureCache.keys`` hashes every tower
input of the step (each lookup, served or prefetched) against the per-input blake2b key it
replaced. (b) ``llava.splice`` writes the step's media embeddings (16 tokens per image, 20 per clip
and per audio clip, width 128) into the text embeddings, forward and backward, against the
``masked_scatter`` it replaced. Both ways run in turn in every repeat (interleaved), one torch
thread; medians.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

from benchmarks.common import Section, machine_info, results_dir, write_results

NAME = "overheads"
# One demo stage-2 step's tower inputs, float32 as the towers take them.
KEY_BATCHES = {"images": (10, 3, 64, 64), "video frames": (28, 3, 64, 64), "audio clips": (3, 80, 200)}
# The step's media tokens per kind (items x tokens each) in 10 packed rows of 96, LLM width 128.
SPLICE_ROWS, SPLICE_LENGTH, SPLICE_WIDTH = 10, 96, 128
SPLICE_TOKENS = {"image": (10, 16), "video": (7, 20), "audio": (3, 20)}


def blake2b_key(x: Any) -> bytes:
    """The key ``FeatureCache`` used before ``keys``: blake2b of one input's bytes (copied), dtype and shape."""
    import torch

    data = x.detach().contiguous().cpu()
    digest = hashlib.blake2b(data.view(torch.uint8).numpy().tobytes(), digest_size=16)
    digest.update(f"{data.dtype}{tuple(data.shape)}".encode())
    return digest.digest()


def interleaved(ways: dict[str, Callable[[], Any]], loops: int, repeats: int) -> dict[str, float]:
    """Median seconds per call of each way, the ways run in turn in every repeat."""
    times: dict[str, list[float]] = {w: [] for w in ways}
    for _ in range(repeats):
        for way, fn in ways.items():
            start = time.perf_counter()
            for _ in range(loops):
                fn()
            times[way].append((time.perf_counter() - start) / loops)
    return {w: statistics.median(v) for w, v in times.items()}


def measure_keys(loops: int, repeats: int) -> dict[str, Any]:
    """Microseconds per input for both keys on ``KEY_BATCHES``."""
    import torch

    from llava_wb.model.feature_cache import FeatureCache

    torch.manual_seed(0)
    out = {}
    for name, shape in KEY_BATCHES.items():
        batch = torch.randn(shape)
        ways = {
            "blake2b per input (before)": lambda b=batch: [blake2b_key(x) for x in b],
            "FeatureCache.keys": lambda b=batch: FeatureCache.keys(b),
        }
        secs = interleaved(ways, loops, repeats)
        out[name] = {"shape": list(shape), "us_per_input": {w: s / shape[0] * 1e6 for w, s in secs.items()}}
    return out


def measure_splice(loops: int, repeats: int) -> dict[str, Any]:
    """Milliseconds for the step's three splices, forward + backward, both ways (same inputs, same result)."""
    import torch

    from llava_wb.model.llava import splice

    g = torch.Generator().manual_seed(0)
    text = torch.randn(SPLICE_ROWS, SPLICE_LENGTH, SPLICE_WIDTH, generator=g, requires_grad=True)
    order = torch.randperm(SPLICE_ROWS * SPLICE_LENGTH, generator=g)
    masks, feats, start = [], [], 0
    for items, tokens in SPLICE_TOKENS.values():
        mask = torch.zeros(SPLICE_ROWS * SPLICE_LENGTH, dtype=torch.bool)
        mask[order[start : start + items * tokens]] = True
        start += items * tokens
        masks.append(mask.view(SPLICE_ROWS, SPLICE_LENGTH))
        feats.append(torch.randn(items, tokens, SPLICE_WIDTH, generator=g).bfloat16().requires_grad_())
    upstream = torch.randn(SPLICE_ROWS, SPLICE_LENGTH, SPLICE_WIDTH, generator=g)

    def masked_scatter() -> torch.Tensor:
        e = text
        for m, f in zip(masks, feats, strict=True):
            e = e.masked_scatter(m.unsqueeze(-1), f.to(e.dtype))
        return e

    def spliced() -> torch.Tensor:
        e = text
        for m, f in zip(masks, feats, strict=True):
            e = splice(e, m, f, f.shape[0] * f.shape[1])
        return e

    def step(fn: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, ...]:
        out = fn()  # one forward, one backward from a given upstream gradient
        return (out.detach(), *torch.autograd.grad(out, (text, *feats), grad_outputs=upstream))

    same = all(torch.equal(a, b) for a, b in zip(step(masked_scatter), step(spliced), strict=True))
    ways = {"masked_scatter (before)": lambda: step(masked_scatter), "splice (index_copy)": lambda: step(spliced)}
    secs = interleaved(ways, loops, repeats)
    return {"ms": {w: s * 1000 for w, s in secs.items()}, "same_values_and_gradients": same}


def sections(raw: dict[str, Any]) -> list[Section]:
    rows, step = [], {}
    for name, b in raw["keys"].items():
        before, now = b["us_per_input"].values()
        rows.append([name, "x".join(map(str, b["shape"])), before, now, f"{before / now:.2f}x"])
        for w, v in b["us_per_input"].items():
            step[w] = step.get(w, 0.0) + v * b["shape"][0] / 1000
    before, now = step.values()
    rows.append(["one step's inputs (ms)", "", before, now, f"{before / now:.2f}x"])
    sp = raw["splice"]
    before, now = sp["ms"].values()
    tokens = ", ".join(f"{k} {n} x {t}" for k, (n, t) in SPLICE_TOKENS.items())
    return [
        Section(
            title="(a) Content keys of one stage-2 step's tower inputs",
            explain=f"Microseconds per input (float32, random values), median of {raw['repeats']} interleaved "
            f"repeats of {raw['loops']} batches; the last row adds up one step's inputs in milliseconds. Both "
            "keys cover the value bytes, dtype and shape; `FeatureCache.keys` copies the batch to the host once "
            "and hashes each input from a view of it with SHA-256 (the CPU's SHA extensions), the key before "
            "copied each input to bytes and ran blake2b.",
            headers=["inputs", "batch", "blake2b per input (before), us", "FeatureCache.keys, us", "speed-up"],
            rows=rows,
        ),
        Section(
            title="(b) Splicing one stage-2 step's media embeddings into the text, forward + backward",
            explain=f"Text embeddings {SPLICE_ROWS} x {SPLICE_LENGTH} x {SPLICE_WIDTH} (fp32), media features in bf16 "
            f"as the projector gives them under autocast ({tokens} tokens, random positions), three splices in a "
            "row as `embed_inputs` does, then the gradients to the text embeddings and every feature tensor; "
            f"median of {raw['repeats']} interleaved repeats of {raw['loops']} steps.",
            headers=["way", "ms a step", "speed-up"],
            rows=[["masked_scatter (before)", before, "1.00x"], ["splice (index_copy)", now, f"{before / now:.2f}x"]],
            notes=[f"the same values and gradients both ways: {'yes' if sp['same_values_and_gradients'] else 'NO'}"],
        ),
    ]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_overheads", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny loops (smoke test; numbers meaningless)")
    p.add_argument("--out", default=None, help="results folder (default benchmarks/results; --quick: runs/bench_quick)")
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, str]:
    import torch

    args = build_parser().parse_args(argv)
    loops, repeats = (2, 1) if args.quick else (40, 9)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        raw = {"loops": loops, "repeats": repeats, "quick": args.quick}
        raw["keys"] = measure_keys(loops, repeats)
        raw["splice"] = measure_splice(loops, repeats)
    finally:
        torch.set_num_threads(before)
    return write_results(
        results_dir(args.out, args.quick),
        NAME,
        title="Step overheads benchmark",
        intro=__doc__.split("\n\n")[3],
        sections=sections(raw),
        raw=raw,
        machine=machine_info(),
    )


if __name__ == "__main__":
    main()
