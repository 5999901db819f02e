"""Shared benchmark helpers: machine description, timing, process-tree memory, result files.

- ``machine_info()`` / ``machine_line()``: CPU model, cores, RAM, Python/torch/Pillow versions,
  date and git commit, so every result file says where it was measured.
- ``CpuMeter`` / ``Timing`` / ``repeat_timed()``: run a callable several times, keep every wall
  and CPU duration (our process tree, dataloader workers included) and how busy other processes
  kept the machine meanwhile; tables report medians (robust to one slow outlier).
  ``median_seconds()``: the median wall time of a few calls (micro-timings of kernels).
- ``clip_tower()``: a random-weight CLIP tower at ViT-L/14-336 shapes (``CLIP_L14_336_SHAPE``) or a
  tiny one for ``--quick`` (``CLIP_QUICK_SHAPE``), the reference a reducer's time is compared with.
- ``TreeMemorySampler``: a background thread that samples the memory of a process and all its
  descendants (e.g. a loader's main process plus its dataloader workers) and keeps the peak of
  the *sum*. It prefers PSS (proportional set size: a page shared by k processes counts 1/k in
  each, so the sum counts it once) and also records RSS (what ``top`` shows; shared pages counted
  in every process) and USS (pages private to one process).
- ``write_results()``: ``<out>/<name>.md`` (tables with a "what this measures / how to read it"
  paragraph each, plus the machine line) and ``<out>/<name>.json`` (every raw number).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import gc
import json
import os
import platform
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llava_wb.train.dist import usable_cores

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = ROOT / "runs" / "bench_cache"
RESULTS = ROOT / "benchmarks" / "results"  # the committed, measured tables
QUICK_RESULTS = ROOT / "runs" / "bench_quick"  # --quick: smoke-test numbers, never beside the measured ones


def results_dir(out: str | os.PathLike | None, quick: bool) -> str:
    """Where a benchmark writes: ``out`` when given, else ``runs/bench_quick`` for ``--quick`` (its
    numbers mean nothing) and ``benchmarks/results`` otherwise."""
    return str(out) if out else str(QUICK_RESULTS if quick else RESULTS)


# ----------------------------------------------------------------------------- machine
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gib() -> float | None:
    try:
        import psutil

        return round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        return None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info() -> dict[str, Any]:
    """Where the numbers were taken (all plain JSON values)."""
    import PIL
    import torch

    usable = usable_cores()
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "ram_gib": _ram_gib(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pillow": PIL.__version__,
        "torch_threads": torch.get_num_threads(),
        "os": platform.platform(),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "git": _git_commit(),
    }


def machine_line(m: dict[str, Any]) -> str:
    return (
        f"{m['cpu']}, {m['usable_cores']} usable core(s) of {m['cores']}, {m['ram_gib']} GiB RAM; "
        f"Python {m['python']}, torch {m['torch']}, Pillow {m['pillow']}; {m['os']}; "
        f"{m['date']}; commit {m['git']}"
    )


# ----------------------------------------------------------------------------- timing
def _proc_stat_busy() -> float:
    """Core-seconds the whole machine has been busy (steal included), from ``/proc/stat``."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return 0.0
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


def _own_cpu() -> float:
    """CPU seconds of this process plus its reaped children (dataloader workers, pool workers)."""
    import resource

    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


class CpuMeter:
    """Wall time, CPU time of our process tree, and how busy *other* processes kept the machine.

    ``other_share`` = (machine busy core-seconds - ours) / (wall x cores): 0 on an idle machine,
    0.5 when other processes used half of all cores during the measurement. Children must be
    reaped by the end: ``gc.collect()`` runs on exit so abandoned dataloader iterators shut down,
    after the wall clock stops and with its own CPU time taken off (a full collection takes about
    0.2 s in a process holding a model and its batches; it is not the measured work).
    """

    def __enter__(self) -> CpuMeter:
        gc.collect()
        self._cpu0, self._busy0, self._t0 = _own_cpu(), _proc_stat_busy(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._t0
        gc_start = time.process_time()
        gc.collect()
        gc_cpu = time.process_time() - gc_start
        self.cpu = _own_cpu() - self._cpu0 - gc_cpu
        other = max(0.0, _proc_stat_busy() - self._busy0 - self.cpu - gc_cpu)
        span = time.perf_counter() - self._t0  # what /proc/stat covered: the block and the collection
        self.other_share = min(1.0, other / (span * usable_cores())) if span > 0 else 0.0


@dataclass
class Timing:
    """Repeated runs of one measurement: wall and CPU seconds, work done, machine contention.

    Tables report medians over runs: ``rate`` (units per wall second), ``cpu_rate`` (units per
    CPU second of our whole process tree, i.e. per busy core; robust when other processes share
    the machine) and ``other_share``.
    """

    seconds: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)
    units: list[float] = field(default_factory=list)  # work done per run (samples, records)
    other_share: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def rates(self) -> list[float]:
        return [u / s if s > 0 else 0.0 for u, s in zip(self.units, self.seconds)]

    @property
    def cpu_rates(self) -> list[float]:
        return [u / c if c > 0 else 0.0 for u, c in zip(self.units, self.cpu_seconds)]

    @property
    def rate(self) -> float:
        return statistics.median(self.rates)

    @property
    def cpu_rate(self) -> float:
        return statistics.median(self.cpu_rates)

    @property
    def contention(self) -> float:
        return statistics.median(self.other_share)

    def as_dict(self) -> dict[str, Any]:
        return {
            "seconds": self.seconds,
            "cpu_seconds": self.cpu_seconds,
            "units": self.units,
            "rates": self.rates,
            "cpu_rates": self.cpu_rates,
            "other_share": self.other_share,
            "median_rate": self.rate,
            "median_cpu_rate": self.cpu_rate,
            "median_seconds": self.median,
            "median_other_share": self.contention,
        }


def repeat_timed(fn: Callable[[], float], repeats: int, *, timing: Timing | None = None) -> Timing:
    """Call ``fn`` ``repeats`` times; ``fn`` returns the units of work it did (samples, records)."""
    timing = timing or Timing()
    for _ in range(repeats):
        with CpuMeter() as m:
            units = fn()
        timing.seconds.append(m.wall)
        timing.cpu_seconds.append(m.cpu)
        timing.units.append(float(units))
        timing.other_share.append(m.other_share)
    return timing


def median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall seconds of ``repeats`` calls of ``fn`` (no warm-up call: make one first)."""
    times = []
    for _ in range(max(1, repeats)):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


# ----------------------------------------------------------------------------- tower shapes
# CLIP ViT-L/14-336 (LLaVA-1.5's tower: 24 x 24 = 576 patches of dim 1024) and a tiny stand-in for --quick.
CLIP_L14_336_SHAPE = dict(
    image_size=336,
    patch_size=14,
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=24,
    num_attention_heads=16,
)
CLIP_QUICK_SHAPE = dict(
    image_size=112, patch_size=14, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4
)


def clip_tower(quick: bool = False, seed: int = 0) -> Any:
    """A random-weight CLIP tower (feature layer -2, patch tokens) at ViT-L/14-336 shapes, or the tiny
    quick shape; in eval mode. For timing the tower forward that a reducer's cost is compared with."""
    import torch

    from llava_wb.model.towers import build_tower

    torch.manual_seed(seed)
    return build_tower("clip", config=dict(CLIP_QUICK_SHAPE if quick else CLIP_L14_336_SHAPE), feature_layer=-2).eval()


# ----------------------------------------------------------------------------- memory
class TreeMemorySampler:
    """Samples the memory of ``pid`` and its descendants every ``interval`` s in a thread.

    ``peak`` holds, per metric (``pss``, ``rss``, ``uss``), the largest *sum over the tree* seen
    in one sample, in bytes; ``at_peak`` the per-process breakdown of the PSS (or RSS) peak.
    """

    def __init__(self, pid: int, interval: float = 0.05):
        import psutil

        self._psutil = psutil
        self.root = psutil.Process(pid)
        self.interval = interval
        self.peak: dict[str, int] = {"pss": 0, "rss": 0, "uss": 0}
        self.at_peak: list[dict[str, Any]] = []
        self.max_processes = 0
        self.samples = 0
        self.metric = "pss"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreeMemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _one(self, proc) -> dict[str, Any] | None:
        ps = self._psutil
        try:
            try:
                m = proc.memory_full_info()
                return {"pid": proc.pid, "rss": m.rss, "pss": getattr(m, "pss", None), "uss": m.uss}
            except ps.AccessDenied:
                return {"pid": proc.pid, "rss": proc.memory_info().rss, "pss": None, "uss": None}
        except (ps.NoSuchProcess, ps.ZombieProcess):
            return None

    def sample(self) -> None:
        ps = self._psutil
        try:
            procs = [self.root] + self.root.children(recursive=True)
        except (ps.NoSuchProcess, ps.ZombieProcess):
            return
        rows = [r for r in map(self._one, procs) if r is not None]
        if not rows:
            return
        self.samples += 1
        self.max_processes = max(self.max_processes, len(rows))
        if any(r["pss"] is None for r in rows):
            self.metric = "rss"  # PSS unreadable for some process: fall back, and say so
        for key in ("pss", "rss", "uss"):
            total = sum(r[key] or 0 for r in rows)
            if total > self.peak[key]:
                self.peak[key] = total
                if key == self.metric:
                    self.at_peak = [{k: r[k] for k in ("pid", "rss", "pss", "uss")} for r in rows]

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)
        self.sample()


def mib(n_bytes: float) -> float:
    return round(n_bytes / 2**20, 1)


# ----------------------------------------------------------------------------- run caches
class RunCache(dict):
    """Finished benchmark runs by key, kept in a JSON file that several processes may fill at once
    (e.g. two 1-thread trainings of one grid on a 2-core machine): ``save()`` takes a file lock,
    merges what the others wrote since, writes atomically, and leaves the union in ``self``."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        super().__init__(self._read())

    def _read(self) -> dict[str, Any]:
        return json.loads(self.path.read_text(encoding="utf-8")) if self.path.is_file() else {}

    def refresh(self) -> None:
        """Take in the runs other processes stored since (ours are on disk too: ``save`` follows each)."""
        self.update(self._read())

    def save(self) -> None:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            merged = {**self._read(), **self}
            tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(merged, indent=1), encoding="utf-8")
            os.replace(tmp, self.path)
        self.update(merged)


@contextlib.contextmanager
def claim(path: str | os.PathLike, *, wait: bool = True):
    """An exclusive lock on ``path`` (a ``.lock`` file) for one run of a cache shared by processes:
    yields True once held (``wait``) or at once with False when another process holds it."""
    import fcntl

    lock_path = Path(path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def run_plan(
    plan: Sequence[tuple[str, Callable[[], dict[str, Any]]]],
    done: RunCache,
    claims: Path,
    label: str,
    stale: Callable[[str], bool] = lambda key: False,
) -> None:
    """Run each ``(key, fn)`` whose key is missing from ``done`` (or ``stale``), storing ``fn()`` under
    it. Processes started on the same cache share the plan: each run is claimed, a run another
    process holds is skipped and waited for at the end, so N processes fill the grid N at a time."""

    def needed(key: str) -> bool:
        done.refresh()
        return key not in done or stale(key)

    waiting = []
    for i, (key, fn) in enumerate(plan):
        if not needed(key):
            continue
        lock = claims / (key.replace("/", "__").replace(" ", "_") + ".lock")
        with claim(lock, wait=False) as mine:
            if not mine:
                waiting.append(lock)
                continue
            if not needed(key):
                continue
            print(f"[{label}] ({i + 1}/{len(plan)}) {key}", flush=True)
            done[key] = fn()
            done.save()
    for lock in waiting:  # runs other processes were doing: wait until they are stored
        with claim(lock):
            pass
    done.refresh()


# ----------------------------------------------------------------------------- results
@dataclass
class Section:
    """One result block: a heading, how to read it, a table, and lines under the table."""

    title: str
    explain: str
    headers: Sequence[str]
    rows: Sequence[Sequence[Any]]
    notes: Sequence[str] = ()


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.2f}" if abs(v) < 100 else f"{v:,.0f}"
    return str(v)


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_results(
    out_dir: str | os.PathLike,
    name: str,
    *,
    title: str,
    intro: str,
    sections: Sequence[Section],
    raw: dict[str, Any],
    machine: dict[str, Any],
) -> dict[str, str]:
    """Write ``<out>/<name>.md`` and ``<out>/<name>.json`` (atomically); return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    parts = [f"# {title}", "", f"Machine: {machine_line(machine)}", "", intro.strip(), ""]
    for s in sections:
        parts += [f"## {s.title}", "", s.explain.strip(), "", md_table(s.headers, s.rows), ""]
        parts += [f"- {n}" for n in s.notes]
        if s.notes:
            parts.append("")
    paths = {"md": str(out / f"{name}.md"), "json": str(out / f"{name}.json")}
    payload = {"name": name, "machine": machine, **raw}
    for kind, text in (("md", "\n".join(parts)), ("json", json.dumps(payload, indent=2, default=str) + "\n")):
        tmp = paths[kind] + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, paths[kind])
    return paths
