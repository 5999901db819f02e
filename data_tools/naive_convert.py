"""BASELINE ONLY, not for use: the seed note's single-process tarfile loop, for the benchmark.

A faithful re-implementation of ``create_sharded_tars_image`` from the seed note, kept so
``benchmarks/bench_data.py`` can compare ``llava-wb-convert`` against it. It ``json.load``s the
whole file, validates nothing, names members ``{id}.jpg`` / ``{id}.json`` whatever the real format
or the dots in the id, crashes on the first missing image and on text-only records, and writes
non-reproducible tars (current mtime). Use :mod:`data_tools.convert_to_wds` instead.
"""

from __future__ import annotations

import io
import json
import os
import tarfile


def create_sharded_tars_image(json_file: str, image_dir: str, output_dir: str, shard_size: int = 1000) -> int:
    """Write ``shard-%05d.tar`` files the seed-note way; return the number of records written."""
    with open(json_file) as f:
        data = json.load(f)
    os.makedirs(output_dir, exist_ok=True)
    shard_idx = 0
    for i in range(0, len(data), shard_size):
        shard_data = data[i : i + shard_size]
        tar_path = os.path.join(output_dir, f"shard-{shard_idx:05d}.tar")
        with tarfile.open(tar_path, "w") as tar:
            for item in shard_data:
                image_path = os.path.join(image_dir, item["image"])
                with open(image_path, "rb") as img:
                    img_data = img.read()
                info = tarfile.TarInfo(name=f"{item['id']}.jpg")
                info.size = len(img_data)
                tar.addfile(info, io.BytesIO(img_data))
                meta = json.dumps({"id": item["id"], "conversations": item["conversations"]})
                info = tarfile.TarInfo(name=f"{item['id']}.json")
                info.size = len(meta)
                tar.addfile(info, io.BytesIO(meta.encode("utf-8")))
        shard_idx += 1
    return len(data)


def main() -> None:
    import argparse

    p = argparse.ArgumentParser(description="BASELINE seed-note converter (for benchmarks only)")
    p.add_argument("json_file")
    p.add_argument("image_dir")
    p.add_argument("output_dir")
    p.add_argument("--shard-size", type=int, default=1000)
    a = p.parse_args()
    n = create_sharded_tars_image(a.json_file, a.image_dir, a.output_dir, a.shard_size)
    print(f"wrote {n} records")


if __name__ == "__main__":
    main()
