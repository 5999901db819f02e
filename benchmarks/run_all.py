"""Run every benchmark: each ``benchmarks/bench_*.py`` module's ``main(argv)``, in name order.

    python -m benchmarks.run_all [--quick] [--out DIR] [--only data,...]

``make bench`` calls this. ``--quick`` and ``--out`` are passed on to every benchmark (each
module's ``main`` takes an argv list, accepts ``--quick`` and ``--out`` and returns the paths it
wrote, or ``None``). Without ``--out`` the tables go to ``benchmarks/results``, or with ``--quick``
(tiny sizes, meaningless numbers) to ``runs/bench_quick`` (``common.results_dir``). A failing
benchmark is reported and the others still run; the exit status is 1 if any failed.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def discover() -> list[str]:
    """Module names ``benchmarks.bench_*``, sorted."""
    return sorted(
        f"benchmarks.{m.name}"
        for m in pkgutil.iter_modules([str(PACKAGE_DIR)])
        if m.name.startswith("bench_") and not m.ispkg
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run_all", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes (smoke test; numbers meaningless)")
    p.add_argument(
        "--out",
        default=None,
        help="results folder for every benchmark (default benchmarks/results; --quick: runs/bench_quick)",
    )
    p.add_argument("--only", default="", help="comma-separated names to run, e.g. 'data' for bench_data")
    args = p.parse_args(argv)
    names = discover()
    if args.only:
        wanted = {f"benchmarks.bench_{n.strip()}" for n in args.only.split(",") if n.strip()}
        unknown = wanted - set(names)
        if unknown:
            p.error(f"unknown benchmark(s) {sorted(unknown)}; found {names}")
        names = [n for n in names if n in wanted]
    forwarded = (["--quick"] if args.quick else []) + (["--out", args.out] if args.out else [])
    results: dict[str, object] = {}
    failed: list[str] = []
    for name in names:
        print(f"== {name} {' '.join(forwarded)}", flush=True)
        start = time.perf_counter()
        try:
            results[name] = importlib.import_module(name).main(forwarded)
        except Exception:  # keep going: one broken benchmark must not hide the others' results
            traceback.print_exc()
            failed.append(name)
            continue
        print(f"== {name} done in {time.perf_counter() - start:.0f} s", flush=True)
    print("\nresults:")
    for name, paths in results.items():
        where = ", ".join(paths.values()) if isinstance(paths, dict) else str(paths)
        print(f"  {name}: {where}")
    for name in failed:
        print(f"  {name}: FAILED (traceback above)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
