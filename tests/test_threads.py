"""``train.threads``: the main process's torch threads leave a core to each data-loader worker, and a
run gives the process its own setting back."""

from __future__ import annotations

import os

import pytest
import torch

from llava_wb.train.dist import auto_threads, torch_threads

CORES = len(os.sched_getaffinity(0))


@pytest.mark.parametrize(("local", "workers"), [(1, 0), (1, 1), (2, 0), (1, 64)])
def test_auto_threads_leave_a_core_per_worker_and_share_the_node(monkeypatch, local, workers):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(local))
    assert auto_threads(workers) == max(1, CORES // local - workers)


def test_the_setting_is_restored_after_the_block_even_on_error():
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError), torch_threads(1, 0) as n:
        assert n == 1 and torch.get_num_threads() == 1
        raise RuntimeError("the run failed")
    assert torch.get_num_threads() == before
    with torch_threads("auto", 10**6) as n:
        assert n == 1 == torch.get_num_threads()
    assert torch.get_num_threads() == before
