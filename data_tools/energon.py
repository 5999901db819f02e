"""Megatron-Energon view of converted shards: the ``.nv-meta`` description and the sample type.

``write_energon_meta(OUT)`` (or ``llava-wb-convert ... --energon``, or
``python -m data_tools.energon OUT``) indexes a converted folder with Energon's own preparator
(the ``energon prepare`` code: ``.nv-meta/index.sqlite``, ``.info.json``, ``split.yaml``) and
writes ``.nv-meta/dataset.yaml`` plus ``.nv-meta/sample_loader.py``, so that ``energon lint OUT``
passes and ``get_train_dataset``/``get_val_dataset`` yield one :class:`LlavaWbSample` per shard
sample. The typed path of Energon (``VQASample`` with a field map) cannot express llava_wb's
samples (several media of several modalities, text-only, multi-turn), hence this sample type:

* ``conversations``: the turns exactly as in the shard json;
* ``images`` / ``videos`` / ``audios``: the media in placeholder order, each as Energon's decoder
  returned it (``torchrgb`` tensors for images by default, ``AVDecoder`` objects for video and
  wav/mp3/flac audio, bytes for a format Energon does not decode, e.g. ``ogg``);
* ``record``: the whole shard json (``id``, ``index``, ``source``, ``media``, ``meta`` ...).

A sample whose json names a media field the tar lacks raises (never an empty list). Needs the
``energon`` extra (``megatron-energon``); the converter imports this module only when asked to.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from typing import Any

try:
    from megatron.energon import Sample
    from megatron.energon.edataclass import edataclass
except ImportError as e:  # the converter imports this module only for --energon
    raise ImportError("data_tools.energon needs megatron-energon: pip install -e '.[energon]'") from e

MODALITY_FIELDS = {"image": "images", "video": "videos", "audio": "audios"}

# Loaded by Energon from .nv-meta (executed as a plain file, so it only delegates to this module).
_SAMPLE_LOADER_PY = '''\
"""Written by data_tools.energon: llava_wb shards -> data_tools.energon.LlavaWbSample fields."""
from data_tools.energon import part_filter, sample_loader  # noqa: F401
'''


@edataclass
class LlavaWbSample(Sample):
    """One llava_wb shard sample: its conversation and its media, grouped by modality."""

    id: str
    conversations: list
    images: list
    videos: list
    audios: list
    record: dict


def part_filter(part: str) -> bool:
    """Every tar member is needed: the json and any media field (``jpg``, ``1.png``, ``mp4`` ...)."""
    return True


def sample_loader(raw: dict) -> dict:
    """Energon's decoded tar members of one sample -> the :class:`LlavaWbSample` fields."""
    record = raw.get("json")
    key = raw.get("__key__")
    if not isinstance(record, dict):
        raise ValueError(f"sample {key}: no json member (got {type(record).__name__})")
    out: dict[str, Any] = {name: [] for name in MODALITY_FIELDS.values()}
    for m in record.get("media", []):
        field, modality = m.get("field"), m.get("modality")
        if modality not in MODALITY_FIELDS:
            raise ValueError(f"sample {key}: unknown modality {modality!r} for field {field!r}")
        if field not in raw:
            raise ValueError(f"sample {key}: the json names media field {field!r} but the tar has no such member")
        out[MODALITY_FIELDS[modality]].append(raw[field])
    return {"id": str(record.get("id", "")), "conversations": record["conversations"], "record": record, **out}


def _shard_names(out_dir: str) -> list[str]:
    index_path = os.path.join(out_dir, "index.json")
    if not os.path.exists(index_path):
        raise FileNotFoundError(f"{index_path} not found: write_energon_meta needs a folder written by the converter")
    with open(index_path, encoding="utf-8") as f:
        index = json.load(f)
    # A window whose records were all rejected is an empty shard: Energon has nothing to index there.
    return [s["name"] for s in index["shards"] if s.get("samples", 1) > 0]


def write_energon_meta(out_dir: str | os.PathLike, split: str = "train", workers: int = 1) -> str:
    """Index ``out_dir`` for Energon (every non-empty shard in ``split``) and write its dataset.yaml.
    Returns the ``.nv-meta`` folder."""
    from megatron.energon.flavors.webdataset.prepare import WebdatasetPreparator

    out_dir = os.fspath(out_dir)
    names = _shard_names(out_dir)
    if not names:
        raise ValueError(f"{out_dir}: no shard with samples, nothing for Energon to index")
    # Energon's split names: every shard in ``split``, the others present and empty (``energon lint``
    # checks train, val and test and skips an empty one).
    parts = [(split, 1.0)] + [(other, 0.0) for other in ("train", "val", "test") if other != split]
    WebdatasetPreparator.prepare_dataset(out_dir, names, split_parts_ratio=parts, shuffle_seed=None, workers=workers)
    meta = os.path.join(out_dir, ".nv-meta")
    with open(os.path.join(meta, "sample_loader.py"), "w", encoding="utf-8") as f:
        f.write(_SAMPLE_LOADER_PY)
    with open(os.path.join(meta, "dataset.yaml"), "w", encoding="utf-8") as f:
        f.write(
            "# Written by data_tools.energon (llava_wb shards, docs/data_format.md).\n"
            "sample_type:\n  __module__: data_tools.energon\n  __class__: LlavaWbSample\n"
            "sample_loader: sample_loader.py:sample_loader\npart_filter: sample_loader.py:part_filter\n"
        )
    return meta


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m data_tools.energon", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("out", help="a folder written by llava-wb-convert")
    p.add_argument("--split", default="train", help="the Energon split every shard goes to (default: train)")
    p.add_argument("--workers", type=int, default=1)
    args = p.parse_args(argv)
    print(f"wrote {write_energon_meta(args.out, args.split, args.workers)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
