"""Video decoder comparison: decord2 vs the original decord 0.6.0 vs PyAV (speed, correctness, wheels).

    python -m benchmarks.video_decoders [--quick] [--out DIR] [--repeats N]

The question (issue "Evaluate decord2 against decord and PyAV and pick on evidence"): which
``data.video.backend`` should be the default. For each backend, ``llava_wb.data.video.read_video``
samples 8, 16 and 32 frames uniformly from each test clip, decoding from the mp4 bytes every time,
one decoder thread; the table gives the median over repeats.

* Clips: deterministic H.264 mp4s made with ``encode_mp4`` (crf 18, preset veryfast, 30 fps):
  a frame-index-dependent pattern (moving gradients, a moving square, an 8-bit barcode of the
  index), 336x336 and 640x360, keyframe every 30 frames, every 12 frames, or only the first.
* Correctness: every sampled frame is compared with a reference, PyAV decoding the whole clip
  sequentially: which reference frame it is closest to (must be the requested index) and the
  max / mean absolute pixel difference to the requested one (0-255 levels).
* decord 0.6.0 and decord2 share the import name ``decord``, so 0.6.0 is installed on its own
  into ``runs/bench_envs/decord060`` (``pip install --target ... decord==0.6.0 --no-deps``; done
  here when the folder is missing) and measured in a subprocess whose ``PYTHONPATH`` starts with
  that folder; the subprocess prints the version and module file it imported.
* Padded rows: which frame widths (16..256 px, step 8) make each decord version return rows padded
  to a wider stride (``read_video`` repairs them; see ``llava_wb/data/video.py``).
* Wheels: from PyPI's JSON API (latest release of each package); "not checked" without network.

``part_decoders(quick)`` returns the section and raw numbers; ``main`` writes
``benchmarks/results/video_decoders.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import Section, machine_info, repeat_timed, results_dir, write_results

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "runs" / "bench_cache" / "video_decoders"
ENV060 = ROOT / "runs" / "bench_envs" / "decord060"
COUNTS = (8, 16, 32)
# name, (width, height), frames, keyframe interval (None: libx264's default 250, i.e. only frame 0)
CLIPS = [
    ("336x336 96f gop30", (336, 336), 96, 30),
    ("640x360 128f gop12", (640, 360), 128, 12),
    ("640x360 128f 1 keyframe", (640, 360), 128, None),
]
QUICK_CLIPS = [("336x336 24f gop12", (336, 336), 24, 12), ("640x360 24f 1 keyframe", (640, 360), 24, None)]
PYPI_PACKAGES = ("decord2", "decord", "av")


# ----------------------------------------------------------------------------- clips
def pattern(i: int, width: int, height: int) -> np.ndarray:
    """Frame ``i``: gradients moving with ``i``, a white square moving with ``i``, ``i`` in 8 bits at the top."""
    y, x = np.mgrid[0:height, 0:width]
    img = np.stack([(x + 4 * i) % 256, (2 * y + 3 * i) % 256, ((x + y) // 2 + 6 * i) % 256], axis=-1).astype(np.uint8)
    side = min(width, height) // 6
    sx, sy = (9 * i) % (width - side), (5 * i) % (height - side)
    img[sy : sy + side, sx : sx + side] = 255
    bar = width // 8
    for b in range(8):
        img[:24, b * bar : (b + 1) * bar] = 255 if (i >> b) & 1 else 0
    return img


def make_clip(size: tuple[int, int], frames: int, gop: int | None) -> bytes:
    from llava_wb.data.video import encode_mp4

    w, h = size
    return encode_mp4(np.stack([pattern(i, w, h) for i in range(frames)]), fps=30, crf=18, gop=gop)


def write_clips(clips: Sequence[tuple], folder: Path) -> list[dict[str, Any]]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for k, (name, size, frames, gop) in enumerate(clips):
        path = folder / f"clip{k}_{size[0]}x{size[1]}_{frames}_{gop or 'none'}.mp4"
        if not path.is_file():
            path.write_bytes(make_clip(size, frames, gop))
        out.append(
            {
                "name": name,
                "path": str(path),
                "size": list(size),
                "frames": frames,
                "gop": gop,
                "bytes": path.stat().st_size,
            }
        )
    return out


def reference_frames(data: bytes) -> np.ndarray:
    """Every frame, PyAV sequential decode (one thread): the correctness reference."""
    import io

    import av

    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        stream.thread_count = 1
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])


# ----------------------------------------------------------------------------- measurement
def padded_row_widths() -> list[int]:
    """Widths (16..256, step 8; height 32) at which ``decord`` (whichever is imported) returns padded rows."""
    import io

    import decord

    from llava_wb.data.video import encode_mp4

    bad = []
    for w in range(16, 257, 8):
        vr = decord.VideoReader(
            io.BytesIO(encode_mp4(np.zeros((2, 32, w, 3), np.uint8), fps=2)), ctx=decord.cpu(0), num_threads=1
        )
        if vr[0].shape[-1] != 3:
            bad.append(w)
    return bad


def measure(backend: str, clips: list[dict[str, Any]], counts: Sequence[int], repeats: int) -> dict[str, Any]:
    """Speed and correctness of ``read_video(backend=...)`` on each clip and frame count."""
    from llava_wb.data.video import read_video

    results: dict[str, Any] = {}
    for clip in clips:
        data = Path(clip["path"]).read_bytes()
        ref = reference_frames(data)
        small = ref[:, ::8, ::8].astype(np.int16)
        for n in counts:
            frames, info = read_video(data, num_frames=n, backend=backend)  # warm-up, and the checked output
            requested = info["indices"]
            nearest = [int(np.abs(small - f[::8, ::8].astype(np.int16)).mean(axis=(1, 2, 3)).argmin()) for f in frames]
            diff = np.abs(frames.astype(np.int16) - ref[requested].astype(np.int16))
            timing = repeat_timed(lambda: len(read_video(data, num_frames=n, backend=backend)[0]), repeats)
            results[f"{clip['name']}|{n}"] = {
                "clip": clip["name"],
                "num_frames": n,
                "requested": requested,
                "nearest_reference": nearest,
                "indices_ok": nearest == requested,
                "frames_total": info["frames_total"],
                "fps": info["fps"],
                "max_abs_diff": int(diff.max()),
                "mean_abs_diff": float(diff.mean()),
                "timing": timing.as_dict(),
            }
    return results


def _worker(args: argparse.Namespace) -> None:
    """Subprocess entry: measure whichever ``decord`` the PYTHONPATH gives (decord 0.6.0)."""
    import decord

    clips = json.loads(Path(args.clips).read_text(encoding="utf-8"))
    out = {
        "version": decord.__version__,
        "module_file": decord.__file__,
        "padded_row_widths": padded_row_widths(),
        "results": measure("decord", clips, [int(c) for c in args.counts.split(",")], args.repeats),
    }
    print(f"decord {decord.__version__} from {decord.__file__}", file=sys.stderr)
    Path(args.worker_out).write_text(json.dumps(out), encoding="utf-8")


def ensure_decord060() -> str | None:
    """Install decord 0.6.0 into ``ENV060`` if missing; return None, or why it is not there."""
    if (ENV060 / "decord" / "__init__.py").is_file():
        return None
    print(
        f"installing decord==0.6.0 into {ENV060} (separate folder: decord2 has the same import name)",
        file=sys.stderr,
        flush=True,
    )
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--target",
        str(ENV060),
        "decord==0.6.0",
        "--no-deps",
        "--disable-pip-version-check",
        "--quiet",
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.SubprocessError) as e:
        return f"pip install decord==0.6.0 failed to run: {e}"
    if proc.returncode != 0:
        tail = " ".join(proc.stderr.strip().splitlines()[-2:])[-300:]
        return f"pip install --target {ENV060} decord==0.6.0 failed (exit {proc.returncode}): {tail}"
    return None


def measure_decord060(clips_file: Path, counts: Sequence[int], repeats: int) -> dict[str, Any]:
    problem = ensure_decord060()
    if problem:
        print(f"decord 0.6.0 not measured: {problem}", file=sys.stderr)
        return {"error": problem}
    out_file = clips_file.with_name("decord060.json")
    paths = [str(ENV060), str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.video_decoders",
        "--worker",
        "--clips",
        str(clips_file),
        "--worker-out",
        str(out_file),
        "--counts",
        ",".join(map(str, counts)),
        "--repeats",
        str(repeats),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        return {"error": f"worker exited {proc.returncode}: {proc.stderr.strip()[-500:]}"}
    raw = json.loads(out_file.read_text(encoding="utf-8"))
    if raw["version"] != "0.6.0" or not Path(raw["module_file"]).resolve().is_relative_to(ENV060.resolve()):
        return {"error": f"the worker imported decord {raw['version']} from {raw['module_file']}, not 0.6.0"}
    return raw


# ----------------------------------------------------------------------------- wheels
PLATFORMS = {
    "Linux x86_64": ("linux", "x86_64"),
    "Linux aarch64": ("linux", "aarch64"),
    "macOS arm64": ("macosx", "arm64"),
    "macOS x86_64": ("macosx", "x86_64"),
    "Windows x86_64": ("win_amd64", ""),
}


def _pypi(pkg: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"https://pypi.org/pypi/{pkg}/json", timeout=15) as r:
        return json.load(r)


def _wheel_summary(meta: dict[str, Any], version: str) -> dict[str, Any]:
    """One release from PyPI's project JSON: per platform, the Python tags it has wheels for."""
    files = meta["releases"].get(version) or (meta["urls"] if version == meta["info"]["version"] else [])
    if not files:
        return {"error": f"not checked (PyPI lists no files for {version})"}
    tags = [f["filename"][:-4].split("-")[-3:] for f in files if f["packagetype"] == "bdist_wheel"]
    platforms: dict[str, list[str]] = {}
    for label, (os_key, arch) in PLATFORMS.items():
        found = {
            py + ("-abi3" if abi == "abi3" else "")
            for py, abi, plat in tags
            if os_key in plat and (arch in plat or (os_key == "macosx" and "universal2" in plat))
        }
        platforms[label] = sorted(found, key=lambda s: (len(s), s))
    requires = {f.get("requires_python") for f in files} - {None, ""}
    return {
        "version": version,
        "released": min(f["upload_time"][:10] for f in files),
        "requires_python": ", ".join(sorted(requires)) or None,
        "wheels": len(tags),
        "platforms": platforms,
        "sdist": any(f["packagetype"] == "sdist" for f in files),
    }


def _installed(pkg: str) -> str | None:
    from importlib import metadata

    if pkg == "decord":
        return "0.6.0"  # the one measured, from ENV060
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def wheel_facts() -> dict[str, Any]:
    """Wheel facts of the latest release of each package, and of the measured one when older."""
    facts: dict[str, Any] = {}
    for pkg in PYPI_PACKAGES:
        try:
            meta = _pypi(pkg)
        except Exception as e:  # offline, proxy, API change: say so instead of failing the benchmark
            facts[pkg] = {"error": f"not checked ({type(e).__name__}: {str(e)[:120]})"}
            continue
        latest, measured = meta["info"]["version"], _installed(pkg)
        facts[pkg] = _wheel_summary(meta, latest)
        if measured and measured != latest:
            facts[f"{pkg} (measured)"] = _wheel_summary(meta, measured)
    return facts


def _wheel_line(pkg: str, f: dict[str, Any]) -> str:
    if "error" in f:
        return f"{pkg}: {f['error']}"
    pkg = pkg.split(" ")[0]
    plats = "; ".join(f"{label} {', '.join(tags) if tags else 'NONE'}" for label, tags in f["platforms"].items())
    return (
        f"{pkg} {f['version']} (released {f['released']}, requires Python {f['requires_python'] or 'unstated'}, "
        f"sdist {'yes' if f['sdist'] else 'no'}): {plats}"
    )


# ----------------------------------------------------------------------------- report
def _geomean(xs: list[float]) -> float:
    return float(np.exp(np.mean(np.log(xs)))) if xs else float("nan")


def part_decoders(quick: bool, repeats: int | None = None) -> tuple[Section, dict[str, Any]]:
    import av

    repeats = repeats or (1 if quick else 9)
    counts = COUNTS[:2] if quick else COUNTS
    cache = CACHE / ("quick" if quick else "full")
    clips = write_clips(QUICK_CLIPS if quick else CLIPS, cache)
    clips_file = cache / "clips.json"
    clips_file.write_text(json.dumps(clips), encoding="utf-8")

    backends: dict[str, dict[str, Any]] = {}
    try:
        import decord

        backends[f"decord2 {decord.__version__}"] = {
            "results": measure("decord", clips, counts, repeats),
            "module_file": decord.__file__,
            "padded_row_widths": padded_row_widths(),
        }
    except ImportError as e:
        backends["decord2"] = {"error": f"not installed ({e})"}
    backends[f"pyav {av.__version__}"] = {"results": measure("pyav", clips, counts, repeats)}
    backends["decord 0.6.0"] = measure_decord060(clips_file, counts, repeats)

    rows, notes = [], []
    for name, b in backends.items():
        if "error" in b:
            rows.append([name, "-", "-", "not measured", "-", "-", "-", "-", "-"])
            notes.append(f"{name}: not measured: {b['error']}")
            continue
        for r in b["results"].values():
            t = r["timing"]
            rows.append(
                [
                    name,
                    r["clip"],
                    r["num_frames"],
                    f"{1e3 * t['median_seconds']:.1f}",
                    round(t["median_rate"], 1),
                    round(t["median_cpu_rate"], 1),
                    "yes" if r["indices_ok"] else f"NO {r['nearest_reference']} vs {r['requested']}",
                    r["max_abs_diff"],
                    f"{r['mean_abs_diff']:.3f}",
                ]
            )
    measured = {n: b for n, b in backends.items() if "error" not in b}
    summary: dict[str, Any] = {}
    names = list(measured)
    if names:
        base = names[0]  # decord2
        for other in names[1:]:
            mine, theirs = measured[base]["results"], measured[other]["results"]
            ratios = [
                mine[k]["timing"]["median_rate"] / theirs[k]["timing"]["median_rate"] for k in mine if k in theirs
            ]
            cpu = [
                mine[k]["timing"]["median_cpu_rate"] / theirs[k]["timing"]["median_cpu_rate"]
                for k in mine
                if k in theirs
            ]
            summary[f"{base} / {other}"] = {
                "geomean_speed_ratio": _geomean(ratios),
                "min": min(ratios),
                "max": max(ratios),
                "geomean_cpu_speed_ratio": _geomean(cpu),
                "cpu_min": min(cpu),
                "cpu_max": max(cpu),
            }
            notes.append(
                f"speed {base} / {other}, geometric mean over clips and frame counts: {_geomean(ratios):.2f}x "
                f"by wall clock (range {min(ratios):.2f}-{max(ratios):.2f}x), {_geomean(cpu):.2f}x per CPU "
                f"second (range {min(cpu):.2f}-{max(cpu):.2f}x)"
            )
    for name, b in measured.items():
        ok = all(r["indices_ok"] for r in b["results"].values())
        worst = max(r["max_abs_diff"] for r in b["results"].values())
        notes.append(
            f"{name}: every sampled frame is the requested one: {'yes' if ok else 'NO'}; "
            f"largest pixel difference to the PyAV reference {worst}"
        )
        if "padded_row_widths" in b:
            notes.append(
                f"{name}: widths (16..256 px, step 8, height 32) returned with padded rows: "
                f"{b['padded_row_widths'] or 'none'}"
                + (f"; imported from {b['module_file']}" if "module_file" in b else "")
            )
    contention = statistics.median(
        r["timing"]["median_other_share"] for b in measured.values() for r in b["results"].values()
    )
    notes.append(f"other processes kept {100 * contention:.0f}% of the machine's cores busy (median over measurements)")
    wheels = wheel_facts()
    notes += [f"wheels: {_wheel_line(p, f)}" for p, f in wheels.items()]
    clip_line = "; ".join(f"{c['name']} ({c['bytes'] / 1024:.0f} KiB)" for c in clips)
    section = Section(
        title="Video decoders: decord2 vs decord 0.6.0 vs PyAV",
        explain=(
            f"`read_video` with each backend, uniform sampling of {', '.join(map(str, counts))} frames, "
            f"from the mp4 bytes every time, one decoder thread, median of {repeats} run(s) after a warm-up. "
            "Clips (H.264 crf 18, 30 fps, "
            f"pattern that changes with the frame index): {clip_line}. 'ms per clip': one read_video call; "
            "'frames/s': sampled frames per wall second; 'frames/CPU-s': per CPU second of this process "
            "(robust to other load). 'right frames': each sampled frame is closest to the requested index among "
            "all frames of the PyAV reference decode; 'max/mean diff': absolute pixel difference (0-255) to that "
            "reference frame."
        ),
        headers=[
            "backend",
            "clip",
            "frames",
            "ms per clip",
            "frames/s",
            "frames/CPU-s",
            "right frames",
            "max diff",
            "mean diff",
        ],
        rows=rows,
        notes=notes,
    )
    raw = {
        "quick": quick,
        "repeats": repeats,
        "counts": list(counts),
        "clips": clips,
        "backends": backends,
        "summary": summary,
        "wheels": wheels,
    }
    return section, raw


def main(argv: Sequence[str] | None = None) -> dict[str, str] | None:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.video_decoders",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="two short clips, 8/16 frames, one run (smoke test)")
    p.add_argument("--out", default=None, help="results folder (default benchmarks/results; --quick: runs/bench_quick)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per measurement (default 9, quick 1)")
    p.add_argument("--no-progress", action="store_true", help="(accepted for run_all)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--clips", help=argparse.SUPPRESS)
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    p.add_argument("--counts", default=",".join(map(str, COUNTS)), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.out = results_dir(args.out, args.quick)
    if args.worker:
        _worker(args)
        return None
    section, raw = part_decoders(args.quick, args.repeats)
    intro = (
        "Which video backend `data.video.backend` should default to: decord2 (the maintained fork of decord, "
        "same import name), the original decord 0.6.0, or PyAV. See `docs/video_audio.md` for the pick."
    )
    if args.quick:
        intro += "\n\nQUICK MODE: short clips and one run; the numbers are not meaningful."
    paths = write_results(
        args.out,
        "video_decoders",
        title="Video decoder comparison",
        intro=intro,
        sections=[section],
        raw=raw,
        machine=machine_info(),
    )
    print(paths["md"])
    return paths


if __name__ == "__main__":
    main()
