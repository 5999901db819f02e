"""Run under torchrun: each rank streams one exact epoch (2 workers) and one balanced epoch, and
writes what it saw. Used by tests/test_roundtrip.py; not a test module itself.

usage: torchrun --nproc_per_node 2 tests/dist_stream_worker.py SHARD_DIR OUT_DIR
"""

import hashlib
import json
import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from llava_wb.data.config import DataConfig  # noqa: E402
from llava_wb.data.loader import build_loader  # noqa: E402
from llava_wb.data.pipeline import RawSample  # noqa: E402


def main() -> None:
    shard_dir, out_dir = sys.argv[1], sys.argv[2]
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    exact = DataConfig.from_dict({"sources": [shard_dir], "batch_size": 8, "num_workers": 2, "epoch_mode": "exact"})
    seen = []
    for batch in build_loader(exact, process=RawSample()):
        for s in batch["samples"]:
            seen.append(
                {
                    "key": s["key"],
                    "id": s["id"],
                    "conversations": s["conversations"],
                    "media": {m: [hashlib.sha256(b).hexdigest() for b in v] for m, v in s["media"].items()},
                }
            )
    balanced = DataConfig.from_dict({"sources": [shard_dir], "batch_size": 8, "num_workers": 2})
    loader = build_loader(balanced, process=RawSample())
    n_batches = torch.tensor([sum(1 for _ in loader)])
    gathered = [torch.zeros_like(n_batches) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, n_batches)
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(
            {
                "rank": rank,
                "world": dist.get_world_size(),
                "samples": seen,
                "balanced_batches": [int(g) for g in gathered],
                "len": len(loader),
            },
            f,
        )
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
