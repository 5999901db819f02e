"""The frozen tower's feature cache (``llava_wb.model.feature_cache``): served features equal computed
ones, any change of the tower's weights empties it, a tower that trains or draws dropout never uses
it, and a training run with it takes the same steps as one without."""

from __future__ import annotations

import pytest
import torch
from train_fixtures import make_workspace, read_ids, read_metrics, tiny_config

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
