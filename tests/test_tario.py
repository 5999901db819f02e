"""The shard reader's fast USTAR path reads exactly what the webdataset/tarfile path reads."""

from __future__ import annotations

import io
import tarfile

import pytest
from shardkit import write_shards

from llava_wb.data.tario import ShardError, _iter_shard_webdataset, iter_shard


def both(path):
    def run(it):
        got, err = [], None
        try:
            for s in it:
                got.append(s)
        except ShardError as e:
            err = (e.reason, e.samples_read)
        return got, err

    return run(iter_shard(path)), run(_iter_shard_webdataset(path))


def write_tar(path, members, fmt=tarfile.USTAR_FORMAT):
    with tarfile.open(path, "w", format=fmt) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


MEMBERS = [("a.json", b"{}"), ("a.jpg", b"x" * 700), ("b.json", b"{}"), ("b.0.png", b"y" * 512), ("c.json", b"{}")]


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_fast_path_equals_tarfile_path(tmp_path, fmt):
    path = str(tmp_path / "s.tar")
    members = MEMBERS + [("dir", None), ("é-ü.json", b"{}"), ("sub/e.txt", b"t")]
    if fmt != tarfile.USTAR_FORMAT:  # names over 100 bytes need GNU or pax headers
        members.append(("d" * 120 + ".json", b"{}"))
    write_tar(path, members, fmt)
    (fast, e1), (ref, e2) = both(path)
    assert fast == ref and e1 is e2 is None
    assert [s["__key__"] for s in fast][:3] == ["a", "b", "c"]


def test_converter_style_shards_and_truncation_agree(tmp_path):
    (path,) = write_shards(str(tmp_path / "s"), [12])
    (fast, e1), (ref, e2) = both(path)
    assert fast == ref and len(fast) == 12 and e1 is e2 is None
    data = open(path, "rb").read()
    errors = []
    for cut in range(600, len(data), max(997, len(data) // 25)):
        open(path, "wb").write(data[:cut])
        (fast, e1), (ref, e2) = both(path)
        assert fast == ref and e1 == e2, cut
        errors.append(e1)
    assert sum(e is not None and e[0] == "truncated_shard" for e in errors) > len(errors) // 2
