"""The frozen tower's feature cache (``llava_wb.model.feature_cache``): served features equal computed
ones, any change of the tower's weights empties it, a tower that trains or draws dropout never uses
it, and a training run with it takes the same steps as one without. Prefetching (``warm`` from a
thread one batch ahead, ``train.feature_prefetch``) leaves the run, its checkpoints and its resume
exactly as they were, and the step computes no feature."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from train_fixtures import ROOT, assert_same_run, make_workspace, read_ids, read_metrics, resume_config, tiny_config

from llava_wb.model.feature_cache import FeatureCache
from llava_wb.model.towers import build_tower
from llava_wb.train import ConfigError, load_config, train

VIT = dict(
    image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4
)


def frozen_tower(**config):
    torch.manual_seed(0)
    tower = build_tower("clip", config={**VIT, **config})
    tower.requires_grad_(False)
    return tower


class Counting:
    """Wraps ``tower.features`` to count the images the tower really computes."""

    def __init__(self, tower):
        self.computed = 0
        inner = tower.features

        def features(x):
            self.computed += x.shape[0]
            return inner(x)

        tower.features = features


def test_served_features_equal_computed_ones_and_repeats_are_not_recomputed():
    tower = frozen_tower()
    images = torch.randn(5, 3, 32, 32)
    batch = images[[0, 1, 0, 2, 1]]  # repeats inside one batch
    expected = tower(batch)
    cache = tower.enable_feature_cache(2**20)
    count = Counting(tower)
    first = tower(batch)
    assert count.computed == 5  # one computation per batch position of the first call (misses)
    torch.testing.assert_close(first, expected, rtol=0, atol=1e-6)
    again = tower(images[[2, 3, 0, 4]])  # two seen, two new
    assert count.computed == 5 + 2
    torch.testing.assert_close(again, tower.features(images[[2, 3, 0, 4]]), rtol=0, atol=1e-6)
    s = cache.summary()
    assert (s["hits"], s["misses"], s["entries"]) == (2, 7, 5)
    assert cache.take_window() == pytest.approx(2 / 9) and cache.take_window() == 0.0


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 6),
    shape=st.sampled_from([(3, 4, 4), (2, 5), (7,), (3, 0)]),
    dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.uint8, torch.bool]),
    seed=st.integers(0, 2**16),
)
def test_a_key_depends_on_the_input_alone_not_on_its_batch_or_layout(n, shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    batch = (torch.rand((n, *shape), generator=g) * 255).to(dtype)
    keys = FeatureCache.keys(batch)
    assert keys == [FeatureCache.keys(row[None])[0] for row in batch]  # the same in any batch
    assert keys == FeatureCache.keys(batch.transpose(0, -1).contiguous().transpose(0, -1))  # a strided view
    assert keys == FeatureCache.keys(torch.cat([batch, batch])[:n])
    if batch[0].numel():  # a value, the dtype or the shape changed: another key
        other = batch.clone()
        other.view(-1)[0] = 0 if bool(batch.view(-1)[0] != 0) else 1
        assert FeatureCache.keys(other)[0] != keys[0]
        assert FeatureCache.keys(batch.flatten(1)[:, None])[0] != keys[0]
    widened = batch.to(torch.float64 if dtype != torch.float64 else torch.float32)
    assert FeatureCache.keys(widened)[0] != keys[0]
    assert FeatureCache.keys(batch[:0]) == []


def test_a_change_of_the_weights_empties_the_cache():
    """An optimizer step (in place), ``load_state_dict`` and a dtype change all invalidate it: the
    next call returns the new tower's features, never the stale ones."""
    tower = frozen_tower()
    cache = tower.enable_feature_cache(2**20)
    x = torch.randn(3, 3, 32, 32)
    before = tower(x)
    with torch.no_grad():  # what an optimizer step does to a parameter
        w = tower.encoder_layers()[0].mlp.fc1.weight
        w.add_(torch.randn_like(w))
    after = tower(x)
    assert (after - before).abs().max() > 1e-2
    torch.testing.assert_close(after, tower.features(x), rtol=0, atol=1e-6)
    assert cache.summary()["invalidated"] == 3
    other = frozen_tower()
    other.encoder_layers()[1].mlp.fc2.weight.data.mul_(3.0)
    tower.load_state_dict(other.state_dict())
    torch.testing.assert_close(tower(x), other(x), rtol=0, atol=1e-6)
    tower.to(torch.float64)
    assert tower(x.double()).dtype == torch.float64


def test_a_tower_that_trains_bypasses_the_cache_and_gets_gradients():
    tower = frozen_tower()
    cache = tower.enable_feature_cache(2**20)
    x = torch.randn(2, 3, 32, 32)
    tower(x)
    tower.requires_grad_(True)
    tower(x).square().sum().backward()
    assert tower.encoder_layers()[0].mlp.fc1.weight.grad is not None
    assert cache.summary()["hits"] == 0


def test_a_tower_with_dropout_is_refused():
    tower = frozen_tower(attention_dropout=0.1)
    with pytest.raises(ValueError, match="dropout"):
        tower.enable_feature_cache(2**20)


def test_a_full_cache_stops_storing_and_counts_what_it_could_not_keep():
    tower = frozen_tower()
    row = 16 * 32 * 4  # 16 patches x 32 dims x fp32
    cache = tower.enable_feature_cache(2 * row)
    x = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(tower(x), tower.features(x), rtol=0, atol=1e-6)
    s = cache.summary()
    assert (s["entries"], s["not_stored"], s["misses"]) == (2, 2, 4)


def test_warm_fills_the_cache_so_that_serving_computes_only_what_it_lacks():
    tower = frozen_tower()
    x = torch.randn(4, 3, 32, 32)
    expected = tower.features(x)
    assert tower.prefetch(x) == 0  # no cache: nothing to fill
    cache = tower.enable_feature_cache(2**20)
    assert tower.prefetch(x[[0, 1, 2, 0]]) == 4 and tower.prefetch(x[[1, 2]]) == 0
    count = Counting(tower)
    torch.testing.assert_close(tower(x), expected, rtol=0, atol=1e-6)
    assert count.computed == 1  # image 3 only
    s = cache.summary()
    assert (s["hits"], s["misses"], s["prefetched"], s["entries"]) == (3, 1, 4, 4)
    tower.requires_grad_(True)
    assert tower.prefetch(torch.randn(2, 3, 32, 32)) == 0  # a tower that trains is never cached


def test_prefetching_from_a_thread_while_the_main_thread_serves_keeps_features_and_accounts_exact():
    tower = frozen_tower()
    row = 16 * 32 * 4
    cache = tower.enable_feature_cache(40 * row)  # room for 40 of the 48 distinct images
    images = torch.randn(48, 3, 32, 32)
    batches = [images[torch.randperm(48)[:12]] for _ in range(24)]
    with ThreadPoolExecutor(1) as pool:
        jobs = [pool.submit(tower.prefetch, b) for b in batches]
        for b in batches:
            torch.testing.assert_close(tower(b), tower.features(b), rtol=0, atol=1e-6)
        [job.result() for job in jobs]
    s = cache.summary()
    assert s["hits"] + s["misses"] == 24 * 12
    assert s["entries"] == 40 and cache.bytes == 40 * row and len(cache.entries) == 40


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return make_workspace(tmp_path_factory.mktemp("feature_cache"), n=16, shard_size=8)


def cached_run(ws, out, mb):
    cfg = tiny_config(ws, out, max_steps=12, feature_cache_mb=mb, report_to="none")
    cfg["model"]["vision"]["freeze"] = True
    cfg["data"].update(num_workers=0, shuffle_buffer=4)
    return cfg


def test_a_run_with_the_cache_takes_the_same_steps_and_reports_its_hits(ws, tmp_path):
    """16 samples in batches of 4 for 12 steps: three epochs, so two of them hit the cache."""
    train(load_config(cached_run(ws, tmp_path / "plain", 0)))
    result = train(load_config(cached_run(ws, tmp_path / "cached", 64)))
    plain, cached = read_metrics(tmp_path / "plain"), read_metrics(tmp_path / "cached")
    assert sorted(plain) == sorted(cached) == list(range(1, 13))
    for step in plain:
        for key in ("loss", "grad_norm"):
            assert cached[step][key] == pytest.approx(plain[step][key], rel=1e-5), (step, key)
    assert read_ids(tmp_path / "plain") == read_ids(tmp_path / "cached")
    summary = result["feature_cache"]
    assert summary["hit_frac"] > 0.5 and summary["invalidated"] == 0, summary
    hits = [cached[step]["feature_cache_hit_frac"] for step in sorted(cached)]
    assert hits[0] == 0.0 and hits[-1] == 1.0, hits
    assert "feature_cache_hit_frac" not in plain[12]


def test_a_stage_that_trains_the_tower_refuses_the_cache(ws, tmp_path):
    cfg = cached_run(ws, tmp_path / "run", 64)
    cfg["model"]["vision"]["freeze"] = False
    with pytest.raises(ConfigError, match="feature_cache_mb=64 but stage 'finetune' trains the vision tower"):
        train(load_config(cfg))


@pytest.mark.parametrize("patience, bf16", [(32, False), (2, True)])
def test_prefetch_changes_nothing_in_the_run_and_the_step_computes_no_feature(
    ws, tmp_path, monkeypatch, patience, bf16
):
    """Same losses, grad norms, batches, saved loader states and skip counts as without prefetch;
    every image the steps read was computed by the prefetch thread. With a patience of 2 the thread
    stops in the second epoch (everything cached) and the feed goes on without a look-ahead. In bf16
    the thread computes under the step's autocast (autocast is per thread)."""
    from llava_wb.train import trainer

    monkeypatch.setattr(trainer, "PREFETCH_PATIENCE", patience)
    runs = {}
    for name, prefetch in (("plain", False), ("prefetch", True)):
        cfg = cached_run(ws, tmp_path / name, 64)
        cfg["train"].update(feature_prefetch=prefetch, save_steps=5, bf16=bf16)
        cfg["data"]["num_workers"] = 1
        runs[name] = train(load_config(cfg))
    assert_close_runs(tmp_path / "plain", tmp_path / "prefetch")
    for step in (10, 12):  # mid-epoch and the last step (save_total_limit keeps two)
        state = [
            json.loads((tmp_path / n / f"checkpoint-{step}" / "loader_state_rank0.json").read_text()) for n in runs
        ]
        assert state[0] == state[1], step
    assert runs["plain"]["skips"] == runs["prefetch"]["skips"]
    cache = runs["prefetch"]["feature_cache"]
    assert (
        cache["misses"] == 0
        and cache["hits"] == runs["plain"]["feature_cache"]["hits"] + runs["plain"]["feature_cache"]["misses"]
    ), cache
    assert cache["prefetched"] >= cache["entries"] > 0, cache
    stopped = runs["prefetch"]["prefetch_stopped_after_batch"]
    assert stopped is None if patience == 32 else 4 < stopped < 10, stopped


def assert_close_runs(a_dir, b_dir):
    a, b = read_metrics(a_dir), read_metrics(b_dir)
    assert sorted(a) == sorted(b)
    for step in a:
        assert (a[step]["loss"], a[step]["grad_norm"]) == (b[step]["loss"], b[step]["grad_norm"]), step
    assert read_ids(a_dir) == read_ids(b_dir)


def test_a_prefetching_run_stopped_and_resumed_equals_one_without_prefetch(ws, tmp_path):
    """Two loader workers, grad_accum 2, stopped at step 3 (the feed had read a batch ahead)."""

    def cfg(out, **kw):
        c = resume_config(ws, out, 6, feature_cache_mb=64, **kw)
        c["model"]["vision"]["freeze"] = True
        return c

    train(load_config(cfg(tmp_path / "ref")))
    assert train(load_config(cfg(tmp_path / "cut", feature_prefetch=True, stop_after=3)))["global_step"] == 3
    train(load_config(cfg(tmp_path / "cut", feature_prefetch=True, resume=True)))
    assert_same_run(tmp_path / "ref", tmp_path / "cut", 6)


def test_prefetch_without_a_cache_is_refused(ws, tmp_path):
    cfg = cached_run(ws, tmp_path / "run", 0)
    cfg["train"]["feature_prefetch"] = True
    with pytest.raises(ConfigError, match="train.feature_prefetch fills the frozen tower's feature cache"):
        train(load_config(cfg))


def test_prefetch_under_zero3_is_refused(ws, tmp_path):
    from llava_wb.train.checks import check_run_config

    cfg = cached_run(ws, tmp_path / "run", 64)
    cfg["train"].update(feature_prefetch=True, deepspeed=str(ROOT / "configs" / "deepspeed" / "zero3.json"))
    with pytest.raises(ConfigError, match="is ZeRO-3, whose partitioned weights .* train.feature_prefetch"):
        check_run_config(load_config(cfg))
