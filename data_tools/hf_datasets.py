"""Open converted shards as a Hugging Face ``datasets.IterableDataset``, every sample kept.

The ``webdataset`` builder of ``datasets`` infers one column set from the first samples, so a
realistic mix (jpg and png and gif, text-only, video, audio, several images) is refused ("files in
the archive don't share the same prefix or the same types") or read with columns dropped. This
module reads the shards with llava_wb's own reader (:func:`llava_wb.data.tario.iter_shard`) and
gives every sample one fixed schema::

    from datasets import IterableDataset
    from data_tools.hf_datasets import hf_features, hf_samples
    ds = IterableDataset.from_generator(hf_samples, gen_kwargs={"shards": shards}, features=hf_features())

``shards``: a list of shard paths (``datasets`` splits it between dataloader workers). Columns:
``id``, ``key``, ``conversations`` (list of ``{"from", "value"}``), ``images`` (``datasets.Image``,
decoded by PIL on access), ``videos`` / ``audios`` (the file bytes), ``media_formats`` (the field of
each media item, in the order of the shard json's ``media``) and ``record`` (the whole shard json,
as a JSON string, so fields that vary between samples are never dropped).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

from llava_wb.data.tario import iter_shard

_KIND_COLUMN = {"image": "images", "video": "videos", "audio": "audios"}


def hf_samples(shards: Sequence[str]) -> Iterator[dict[str, Any]]:
    """One fixed-schema dict per sample of ``shards``, in shard order; a missing media member raises."""
    for url in shards:
        for raw in iter_shard(url):
            if "json" not in raw:
                raise ValueError(f"{url}: sample {raw['__key__']} has no json member")
            record = json.loads(raw["json"])
            out: dict[str, Any] = {column: [] for column in _KIND_COLUMN.values()}
            for m in record.get("media", []):
                if m["field"] not in raw:
                    raise ValueError(
                        f"{url}: sample {raw['__key__']} names media field {m['field']!r} "
                        "but the tar has no such member"
                    )
                data = raw[m["field"]]
                out[_KIND_COLUMN[m["modality"]]].append(
                    {"bytes": data, "path": None} if m["modality"] == "image" else data
                )
            yield {
                "id": str(record.get("id", "")),
                "key": raw["__key__"],
                "conversations": [{"from": t["from"], "value": t["value"]} for t in record["conversations"]],
                "media_formats": [m["field"] for m in record.get("media", [])],
                "record": json.dumps(record, ensure_ascii=False),
                **out,
            }


def hf_features():
    """The ``datasets.Features`` of :func:`hf_samples` (needs the ``datasets`` package)."""
    from datasets import Features, Image, List, Value

    return Features(
        {
            "id": Value("string"),
            "key": Value("string"),
            "conversations": List({"from": Value("string"), "value": Value("string")}),
            "images": List(Image()),
            "videos": List(Value("binary")),
            "audios": List(Value("binary")),
            "media_formats": List(Value("string")),
            "record": Value("string"),
        }
    )
