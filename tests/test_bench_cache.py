"""The benchmarks' shared run cache: several processes started on one cache fill one grid together,
every run once, and each ends with every result (``benchmarks.common.RunCache`` / ``run_plan``)."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
from pathlib import Path

from benchmarks.common import RunCache, claim, run_plan

KEYS = [f"grid/{i}" for i in range(12)]


def _worker(root: str, barrier, stale_key: str | None = None) -> None:
    root_path = Path(root)
    done = RunCache(root_path / "results.json")
    barrier.wait()  # both processes start the plan together

    def one(key: str) -> dict:
        with open(root_path / "ran.log", "a") as f:  # O_APPEND: lines of the two processes never mix
            f.write(f"{key} {os.getpid()}\n")
        return {"key": key, "pid": os.getpid()}

    run_plan(
        [(k, lambda k=k: one(k)) for k in KEYS],
        done,
        root_path / "claims",
        "test",
        stale=lambda key: key == stale_key and done[key].get("old", False),
    )
    (root_path / f"final.{os.getpid()}.json").write_text(json.dumps(sorted(done)))


def test_two_processes_share_one_plan(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_worker, args=(str(tmp_path), barrier)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    ran = [line.split()[0] for line in (tmp_path / "ran.log").read_text().splitlines()]
    assert sorted(ran) == sorted(KEYS)  # every run exactly once over both processes
    stored = json.loads((tmp_path / "results.json").read_text())
    assert sorted(stored) == sorted(KEYS) and all(stored[k]["key"] == k for k in KEYS)
    finals = list(tmp_path.glob("final.*.json"))
    assert len(finals) == 2 and all(json.loads(f.read_text()) == sorted(KEYS) for f in finals)


def test_cached_runs_are_skipped_and_stale_ones_redone(tmp_path: Path) -> None:
    cache = RunCache(tmp_path / "results.json")
    cache.update({k: {"key": k} for k in KEYS})
    cache["grid/3"] = {"key": "grid/3", "old": True}
    cache.save()
    barrier = mp.get_context("spawn").Barrier(1)
    _worker(str(tmp_path), barrier, stale_key="grid/3")
    assert (tmp_path / "ran.log").read_text().split() == ["grid/3", str(os.getpid())]
    assert "old" not in RunCache(tmp_path / "results.json")["grid/3"]


def test_claim_is_exclusive(tmp_path: Path) -> None:
    lock = tmp_path / "a.lock"
    with claim(lock) as first:
        assert first
        ctx = mp.get_context("spawn")
        with ctx.Pool(1) as pool:
            assert pool.apply(_try_claim, (str(lock),)) is False  # held here: another process gets False
    with mp.get_context("spawn").Pool(1) as pool:
        assert pool.apply(_try_claim, (str(lock),)) is True


def _try_claim(path: str) -> bool:
    with claim(path, wait=False) as mine:
        return mine
