"""Merge overlays: patches in raster order, both fills draw, order detection, clips."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from llava_wb.viz import merge as vm  # noqa: E402


def test_patchify_is_raster_order():
    img = np.zeros((32, 48, 3), dtype=np.uint8)
    img[16:32, 32:48] = 255  # bottom-right patch of a 2x3 grid of 16 px patches
    feats, grid = vm.patchify(img, 16)
    assert grid == (1, 2, 3) and feats.shape == (1, 6, 16 * 16 * 3)
    assert torch.equal(feats[0].mean(1) > 0.5, torch.tensor([False] * 5 + [True]))


def test_overlays_draw_with_both_fills_and_detect_order():
    img = vm.sample_image("chelsea", 112)
    local = vm.merge_image(img, "local_merge", {"ratio": 0.5}, patch=14)
    tome = vm.merge_image(img, "tome_sd", {"ratio": 0.5}, patch=14)
    assert vm.order_kept(local) and not vm.order_kept(tome)
    fig, axes = plt.subplots(1, 2)
    vm.draw_groups([axes[0]], img, local, 14, fill="mean")
    vm.draw_groups([axes[1]], img, tome, 14, fill="distinct")
    assert len(axes[0].texts) == local.tokens.shape[1]  # every output token numbered
    plt.close(fig)


def test_clip_groups_span_frames():
    clip = vm.pan_clip(vm.sample_image("coffee", 64), frames=4, step=8)
    assert clip.shape == (4, 64, 64, 3)
    out = vm.merge_image(clip, "local_merge", {"ratio": 0.875, "window": [2, 2, 2]}, patch=16)
    frames_per_group = [{int(p) // 16 for p in (out.group_ids[0] == g).nonzero().flatten()} for g in range(out.tokens.shape[1])]
    assert all(len(f) == 2 for f in frames_per_group)


def test_anchor_modes_map_to_reducer_options():
    assert vm.anchor_options("typical") == {"random_dst": False, "destination": "typical"}
    assert vm.anchor_options("random")["random_dst"] is True
    with pytest.raises(ValueError, match="anchor must be one of first, random, typical"):
        vm.anchor_options("centre")


@pytest.mark.parametrize("reducer", ["local_merge", "tome_sd"])
def test_random_anchor_is_random_and_seeded(reducer):
    img = vm.sample_image("astronaut", 112)

    def groups(anchor, seed=0):
        opts = {"ratio": 0.5, "window": [1, 4, 4], **vm.anchor_options(anchor), "seed": seed}
        return vm.merge_image(img, reducer, opts, patch=14).group_ids

    first, random0 = groups("first"), groups("random", 0)
    assert not torch.equal(random0, first)  # the explorer's reducer runs in eval mode: random must still draw
    assert torch.equal(groups("random", 0), random0) and not torch.equal(groups("random", 1), random0)
