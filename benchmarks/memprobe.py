"""Child process for the memory measurement: build one loader, iterate a fixed number of batches.

Run as ``python -m benchmarks.memprobe '<json spec>'`` by ``bench_data``, which samples this
process and its dataloader workers from outside (``common.TreeMemorySampler``), so the
benchmark driver's own memory is never counted. The spec names the loader (``stream`` over a
shard folder or ``baseline`` over a records file), the fixture paths and the sizes; the last
stdout line is a JSON result (samples, seconds to build the dataset, seconds to iterate).
"""

from __future__ import annotations

import json
import sys
import time


def run(spec: dict) -> dict:
    import torch

    from benchmarks.fixtures import Sizes, baseline_dataset, baseline_loader, iterate, load_tokenizer, stream_loader

    torch.set_num_threads(1)
    sizes = Sizes(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec["sizes"].items()})
    tok = load_tokenizer(spec["tokenizer"])
    t0 = time.perf_counter()
    if spec["kind"] == "stream":
        loader = stream_loader(spec["shards"], tok, sizes, num_workers=sizes.mem_workers)
    elif spec["kind"] == "baseline":
        ds = baseline_dataset(spec["records"], spec["media_root"], tok, sizes)
        loader = baseline_loader(ds, tok, sizes, num_workers=sizes.mem_workers)
    else:
        raise ValueError(f"unknown loader kind {spec['kind']!r}")
    t1 = time.perf_counter()
    samples = iterate(loader, max_batches=sizes.mem_batches)
    t2 = time.perf_counter()
    return {"kind": spec["kind"], "samples": samples, "build_seconds": t1 - t0, "iterate_seconds": t2 - t1}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    result = run(json.loads(argv[0]))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
