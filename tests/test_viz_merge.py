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
    frames_per_group = [
        {int(p) // 16 for p in (out.group_ids[0] == g).nonzero().flatten()} for g in range(out.tokens.shape[1])
    ]
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


def test_numbers_stay_readable_at_24x24_and_thin_out_when_cells_are_tiny():
    img = vm.sample_image("astronaut", 336)
    out = vm.merge_image(img, "local_merge", {"ratio": 0.75, "window": [1, 4, 4]}, patch=14)
    fig, ax = plt.subplots(figsize=(8, 8))  # 144 tokens on 24x24 patches of ~0.26 in: every one numbered
    assert vm.draw_groups([ax], img, out, 14) == len(ax.texts) == 144
    assert min(t.get_fontsize() for t in ax.texts) >= vm.MIN_FONT
    fig.clear()
    ax = fig.add_subplot(1, 1, 1)
    fig.set_size_inches(3, 3)  # cells too small for every number side by side: readable ones, fewer
    shown = vm.draw_groups([ax], img, out, 14)
    assert 20 < shown == len(ax.texts) < 144 and min(t.get_fontsize() for t in ax.texts) == vm.MIN_FONT
    plt.close(fig)


def test_readable_labels_leave_out_only_overlapping_numbers():
    rows, cols = np.zeros(4), np.array([0.0, 1.0, 2.0, 9.0])  # three neighbours in a row, one far away
    assert vm.readable_labels(rows, cols, font=7.0, cell=20.0).all()  # room for each
    assert vm.readable_labels(rows, cols, font=7.0, cell=5.0).tolist() == [True, False, True, True]


def test_compare_titles_name_ratio_window_anchor_and_have_a_legend():
    img = vm.sample_image("coffee", 112)
    opts = {"ratio": 0.5, "window": [1, 4, 4], **vm.anchor_options("random"), "seed": 3}
    fig = vm.compare(img, {"local_merge": ("local_merge", opts)}, patch=14)
    assert "ratio 0.5 · window 4x4 · anchor random (seed 3)" in fig.axes[0].get_title()
    assert fig.legends and "group border" in [t.get_text() for t in fig.legends[0].get_texts()]
    plt.close(fig)


def test_explorer_redraws_one_figure_in_place():
    from llava_wb.viz import merge_explorer as mx

    before = plt.get_fignums()
    ex = mx.explore(vm.sample_image("astronaut", 112), 14, ratio=0.5, window=4, anchor="first")
    fig, png, groups = ex.figure, ex.png(), ex.outputs["local_merge"].group_ids
    ex.controls["anchor"].value = "random"  # what a slider change does: the observer redraws
    assert plt.get_fignums() == before and ex.figure is fig and len(fig.axes) == 2 and len(fig.legends) == 1
    assert ex.draws == 2 and ex.png() != png and not torch.equal(ex.outputs["local_merge"].group_ids, groups)
    titles = [ax.get_title() for ax in fig.axes]
    assert all("ratio 0.5" in t and "window 4x4" in t and "anchor random (seed 0)" in t for t in titles)
    ex.controls["seed"].value = 7
    seven = ex.outputs["local_merge"].group_ids
    ex.controls["seed"].value = 0
    ex.controls["seed"].value = 7
    assert torch.equal(ex.outputs["local_merge"].group_ids, seven)  # same seed, same groups
    ex.controls["window"].value, ex.controls["ratio"].value = 2, 0.9375  # more merges than 2x2 windows allow
    assert "at most" in ex.status.value and ex.draws == 6  # reported above the figure, the last one kept
    bundle = ex._repr_mimebundle_()  # one output: the live widget, and the PNG for headless runs
    assert "application/vnd.jupyter.widget-view+json" in bundle and len(bundle["image/png"]) > 10_000


def _tiny_tower(path, size=224, patch=16):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(0)
    CLIPVisionModel(
        CLIPVisionConfig(
            image_size=size,
            patch_size=patch,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
        )
    ).save_pretrained(path)
    return str(path)


def test_explorer_on_tower_features_merges_dark_patches_pixels_leave(tmp_path):
    from llava_wb.viz import merge_explorer as mx

    img = vm.sample_image("astronaut", 336)  # dark background at the bottom right
    ex = mx.explore(img, tower=_tiny_tower(tmp_path / "tower"), ratio=0.75, window=4, anchor="first")
    assert ex.grid == (14, 14) and "similarity on the features of tower" in ex.figure.get_suptitle()
    tower_groups = ex.outputs["local_merge"].group_ids
    small = vm.tower_input(ex.tower, img)[1]
    dark = vm.dark_patches(small, 16)
    on_tower = vm.merged_share(ex.outputs["local_merge"], dark)
    ex.controls["similarity"].value = "pixels"
    on_pixels = vm.merged_share(ex.outputs["local_merge"], dark)
    assert dark.sum() >= 20 and not torch.equal(ex.outputs["local_merge"].group_ids, tower_groups)
    assert on_tower > on_pixels, (on_tower, on_pixels)
    assert "similarity on raw pixels" in ex.figure.get_suptitle()
