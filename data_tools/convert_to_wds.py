"""Convert LLaVA-format data (JSON array / JSONL records + media folders) into WebDataset shards.

CLI ``llava-wb-convert`` and the function :func:`convert`. Output layout and rules:
``docs/data_format.md``. In short:

* the input is streamed (:mod:`data_tools.records`): memory holds a bounded number of shard
  windows, never a whole metadata file;
* record ``index`` = 0-based position across all input files in the order given; shard ``i``
  holds the accepted records with index in ``[i*shard_size, (i+1)*shard_size)``;
* the main process reads records and hands one shard window at a time to a pool of worker
  processes (at most ``2 * workers`` windows in flight); a worker checks the records, reads the
  media and writes the shard (:mod:`data_tools.shards`). Shard bytes do not depend on
  ``workers``; ``workers <= 1`` converts in the main process;
* finished shards are journaled in ``progress.jsonl`` (:mod:`data_tools.journal`); ``resume=True``
  skips them (re-reading only the input, not their media) and redoes everything else;
* ``index.json`` and ``errors.jsonl`` are written at the end; ``verify=True`` (or
  ``--verify-only OUT``) re-reads the shards and checks them (:mod:`data_tools.verify`).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field

from data_tools import journal
from data_tools.media import (
    DEFAULT_MAX_IMAGE_PIXELS,
    DEFAULT_MAX_MEDIA_BYTES,
    reset_decode_cache,
)
from data_tools.records import InputError, RawRecord, input_fingerprint, iter_records
from data_tools.shards import ShardResult, ShardTask, write_shard
from data_tools.verify import VerifyReport, verify_output

# Default of ``--max-reject-rate``: the loader's default ``max_skip_rate`` (5%). Data the loader
# would refuse to train on should not pass conversion with exit status 0; a healthy LLaVA mix
# loses well under 1% (a few missing OCR-VQA downloads), a wrong --media-root loses ~100%.
DEFAULT_MAX_REJECT_RATE = 0.05
EXIT_TOO_MANY_REJECTED = 3


class ConversionError(RuntimeError):
    """Writing a shard failed (a worker died or raised); finished shards stay journaled."""


class OutputError(RuntimeError):
    """The output folder cannot be created or written; the message names it and why."""


@dataclass
class ConvertSummary:
    """What a conversion produced (all runs of a resumed conversion together, except timing)."""

    out_dir: str
    records: int
    converted: int
    rejected: int
    rejected_by_reason: dict[str, int]
    by_modality: dict[str, int]
    fixes: dict[str, int]
    bytes: int
    shards: int
    shards_resumed: int  # shards taken over from an interrupted run
    seconds: float  # wall time of this run
    records_per_second: float  # records read this run / seconds
    verify: VerifyReport | None = field(default=None, repr=False)

    def as_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["verify"] = None if self.verify is None else {"ok": self.verify.ok, "problems": self.verify.problems}
        return d

    @property
    def reject_rate(self) -> float:
        return self.rejected / self.records if self.records else 0.0

    def top_reasons(self, n: int = 5) -> str:
        top = sorted(self.rejected_by_reason.items(), key=lambda kv: -kv[1])[:n]
        return ", ".join(f"{k} {v}" for k, v in top) or "none"

    def format(self) -> str:
        reasons = ", ".join(f"{k} {v}" for k, v in self.rejected_by_reason.items()) or "none"
        fixes = ", ".join(f"{k} {v}" for k, v in self.fixes.items()) or "none"
        lines = [
            f"converted {self.converted} / {self.records} records into {self.shards} shards "
            f"({self.bytes / 1e6:.1f} MB) in {self.out_dir}",
            f"rejected {self.rejected}: {reasons} (details in errors.jsonl)",
            f"repaired and kept: {fixes}",
            f"by modality: {self.by_modality}",
            f"{self.seconds:.1f} s, {self.records_per_second:.0f} records/s"
            + (f" ({self.shards_resumed} shards resumed)" if self.shards_resumed else ""),
        ]
        if self.verify is not None:
            lines.append(self.verify.format())
        return "\n".join(lines)


def _windows(records: Iterator[RawRecord], shard_size: int) -> Iterator[tuple[int, list[RawRecord]]]:
    """Group consecutive records into shard windows ``(shard, records)``."""
    shard, window = 0, []
    for rec in records:
        k = rec.index // shard_size
        if k != shard:
            yield shard, window
            shard, window = k, []
        window.append(rec)
    if window:
        yield shard, window


def _noop() -> None:
    """Warm-up task: makes the pool fork its workers before any thread (tqdm) starts."""


def _start_pool(workers: int, mp_context: str | None) -> ProcessPoolExecutor:
    """A pool of ``workers`` processes, started now (fork by default, sharing our imports)."""
    import webdataset  # noqa: F401  (imported once here so forked workers inherit it)

    method = mp_context or ("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    executor = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method))
    executor.submit(_noop).result()
    return executor


def _shard_failed(shard: int, exc: BaseException) -> ConversionError:
    return ConversionError(
        f"writing shard {shard} failed ({type(exc).__name__}: {exc}); finished shards are kept: rerun with --resume"
    )


def _check_writable(out_dir: str) -> None:
    """Create ``out_dir`` and prove a file can be written there, or raise OutputError."""
    try:
        os.makedirs(out_dir, exist_ok=True)
        probe = os.path.join(out_dir, f".write-test-{os.getpid()}")
        with open(probe, "wb"):
            pass
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(
            f"output folder {out_dir} cannot be written "
            f"({exc.strerror or exc}); choose another --out or fix its "
            "permissions"
        ) from None


def _prepare_out_dir(out_dir: str, prefix: str, header: dict, resume: bool, overwrite: bool) -> dict[int, ShardResult]:
    _check_writable(out_dir)
    existing = journal.owned_files(out_dir, prefix)
    if overwrite:
        for path in existing:
            os.unlink(path)
        return {}
    if not resume:
        if existing:
            names = ", ".join(os.path.basename(p) for p in existing[:3])
            raise journal.ResumeError(
                f"{out_dir} already holds conversion output ({names}{', ...' if len(existing) > 3 else ''}). "
                "Use --resume to continue an interrupted conversion, or --overwrite to replace it."
            )
        return {}
    journal.remove_temp_files(out_dir, prefix)
    has_shards = any(p.endswith(".tar") for p in journal.owned_files(out_dir, prefix))
    if has_shards and not os.path.exists(os.path.join(out_dir, journal.PROGRESS)):
        raise journal.ResumeError(
            f"{out_dir} has shards but no {journal.PROGRESS}, so the finished "
            "shards are unknown; use --overwrite to start over."
        )
    return journal.load_progress(out_dir, header)


def convert(
    inputs: Sequence[str | os.PathLike],
    media_roots: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    prefix: str = "shard",
    shard_size: int = 1000,
    workers: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    validate_media: bool = True,
    verify: bool = False,
    progress: bool = True,
    mp_context: str | None = None,
    max_media_bytes: int = DEFAULT_MAX_MEDIA_BYTES,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> ConvertSummary:
    """Convert LLaVA records + media into shards in ``out_dir``; see the module docstring.

    ``workers`` defaults to the CPU count. ``mp_context`` picks the multiprocessing start method
    (default ``fork`` where available: workers then share the parent's imports).
    ``max_media_bytes`` caps each media file, ``max_image_pixels`` each image's header size (see
    :mod:`data_tools.media`). Raises :class:`InputError` for unreadable input,
    :class:`OutputError` for an output folder that cannot be written and
    :class:`journal.ResumeError` for one that cannot be used as asked; bad records are never
    raised, they go to errors.jsonl.
    """
    start = time.perf_counter()
    inputs = [os.fspath(p) for p in inputs]
    roots = [os.path.abspath(os.fspath(r)) for r in media_roots]
    out = os.fspath(out_dir)
    workers = (os.cpu_count() or 1) if workers is None else workers
    if not inputs:
        raise ValueError("no input files given")
    for path in inputs:
        if not os.path.isfile(path):
            raise InputError(f"{path}: input file does not exist")
    for root in roots:
        if not os.path.isdir(root):
            raise InputError(f"{root}: media root is not a directory")
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    if not prefix or "/" in prefix or os.sep in prefix:
        raise ValueError(f"prefix must be a plain file name part, got {prefix!r}")
    if resume and overwrite:
        raise ValueError("resume and overwrite exclude each other")
    if max_media_bytes < 1 or max_image_pixels < 1:
        raise ValueError("max_media_bytes and max_image_pixels must be >= 1")
    header = journal.make_header(
        [input_fingerprint(p) for p in inputs],
        roots,
        shard_size,
        prefix,
        validate_media,
        max_media_bytes=max_media_bytes,
        max_image_pixels=max_image_pixels,
    )
    done = _prepare_out_dir(out, prefix, header, resume, overwrite)
    reset_decode_cache()  # each run (and each worker forked from it) starts with an empty cache
    resumed = len(done)
    log = journal.ProgressLog(out, header, fresh=not resume)
    results: dict[int, ShardResult] = dict(done)
    sources = [os.path.basename(p) for p in inputs]
    records_read = 0

    executor = _start_pool(workers, mp_context) if workers > 1 else None
    from tqdm import tqdm

    bar = tqdm(desc="converting", unit="rec", disable=not progress, dynamic_ncols=True)
    pending: dict[Future, int] = {}
    rejected = sum(len(r.rejected) for r in done.values())

    def finish(result: ShardResult) -> None:
        nonlocal rejected
        log.record(result)
        results[result.shard] = result
        rejected += len(result.rejected)
        bar.update(result.records)
        bar.set_postfix(rejected=rejected, refresh=False)

    def drain(limit: int) -> None:
        while len(pending) > limit:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                shard = pending.pop(fut)
                try:
                    result = fut.result()
                except Exception as exc:
                    raise _shard_failed(shard, exc) from exc
                finish(result)

    try:
        for shard, window in _windows(iter_records(inputs), shard_size):
            records_read += len(window)
            if shard in done:
                if done[shard].records != len(window):
                    raise journal.ResumeError(
                        f"shard {shard}: journal says {done[shard].records} records, input now has "
                        f"{len(window)}; the input changed. Use --overwrite to start over."
                    )
                bar.update(len(window))
                continue
            task = ShardTask(
                shard=shard,
                first_index=shard * shard_size,
                last_index=shard * shard_size + len(window) - 1,
                records=window,
                out_dir=out,
                prefix=prefix,
                sources=sources,
                media_roots=roots,
                validate_media=validate_media,
                max_media_bytes=max_media_bytes,
                max_image_pixels=max_image_pixels,
            )
            if executor is None:
                try:
                    result = write_shard(task)
                except Exception as exc:
                    raise _shard_failed(shard, exc) from exc
                finish(result)
            else:
                try:
                    pending[executor.submit(write_shard, task)] = shard
                except BrokenProcessPool as exc:  # a worker died since the last drain
                    raise _shard_failed(shard, exc) from exc
                drain(2 * workers - 1)
        drain(0)
    finally:
        bar.close()
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
        log.close()

    stale = [s for s in results if s * shard_size >= records_read]
    if stale:
        raise journal.ResumeError(
            f"journal lists shards {stale[:5]} beyond the input's "
            f"{records_read} records; use --overwrite to start over."
        )
    index = journal.write_outputs(out, header, results)
    totals = index["totals"]
    fixes: dict[str, int] = {}
    for r in results.values():
        for k, v in r.fixes.items():
            fixes[k] = fixes.get(k, 0) + v
    seconds = time.perf_counter() - start
    records_this_run = sum(r.records for s, r in results.items() if s not in done)
    summary = ConvertSummary(
        out_dir=out,
        records=totals["records"],
        converted=totals["converted"],
        rejected=totals["rejected"],
        rejected_by_reason=totals["rejected_by_reason"],
        by_modality=totals["by_modality"],
        fixes=dict(sorted(fixes.items())),
        bytes=totals["bytes"],
        shards=len(results),
        shards_resumed=resumed,
        seconds=seconds,
        records_per_second=records_this_run / seconds if seconds > 0 else 0.0,
    )
    if verify:
        summary.verify = verify_output(out)
    return summary


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="llava-wb-convert",
        description="Convert LLaVA-format records (JSON array or JSONL) plus media folders into "
        "WebDataset shards with index.json and errors.jsonl (see docs/data_format.md).",
        epilog="examples:\n"
        "  llava-wb-convert llava_instruct.json --media-root data/ --out shards/ --workers 8\n"
        "  llava-wb-convert a.jsonl b.jsonl --media-root r1 --media-root r2 --out o/ --resume\n"
        "  llava-wb-convert --verify-only shards/",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "inputs",
        nargs="*",
        metavar="INPUT",
        help="LLaVA records: a JSON array or JSONL file; several are read in order and "
        "indexed together (index = position across all of them)",
    )
    p.add_argument(
        "--media-root",
        action="append",
        default=[],
        metavar="DIR",
        help="folder that media paths are relative to; repeat it: each path is looked "
        "up in every root in order, the first hit wins",
    )
    p.add_argument("--out", metavar="DIR", help="output folder for shards, index.json, errors.jsonl")
    p.add_argument("--prefix", default="shard", help="shard file prefix (default: shard)")
    p.add_argument("--shard-size", type=int, default=1000, help="input records per shard window (default: 1000)")
    p.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="worker processes (default: CPU count; 1 = convert in this process)",
    )
    p.add_argument(
        "--resume", action="store_true", help="continue an interrupted conversion in --out (finished shards are kept)"
    )
    p.add_argument(
        "--overwrite", action="store_true", help="delete earlier output with this prefix in --out and start over"
    )
    p.add_argument(
        "--no-validate-media",
        dest="validate_media",
        action="store_false",
        help="only check media magic bytes instead of fully decoding every image",
    )
    p.add_argument(
        "--max-media-bytes",
        type=int,
        default=DEFAULT_MAX_MEDIA_BYTES,
        metavar="N",
        help="refuse media files larger than N bytes (default: 1 GiB)",
    )
    p.add_argument(
        "--max-image-pixels",
        type=int,
        default=DEFAULT_MAX_IMAGE_PIXELS,
        metavar="N",
        help="refuse images whose header gives more than N pixels, also with "
        "--no-validate-media (default: PIL's bomb limit, 89478485)",
    )
    p.add_argument(
        "--max-reject-rate",
        type=float,
        default=DEFAULT_MAX_REJECT_RATE,
        metavar="R",
        help="exit with status 3 when more than this fraction of records is rejected "
        "(default: 0.05, the loader's max_skip_rate)",
    )
    p.add_argument(
        "--verify", action="store_true", help="after converting, re-read every shard and check it against index.json"
    )
    p.add_argument("--verify-only", metavar="OUT", help="do not convert: verify an existing output folder and exit")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.add_argument(
        "--energon",
        action="store_true",
        help="also write the Megatron-Energon description (.nv-meta), see data_tools/energon.py",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns 0 on success, 1 when verification finds problems, 2 on errors,
    3 when more records were rejected than ``--max-reject-rate`` allows (the output is kept)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verify_only:
        if args.inputs or args.out:
            parser.error("--verify-only takes only the output folder; give no INPUT or --out")
        report = verify_output(args.verify_only)
        print(report.format())
        return 0 if report.ok else 1
    if not args.inputs:
        parser.error("give at least one INPUT file (or --verify-only OUT)")
    if not args.out:
        parser.error("--out is required")
    if not 0.0 <= args.max_reject_rate <= 1.0:
        parser.error(f"--max-reject-rate must be in [0, 1], got {args.max_reject_rate}")
    try:
        summary = convert(
            args.inputs,
            args.media_root,
            args.out,
            prefix=args.prefix,
            shard_size=args.shard_size,
            workers=args.workers,
            resume=args.resume,
            overwrite=args.overwrite,
            validate_media=args.validate_media,
            verify=args.verify,
            progress=args.progress,
            max_media_bytes=args.max_media_bytes,
            max_image_pixels=args.max_image_pixels,
        )
    except (InputError, OutputError, journal.ResumeError, ConversionError, ValueError) as exc:
        print(f"llava-wb-convert: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("llava-wb-convert: interrupted; finished shards are kept: rerun with --resume", file=sys.stderr)
        return 130
    print(summary.format())
    if summary.reject_rate > args.max_reject_rate:
        print(
            f"llava-wb-convert: error: {summary.rejected} of {summary.records} records rejected "
            f"({100 * summary.reject_rate:.1f}% > --max-reject-rate "
            f"{100 * args.max_reject_rate:.1f}%); top reasons: {summary.top_reasons()}; "
            f"details in {os.path.join(args.out, journal.ERRORS)}",
            file=sys.stderr,
        )
        return EXIT_TOO_MANY_REJECTED
    if args.energon:
        from data_tools.energon import write_energon_meta

        print(f"energon: wrote {write_energon_meta(args.out)}")
    return 0 if summary.verify is None or summary.verify.ok else 1


if __name__ == "__main__":
    sys.exit(main())
