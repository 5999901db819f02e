"""Tests of the LLaVA -> WebDataset converter (data_tools.convert_to_wds and its helper modules).

Datasets are built on the fly (tests/_convert_fixtures.py). Covered: round trip with byte-identical
media, the fault matrix of docs/data_format.md, determinism across worker counts and input
formats, the streaming reader, kill -9 then --resume, and --verify.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time

import psutil
import pytest
import webdataset
from _convert_fixtures import fault_dataset, plain_dataset, read_shards, shard_digests
from hypothesis import given, settings
from hypothesis import strategies as st

from data_tools.convert_to_wds import ConvertSummary, convert, main
from data_tools.journal import ResumeError
from data_tools.media import detect_format
from data_tools.naive_convert import create_sharded_tars_image
from data_tools.records import InputError, iter_records
from data_tools.validate import make_key
from data_tools.verify import verify_output

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(inputs, root, out, **kw) -> ConvertSummary:
    kw.setdefault("workers", 1)
    return convert(inputs, [root], out, progress=False, **kw)


def errors(out) -> dict[int, dict]:
    with open(os.path.join(out, "errors.jsonl"), encoding="utf-8") as f:
        return {e["index"]: e for e in map(json.loads, f)}


@pytest.fixture(scope="module")
def faults(tmp_path_factory):
    base = tmp_path_factory.mktemp("faults")
    ds = fault_dataset(str(base / "media"))
    src = ds.write_json(str(base / "llava.json"))
    out = str(base / "out")
    return ds, out, run([src], ds.root, out, shard_size=5, verify=True)


def test_fault_matrix_outcomes(faults):
    ds, out, summary = faults
    errs = errors(out)
    assert summary.converted + summary.rejected == summary.records == len(ds.records)
    for i, want in enumerate(ds.expect):
        got = errs[i]["reason"] if i in errs else "ok"
        assert got == want, (i, ds.records[i], errs.get(i))
    assert errs[1]["id"] == "missing" and "coco/nope.jpg not found under" in errs[1]["detail"]
    assert "truncated" in errs[2]["detail"] and errs[11]["id"] is None
    assert summary.verify is not None and summary.verify.ok, summary.verify.format()
    assert summary.fixes == {"converted_role_names": 1, "dropped_leading_gpt_turn": 1}
    assert summary.by_modality == {"audio": 1, "image": 9, "text": 2}


def test_round_trip_tarfile_bytes_and_text(faults):
    ds, out, _ = faults
    samples = read_shards(out)
    kept = [i for i, e in enumerate(ds.expect) if e == "ok"]
    assert [int(k.split("_")[0]) for k, _ in samples] == kept
    for key, fields in samples:
        meta = json.loads(fields["json"])
        src = ds.records[meta["index"]]
        assert key == make_key(meta["index"], src["id"]) and meta["id"] == src["id"]
        assert "." not in key and "/" not in key
        want_conv = src["conversations"]
        if meta.get("fixes") == ["dropped_leading_gpt_turn"]:
            want_conv = want_conv[1:]
        assert [t["value"] for t in meta["conversations"]] == [t["value"] for t in want_conv]
        assert sorted(fields) == sorted(["json"] + [m["field"] for m in meta["media"]])
        for m in meta["media"]:
            with open(os.path.join(ds.root, m["path"]), "rb") as f:
                assert fields[m["field"]] == f.read()
    by_id = {json.loads(f["json"])["id"]: (k, f) for k, f in samples}
    assert "gif" in by_id["gif"][1] and "jpg" not in by_id["gif"][1]
    assert "png" in by_id["gray"][1] and "png" in by_id["rgba"][1]
    assert by_id["B00.0Q/x.y/ünï中"][0] == "000000006_B00_0Q_x_y__n__"
    assert [m["field"] for m in json.loads(by_id["multi"][1]["json"])["media"]] == ["jpg", "1.png"]
    assert json.loads(by_id["roles"][1]["json"])["conversations"][0]["from"] == "human"
    text = json.loads(by_id["text-only"][1]["json"])
    assert text["media"] == [] and text["model"] == "" and set(by_id["text-only"][1]) == {"json"}
    assert "wav" in by_id["audio"][1]
    dups = [k for k, f in samples if json.loads(f["json"])["id"] == "dup"]
    assert len(dups) == 2 and dups[0] != dups[1]


def test_round_trip_through_webdataset(faults):
    _, out, _ = faults
    want = {k: f for k, f in read_shards(out)}
    urls = [os.path.join(out, s["name"]) for s in json.load(open(os.path.join(out, "index.json")))["shards"]]
    got = {}
    for sample in webdataset.WebDataset(urls, shardshuffle=False, empty_check=False):
        got[sample["__key__"]] = {k: v for k, v in sample.items() if not k.startswith("__")}
    assert got == want


def test_shards_identical_for_any_worker_count(tmp_path):
    ds = plain_dataset(str(tmp_path / "media"), 150)
    src = ds.write_json(str(tmp_path / "d.json"))
    one = run([src], ds.root, tmp_path / "w1", shard_size=16, workers=1)
    two = run([src], ds.root, tmp_path / "w2", shard_size=16, workers=2)
    assert shard_digests(tmp_path / "w1") == shard_digests(tmp_path / "w2")
    assert len(shard_digests(tmp_path / "w1")) == 10 and one.converted == two.converted == 150
    assert open(tmp_path / "w1" / "errors.jsonl").read() == open(tmp_path / "w2" / "errors.jsonl").read()


def test_json_and_jsonl_inputs_give_same_shards(tmp_path):
    ds = fault_dataset(str(tmp_path / "media"))
    os.makedirs(tmp_path / "a"), os.makedirs(tmp_path / "b")
    as_json = ds.write_json(str(tmp_path / "a" / "data.json"))
    as_jsonl = ds.write_jsonl(str(tmp_path / "b" / "data.json"))  # JSONL content, same base name
    run([as_json], ds.root, tmp_path / "o1", shard_size=4)
    run([as_jsonl], ds.root, tmp_path / "o2", shard_size=4)
    assert shard_digests(tmp_path / "o1") == shard_digests(tmp_path / "o2")
    assert errors(tmp_path / "o1") == errors(tmp_path / "o2")


def test_jsonl_bad_lines_and_multiple_inputs_and_roots(tmp_path):
    ds = plain_dataset(str(tmp_path / "r1"), 3)
    other = plain_dataset(str(tmp_path / "r2"), 3, size=(8, 8))  # same paths, other bytes
    first = ds.write_jsonl(str(tmp_path / "a.jsonl"))
    with open(tmp_path / "b.jsonl", "w") as f:
        f.write('\n{"id": "x", "conversations": [\n\n[1, 2]\n' + json.dumps(ds.records[0]) + "\n")
    s = convert([first, str(tmp_path / "b.jsonl")], [ds.root, other.root], tmp_path / "o", workers=1, progress=False)
    errs = errors(tmp_path / "o")
    assert s.records == 6 and s.converted == 4
    assert errs[3]["reason"] == "invalid_json" and errs[3]["detail"].startswith("line 2:")
    assert errs[3]["source"] == "b.jsonl" and errs[4]["reason"] == "bad_record"
    samples = dict(read_shards(tmp_path / "o"))
    assert samples[make_key(5, "rec-0")]["jpg"] == open(os.path.join(ds.root, ds.records[0]["image"]), "rb").read()


def test_validation_off_checks_magic_bytes_only(tmp_path):
    ds = fault_dataset(str(tmp_path / "media"))
    src = ds.write_json(str(tmp_path / "d.json"))
    s = run([src], ds.root, tmp_path / "o", validate_media=False)
    assert "corrupt_media" not in s.rejected_by_reason and s.rejected_by_reason["unsupported_media"] == 2
    assert s.converted == ds.expect.count("ok") + 1  # the truncated JPEG is kept


def test_json_array_syntax_error_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('[\n {"id": 1},\n {"id": 2,, "x": 1},\n {"id": 3}\n]')
    for chunk in (3, 1 << 20):
        with pytest.raises(InputError, match=r"bad\.json: invalid JSON .* at line 3 column 11"):
            list(iter_records([str(bad)], chunk_chars=chunk))
    (tmp_path / "open.json").write_text('[{"id": 1}, {"id": 2}')
    with pytest.raises(InputError, match="not closed"):
        list(iter_records([str(tmp_path / "open.json")], chunk_chars=4))


TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)))  # no lone surrogates
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(TEXT, kids, max_size=4),
    max_leaves=12,
)


@settings(max_examples=60, deadline=None)
@given(st.lists(JSON_VALUES, max_size=6), st.integers(1, 9), st.booleans())
def test_streaming_array_reader_matches_json_load(tmp_path_factory, values, chunk, indent):
    path = tmp_path_factory.mktemp("stream") / "v.json"
    path.write_text(json.dumps(values, indent=1 if indent else None, ensure_ascii=False), encoding="utf-8")
    recs = list(iter_records([str(path)], chunk_chars=chunk))
    assert [json.loads(r.text) for r in recs] == values
    assert [r.index for r in recs] == list(range(len(values)))


def test_detect_format_by_magic_bytes():
    assert detect_format(b"GIF89a" + b"\0" * 20) == "gif"
    assert detect_format(b"RIFF\0\0\0\0WEBPVP8 ") == "webp"
    assert detect_format(b"RIFF\0\0\0\0AVI LIST") == "avi"
    assert detect_format(b"\0\0\0\x18ftypisom\0\0\0\0") == "mp4"
    assert detect_format(b"\0\0\0\x18ftypheic\0\0\0\0") is None
    assert detect_format(b"\x1a\x45\xdf\xa3\x9f\x42\x82\x84webm") == "webm"
    assert detect_format(b"\x1a\x45\xdf\xa3\x9f\x42\x82\x88matroska") == "mkv"
    assert detect_format(b"ID3\x04\0") == "mp3" and detect_format(b"\xff\xfb\x90\x64") == "mp3"
    assert detect_format(b"fLaC\0") == "flac" and detect_format(b"OggS\0") == "ogg"
    assert detect_format(b"\xff\xd8\xff\xe0") == "jpeg" and detect_format(b"hello") is None


def test_existing_output_needs_resume_or_overwrite(tmp_path):
    ds = plain_dataset(str(tmp_path / "media"), 10)
    src = ds.write_json(str(tmp_path / "d.json"))
    run([src], ds.root, tmp_path / "o", shard_size=4)
    with pytest.raises(ResumeError, match="--resume .* --overwrite"):
        run([src], ds.root, tmp_path / "o", shard_size=4)
    with pytest.raises(ResumeError, match="shard_size"):
        run([src], ds.root, tmp_path / "o", shard_size=5, resume=True)
    s = run([src], ds.root, tmp_path / "o", shard_size=5, overwrite=True)
    assert s.shards == 2 and sorted(shard_digests(tmp_path / "o")) == ["shard-000000.tar", "shard-000001.tar"]


def test_resume_redoes_damaged_torn_and_partial_work(tmp_path):
    ds = plain_dataset(str(tmp_path / "media"), 40)
    src = ds.write_json(str(tmp_path / "d.json"))
    out = tmp_path / "o"
    run([src], ds.root, out, shard_size=8)
    want = shard_digests(out)
    os.remove(out / "shard-000004.tar")
    with open(out / "shard-000001.tar", "r+b") as f:  # same size, other bytes
        f.seek(700), f.write(b"XX")
    (out / "shard-000002.tar.tmp-999").write_bytes(b"partial")
    os.remove(out / "index.json")
    with open(out / "progress.jsonl", "a") as f:
        f.write('{"type": "shard", "shard": 3, "na')  # torn by a kill
    s = run([src], ds.root, out, shard_size=8, resume=True)
    assert shard_digests(out) == want and s.shards_resumed == 3 and s.converted == 40  # 0, 2, 3
    assert not [n for n in os.listdir(out) if ".tmp" in n]
    assert verify_output(str(out)).ok


def _start_cli(src, root, out, workers=2):
    cmd = [
        sys.executable,
        "-m",
        "data_tools.convert_to_wds",
        src,
        "--media-root",
        root,
        "--out",
        out,
        "--shard-size",
        "40",
        "--workers",
        str(workers),
        "--no-progress",
    ]
    env = {**os.environ, "PYTHONPATH": ROOT}
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _wait_for_shards(out, proc, n=1, timeout=60.0) -> int:
    """Poll progress.jsonl until ``n`` shards are journaled (timeout: test failure, not timing)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        path = os.path.join(out, "progress.jsonl")
        if os.path.exists(path):
            done = open(path).read().count('"type": "shard"')
            if done >= n:
                return done
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.005)
    raise AssertionError("converter journaled no shard in time")


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """6000 records over 40 images: a few seconds of conversion, and its uninterrupted output."""
    base = tmp_path_factory.mktemp("big")
    ds = plain_dataset(str(base / "media"), 6000, distinct_images=40, size=(160, 120))
    src = ds.write_json(str(base / "d.json"))
    ref = str(base / "ref")
    convert([src], [ds.root], ref, shard_size=40, workers=2, progress=False)
    return src, ds.root, ref, base


@pytest.mark.slow
@pytest.mark.parametrize("victim", ["group", "worker"])
def test_kill_9_then_resume_equals_uninterrupted(big, victim):
    src, root, ref, base = big
    out = str(base / f"killed-{victim}")
    proc = _start_cli(src, root, out)
    _wait_for_shards(out, proc, n=10)
    if victim == "group":
        os.killpg(proc.pid, signal.SIGKILL)
    else:  # kill one worker process only: the converter must stop with a clear error
        parent = psutil.Process(proc.pid)
        workers = [c for c in parent.children() if c.cmdline() == parent.cmdline()]  # forked workers
        workers[0].send_signal(signal.SIGKILL)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode != 0
    if victim == "worker":
        assert "failed" in stderr and "--resume" in stderr, stderr
    assert not os.path.exists(os.path.join(out, "index.json")), "finished before the kill"
    s = convert([src], [root], out, shard_size=40, workers=2, resume=True, progress=False)
    print(f"{victim}: {s.shards_resumed} of 150 shards were finished before the kill")
    assert 10 <= s.shards_resumed < 150
    assert shard_digests(out) == shard_digests(ref)
    assert open(os.path.join(out, "errors.jsonl")).read() == open(os.path.join(ref, "errors.jsonl")).read()
    keys = [k for k, _ in read_shards(out)]
    assert len(keys) == len(set(keys)) == s.converted == 6000


def test_verify_passes_then_reports_damage(tmp_path, capsys):
    ds = fault_dataset(str(tmp_path / "media"))
    src = ds.write_json(str(tmp_path / "d.json"))
    out = str(tmp_path / "o")
    assert (
        main(
            [
                src,
                "--media-root",
                ds.root,
                "--out",
                out,
                "--shard-size",
                "6",
                "--workers",
                "1",
                "--no-progress",
                "--verify",
                "--max-reject-rate",
                "1",
            ]
        )
        == 0
    )  # half is rejected
    printed = capsys.readouterr().out
    assert "converted 12 / 24" in printed and "records/s" in printed and ": OK" in printed
    assert main(["--verify-only", out]) == 0
    path = os.path.join(out, "shard-000001.tar")
    data = open(path, "rb").read()
    open(path, "wb").write(data[:1000])
    os.remove(os.path.join(out, "shard-000002.tar"))
    last = os.path.join(out, "shard-000003.tar")  # cut exactly after a member: tarfile sees no error
    with tarfile.open(last) as tar:
        cut = next(m.offset_data + m.size for m in tar if m.name.endswith(".json"))
    os.truncate(last, (cut + 511) // 512 * 512)
    report = verify_output(out)
    text = report.format()
    assert not report.ok and "shard-000001.tar: sha256 differs" in text
    assert (
        "shard-000001.tar: truncated or damaged" in text
        and "shard-000002.tar: listed in index.json but missing" in text
    )
    assert "shard-000003.tar: truncated or damaged after 1 complete samples (no end-of-archive marker)" in text
    assert main(["--verify-only", out]) == 1


def test_cli_usage_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--verify-only", str(tmp_path), "x.json"])
    with pytest.raises(SystemExit):
        main([])
    assert main([str(tmp_path / "nope.json"), "--out", str(tmp_path / "o")]) == 2
    assert "input file does not exist" in capsys.readouterr().err


def test_naive_baseline_runs(tmp_path):
    ds = plain_dataset(str(tmp_path / "media"), 12)
    ds.records = [r for r in ds.records if "image" in r]  # the baseline cannot do text-only records
    src = ds.write_json(str(tmp_path / "d.json"))
    assert create_sharded_tars_image(src, ds.root, str(tmp_path / "n"), shard_size=5) == len(ds.records)
    assert sorted(os.listdir(tmp_path / "n")) == ["shard-00000.tar", "shard-00001.tar"]
