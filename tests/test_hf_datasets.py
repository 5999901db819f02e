"""Converted shards open as a Hugging Face ``datasets.IterableDataset`` with nothing dropped, by the
one line documented in docs/data_format.md (the ``webdataset`` builder cannot take the mix)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("datasets", reason="datasets not installed (the 'energon' extra)")

from _convert_fixtures import read_shards  # noqa: E402
from _interop_fixtures import N_SAMPLES, mixed_shards  # noqa: E402


def test_every_sample_reads_as_a_datasets_iterable(tmp_path: Path) -> None:
    out = mixed_shards(tmp_path)
    shards = sorted(str(p) for p in out.glob("*.tar"))

    from datasets import IterableDataset  # the documented line, verbatim below

    from data_tools.hf_datasets import hf_features, hf_samples

    ds = IterableDataset.from_generator(hf_samples, gen_kwargs={"shards": shards}, features=hf_features())

    got = list(ds)
    want = [(key, json.loads(m["json"]), m) for key, m in read_shards(str(out))]
    assert len(got) == len(want) == N_SAMPLES
    kinds = set()
    for row, (key, record, members) in zip(got, want):
        assert row["key"] == key and row["id"] == record["id"]
        assert json.loads(row["record"]) == record
        assert row["conversations"] == record["conversations"]
        assert row["media_formats"] == [m["field"] for m in record["media"]]
        by_kind = {k: [m["field"] for m in record["media"] if m["modality"] == k] for k in ("image", "video", "audio")}
        for field, img in zip(by_kind["image"], row["images"], strict=True):
            kinds.add(field.rsplit(".", 1)[-1])
            ref = Image.open(io.BytesIO(members[field]))
            assert img.format == ref.format and img.size == ref.size
            assert img.convert("RGB").tobytes() == ref.convert("RGB").tobytes()
        assert row["videos"] == [members[f] for f in by_kind["video"]]
        assert row["audios"] == [members[f] for f in by_kind["audio"]]
        kinds |= {"video"} if row["videos"] else set()
        kinds |= {"audio"} if row["audios"] else set()
        kinds |= {"text"} if not record["media"] else set()
    assert {"jpg", "png", "gif", "video", "audio", "text"} <= kinds, kinds
