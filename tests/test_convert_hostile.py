"""The converter against hostile and broken input (issue 15, items 1-4; docs/reliability.md).

Media paths that escape the media root, FIFOs and oversized files, records that crash the JSON
parser, decompression bombs with validation off, a rejection rate that must fail the run, and a
read-only output folder. Each case is a counted rejection or a clear error, never a crash or hang.
"""

from __future__ import annotations

import json
import os
import threading

from _convert_fixtures import Dataset, conv, image_bytes, png_bomb, shard_digests

from data_tools.convert_to_wds import EXIT_TOO_MANY_REJECTED, convert, main

SECRET = b"TOPSECRET root:x:0:0 do-not-copy\n"


def run(inputs, root, out, **kw):
    kw.setdefault("workers", 1)
    return convert(inputs, [root], out, progress=False, **kw)


def errors(out) -> dict[str, dict]:
    with open(os.path.join(out, "errors.jsonl"), encoding="utf-8") as f:
        return {e["id"]: e for e in map(json.loads, f)}


def test_media_paths_are_confined_to_the_root_regular_files_and_a_size_cap(tmp_path):
    base = tmp_path / "base"
    ds = Dataset(root=str(base / "media"))
    good = ds.add_media("coco/good.png", image_bytes("PNG"))
    big = ds.add_media("coco/big.png", image_bytes("PNG", size=(200, 200), seed=1) + b"\0" * 4096)
    (base / "secret").mkdir(parents=True)
    (base / "secret" / "x.png").write_bytes(image_bytes("PNG", seed=2))
    (base / "secret" / "passwd").write_bytes(SECRET)
    os.symlink(str(base / "secret" / "x.png"), os.path.join(ds.root, "coco", "link.png"))
    os.symlink("good.png", os.path.join(ds.root, "coco", "inside_link.png"))  # stays inside
    os.mkfifo(os.path.join(ds.root, "coco", "fifo.png"))
    depth = len(os.path.abspath(ds.root).strip("/").split("/"))
    up = "../" * (depth + 2)
    cases = {
        "dotdot": ("../secret/x.png", "outside_media_root"),
        "subdotdot": ("coco/../../secret/x.png", "outside_media_root"),
        "symlink_out": ("coco/link.png", "outside_media_root"),
        "devzero": (up + "dev/zero", "outside_media_root"),
        "passwd": ("../secret/passwd", "outside_media_root"),
        "fifo": ("coco/fifo.png", "not_a_regular_file"),
        "big": (big, "media_too_large"),
        "symlink_in": ("coco/inside_link.png", "ok"),
        "good": (good, "ok"),
    }
    for rid, (path, _) in cases.items():
        ds.add({"id": rid, "image": path, "conversations": conv("What?")})
    src = ds.write_jsonl(str(base / "in.jsonl"))
    out = str(base / "out")
    box: dict = {}
    worker = threading.Thread(target=lambda: box.update(s=run([src], ds.root, out, max_media_bytes=2000)), daemon=True)
    worker.start()
    worker.join(60)
    if worker.is_alive():  # unblock the FIFO reader so the test ends, then fail
        with open(os.path.join(ds.root, "coco", "fifo.png"), "wb") as w:
            w.write(b"x")
        worker.join(10)
        raise AssertionError("the conversion hung on a FIFO")
    summary, errs = box["s"], errors(out)
    for rid, (_, want) in cases.items():
        got = errs[rid]["reason"] if rid in errs else "ok"
        assert got == want, (rid, errs.get(rid))
    assert summary.converted == 2
    text = open(os.path.join(out, "errors.jsonl"), "rb").read()
    assert b"TOPSECRET" not in text and SECRET[:8].hex().encode() not in text


def test_a_record_that_breaks_the_parser_is_rejected_and_the_run_goes_on(tmp_path):
    ds = Dataset(root=str(tmp_path / "media"))
    good = ds.add_media("good.png", image_bytes("PNG"))
    conversations = json.dumps(conv("Hi?"))
    lines = [
        json.dumps({"id": "ok0", "image": good, "conversations": conv("A?")}),
        '{"id": "deep", "conversations": ' + "[" * 100_000 + "]" * 100_000 + "}",
        json.dumps({"id": "nul", "image": "a\0b.png", "conversations": conv("B?")}),
        '{"id": 1' + "0" * 5000 + ', "conversations": ' + conversations + "}",
        json.dumps({"id": "ok1", "image": good, "conversations": conv("C?")}),
    ]
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = str(tmp_path / "out")
    summary = run([str(src)], ds.root, out, shard_size=2)
    assert (summary.converted, summary.rejected) == (2, 3)
    with open(os.path.join(out, "errors.jsonl"), encoding="utf-8") as f:
        by_index = {e["index"]: e for e in map(json.loads, f)}
    assert by_index[1]["reason"] == "invalid_json" and "deeply" in by_index[1]["detail"]
    assert by_index[2]["reason"] == "bad_record" and "NUL" in by_index[2]["detail"]
    assert by_index[3]["reason"] == "invalid_json" and by_index[3]["id"] is None
    before = shard_digests(out)
    # --resume redoes a lost shard through the same records and gets the same bytes.
    os.unlink(os.path.join(out, "shard-000001.tar"))
    os.unlink(os.path.join(out, "index.json"))
    again = run([str(src)], ds.root, out, shard_size=2, resume=True)
    assert again.shards_resumed == 2 and (again.converted, again.rejected) == (2, 3)
    assert shard_digests(out) == before


def test_decompression_bomb_is_refused_from_its_header_even_without_validation(tmp_path):
    ds = Dataset(root=str(tmp_path / "media"))
    bomb = ds.add_media("bomb.png", png_bomb())
    big_ok = ds.add_media("fine.png", image_bytes("PNG", size=(64, 64)))
    ds.add({"id": "bomb", "image": bomb, "conversations": conv("Big?")})
    ds.add({"id": "fine", "image": big_ok, "conversations": conv("Small?")})
    src = ds.write_jsonl(str(tmp_path / "in.jsonl"))
    for validate in (False, True):
        out = str(tmp_path / f"out{validate}")
        summary = run([src], ds.root, out, validate_media=validate)
        assert summary.converted == 1
        err = errors(out)["bomb"]
        assert err["reason"] == "image_too_large" and "900000000" in err["detail"], err
    small_cap = run([src], ds.root, str(tmp_path / "cap"), validate_media=False, max_image_pixels=64 * 64 - 1)
    assert small_cap.converted == 0 and small_cap.rejected_by_reason == {"image_too_large": 2}


def test_too_many_rejections_fail_the_run_with_the_top_reasons(tmp_path, capsys):
    ds = Dataset(root=str(tmp_path / "media"))
    good = ds.add_media("a/good.png", image_bytes("PNG"))
    for i in range(12):
        ds.add({"id": f"img{i}", "image": good, "conversations": conv("What?")})
    ds.add({"id": "text", "conversations": conv("Hi?", placeholder="")})
    src = ds.write_jsonl(str(tmp_path / "in.jsonl"))
    # Forgetting --media-root: 12 of 13 records lose their image.
    rc = main([src, "--out", str(tmp_path / "o1"), "--workers", "1", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == EXIT_TOO_MANY_REJECTED, err
    assert "12 of 13 records rejected" in err and "missing_media 12" in err
    # The same data with its media root passes; a permissive rate lets the bad run pass too.
    assert main([src, "--media-root", ds.root, "--out", str(tmp_path / "o2"), "--workers", "1", "--no-progress"]) == 0
    assert main([src, "--out", str(tmp_path / "o3"), "--workers", "1", "--no-progress", "--max-reject-rate", "1"]) == 0


def test_read_only_output_folder_is_a_clear_error(tmp_path, capsys):
    ds = Dataset(root=str(tmp_path / "media"))
    ds.add({"id": "text", "conversations": conv("Hi?", placeholder="")})
    src = ds.write_jsonl(str(tmp_path / "in.jsonl"))
    if os.geteuid() == 0:  # root ignores permission bits: use a file system that refuses writes
        out = "/sys/llava_wb_readonly_test/out"
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        out = str(ro / "out")
    rc = main([src, "--out", out, "--workers", "1", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot be written" in err and out in err and "Traceback" not in err


def test_folder_checks_are_cached_per_run_but_never_let_a_path_escape(tmp_path):
    # read_first checks each folder once and then opens files relative to its descriptor.
    from data_tools.media import MediaProblem, read_first, reset_decode_cache

    reset_decode_cache()
    root = tmp_path / "media"
    (root / "coco").mkdir(parents=True)
    (root / "coco" / "a.png").write_bytes(b"A" * 10)
    (root / "coco" / "b.png").write_bytes(b"B" * 10)
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "a.png").write_bytes(SECRET)
    (tmp_path / "secret" / "b.png").write_bytes(SECRET)

    def reason(path: str) -> str:
        try:
            return "ok:" + read_first(path, [str(root)])[1].decode()[:1]
        except MediaProblem as exc:
            assert "TOPSECRET" not in exc.detail
            return exc.reason

    assert reason("coco/a.png") == "ok:A"  # coco/ is now checked and held open
    # A symlinked folder created inside the root during the run, pointing outside: refused.
    os.symlink(str(tmp_path / "secret"), str(root / "late"))
    assert reason("late/a.png") == "outside_media_root"
    # The checked folder replaced by a symlink to outside: reads stay in the folder that was checked.
    os.rename(root / "coco", tmp_path / "moved")
    os.symlink(str(tmp_path / "secret"), str(root / "coco"))
    assert reason("coco/b.png") == "ok:B"
    # A new run checks afresh and refuses the symlinked folder.
    reset_decode_cache()
    assert reason("coco/b.png") == "outside_media_root"
    # A symlink as the last part (refused by O_NOFOLLOW, then resolved and confined).
    (root / "in").mkdir()
    os.symlink(str(tmp_path / "secret" / "a.png"), str(root / "in" / "out.png"))
    os.symlink(str(tmp_path / "moved" / "a.png"), str(root / "in" / "also_out.png"))
    (root / "in" / "real.png").write_bytes(b"R")
    os.symlink("real.png", str(root / "in" / "inside.png"))
    assert reason("in/out.png") == "outside_media_root"
    assert reason("in/also_out.png") == "outside_media_root"
    assert reason("in/inside.png") == "ok:R"
    # Paths that are not plain (., .., //) take the full realpath road and are judged the same.
    assert reason("in/./inside.png") == "ok:R"
    assert reason("in//real.png") == "ok:R"
    assert reason("in/../../secret/a.png") == "outside_media_root"
    assert reason("in/nothing.png") == "missing_media"
    assert reason("in") == "missing_media"  # a folder is not a media file
    reset_decode_cache()


def test_pixel_cap_applies_with_full_validation_and_a_cached_decode(tmp_path):
    ds = Dataset(root=str(tmp_path / "media"))
    for fmt in ("PNG", "JPEG", "GIF"):
        path = ds.add_media(f"img.{fmt.lower()}", image_bytes(fmt, size=(64, 64)))
        ds.add({"id": fmt, "image": path, "conversations": conv("What?")})
    src = ds.write_jsonl(str(tmp_path / "in.jsonl"))
    ok = run([src], ds.root, str(tmp_path / "ok"), validate_media=True)
    assert ok.converted == 3
    # Same process, same bytes (already decoded once), a lower cap: refused, not served from cache.
    capped = run([src], ds.root, str(tmp_path / "cap"), validate_media=True, max_image_pixels=64 * 64 - 1)
    assert capped.converted == 0 and capped.rejected_by_reason == {"image_too_large": 3}
    assert "4096 pixels" in errors(str(tmp_path / "cap"))["JPEG"]["detail"]
    # Without a reset in between (one worker, two caps): the cache is keyed by the cap too.
    from data_tools.media import MediaProblem, check_image_decodes

    png = image_bytes("PNG", size=(64, 64), seed=3)
    check_image_decodes(png, "png", "x.png", max_pixels=64 * 64)
    try:
        check_image_decodes(png, "png", "x.png", max_pixels=64 * 64 - 1)
    except MediaProblem as exc:
        assert exc.reason == "image_too_large"
    else:
        raise AssertionError("a cached decode skipped the pixel cap")
