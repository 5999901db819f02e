"""``benchmarks.common.CpuMeter``: what a timed block is charged with.

The meter runs a full ``gc.collect()`` on exit so abandoned data-loader iterators shut down and their
workers' CPU is reaped; in a process holding a model and its batches that collection takes about
0.2 s (bench_packing) and 0.09 s with torch alone, which used to be charged to every measured block.
A fake clock makes the collection "slow" without sleeping.
"""

from __future__ import annotations

import types

from benchmarks import common


def test_cpu_meter_does_not_charge_its_own_garbage_collection(monkeypatch):
    now = {"t": 0.0}

    def clock() -> float:
        return now["t"]

    def slow_collect() -> int:  # a full collection of a big heap
        now["t"] += 100.0
        return 0

    # all time on the fake clock is this process's CPU and the machine's busy time: no other processes
    monkeypatch.setattr(common, "time", types.SimpleNamespace(perf_counter=clock, process_time=clock))
    monkeypatch.setattr(common, "gc", types.SimpleNamespace(collect=slow_collect))
    monkeypatch.setattr(common, "_own_cpu", clock)
    monkeypatch.setattr(common, "_proc_stat_busy", clock)
    with common.CpuMeter() as m:
        now["t"] += 1.0  # the measured work
    assert m.wall == 1.0 and m.cpu == 1.0
    assert m.other_share == 0.0


def test_cpu_meter_other_share_divides_by_the_time_it_measured(monkeypatch):
    """Another process busy on one core while the meter collects: its share is over the span the busy
    counter covered (the block and the collection), not over the block alone."""
    now = {"t": 0.0, "other": 0.0}

    def slow_collect() -> int:
        now["t"] += 100.0
        now["other"] += 100.0  # one core of another process, during the collection only
        return 0

    monkeypatch.setattr(
        common, "time", types.SimpleNamespace(perf_counter=lambda: now["t"], process_time=lambda: now["t"])
    )
    monkeypatch.setattr(common, "gc", types.SimpleNamespace(collect=slow_collect))
    monkeypatch.setattr(common, "_own_cpu", lambda: now["t"])
    monkeypatch.setattr(common, "_proc_stat_busy", lambda: now["t"] + now["other"])
    monkeypatch.setattr(common, "usable_cores", lambda: 2)
    with common.CpuMeter() as m:
        now["t"] += 1.0
    assert m.wall == 1.0 and m.cpu == 1.0
    assert m.other_share == 100.0 / (101.0 * 2)  # not 100 / (1 * 2), capped at 1
