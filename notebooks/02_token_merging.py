# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 02 · Token merging: which patches merge, and in what order the LLM reads them
#
# `local_merge` (ours) merges each window's most similar patches into the window's destination and
# keeps the survivors in raster order; `tome_sd` (ToMe-SD, the baseline) matches globally and emits
# `[unmerged, destinations]`, so the order the LLM reads is broken. Each panel paints every merged
# group as one region (its mean colour), draws group borders, numbers each output token at its
# position and draws the reading path in sequence order. Then: live sliders, the token budget at
# LLaVA-1.5-7B shapes, and a clip with spatio-temporal (2x2x2) groups.
# Similarity is measured on the patches' pixels, or on a trained tower's features with `TOWER_DIR`.
# All logic lives in `llava_wb.viz.merge`, `llava_wb.viz.merge_explorer`, `llava_wb.model.merging` and `llava_wb.budget`.

# %% tags=["parameters"]
# Parameters (papermill overrides these)
IMAGE = "astronaut"  # astronaut | chelsea | coffee | grace_hopper | synthetic | a file path
SIZE = 336  # pixels (LLaVA-1.5: 336)
PATCH = 14  # pixels per patch (CLIP ViT-L/14 on 336 px: 24x24, 576 patches)
RATIO = 0.75  # fraction of the tokens merged away
WINDOW = [1, 4, 4]  # (frames, rows, cols) per window; one destination each
ANCHOR = "first"  # first patch | random (training-style) | typical (each window's medoid)
SEED = 0  # seed of the random anchors (used with ANCHOR random)
PLACEMENT = "after"  # after the tower | tower (inside its last LAYERS layers; needs TOWER_DIR)
LAYERS = 1
TOWER_DIR = None  # a saved tower (e.g. runs/demo/tower/final): merge on its features
FRAMES = 4  # frames of the panned clip in the video section
OUT_DIR = "../runs/merge_viz"
TEXT_TOKENS = 128  # text tokens per sample in the budget table
RESAMPLE_MODEL = None  # a trained bundle (e.g. runs/demo/train/final) for the resampling section;
# None: a tiny untrained model (shows the mechanics, not a learned choice)
RESAMPLE_RATIO = 0.75
RESAMPLE_CLIP = "needle"  # needle: a long synthetic clip whose answer is in one frame | pan: the photo panned
QUESTIONS = None  # None: two questions about the clip (the needle's colour, another shape's)

# %%
# %matplotlib inline
import os

import matplotlib.pyplot as plt
import numpy as np
from PIL import Image

from llava_wb import budget
from llava_wb.viz import merge as vm

os.makedirs(OUT_DIR, exist_ok=True)
if IMAGE == "synthetic":
    from data_tools.make_synthetic import layout_objects, render_image

    rng = np.random.default_rng(0)
    raw = render_image(layout_objects(rng, 3, 2, SIZE), SIZE, 6, rng, "png")
    import io

    image = np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"))
elif IMAGE in vm.PHOTOS:
    image = vm.sample_image(IMAGE, SIZE)
else:
    image = np.asarray(Image.open(IMAGE).convert("RGB").resize((SIZE, SIZE)))
options = {"ratio": RATIO, "window": WINDOW, **vm.anchor_options(ANCHOR), "seed": SEED}
print(f"{image.shape[0] // PATCH}x{image.shape[1] // PATCH} patches of {PATCH}px; options {options}")

# %% [markdown]
# ## Local merge beside ToMe-SD

# %%
if TOWER_DIR:
    opts = {**options, "placement": PLACEMENT, "layers": LAYERS}
    fig, axes = plt.subplots(1, 2, figsize=(12, 7.2))
    fig.subplots_adjust(left=0.01, right=0.99, top=0.9, bottom=0.12, wspace=0.03)
    for ax, name in zip(axes, ("local_merge", "tome_sd")):
        o = opts if name == "local_merge" else {**options}
        out, small, patch = vm.tower_merge(TOWER_DIR, image, name, o)
        vm.draw_groups([ax], small, out, patch, title=vm.panel_title(f"{name} on tower features", out, o))
    vm.add_legend(fig)
else:
    fig = vm.compare(image, {"local_merge": ("local_merge", options), "tome_sd": ("tome_sd", options)}, patch=PATCH)
path = os.path.join(OUT_DIR, f"merge_{IMAGE if IMAGE in vm.PHOTOS + ('synthetic',) else 'image'}_r{RATIO}.png")
fig.savefig(path, dpi=110, bbox_inches="tight")
plt.show()
print("saved", path)

# %% [markdown]
# ## Explore (ipywidgets)
# One figure, `local_merge` beside `tome_sd`, that the controls redraw in place: ratio, window side,
# anchor (first patch, random member, or each window's medoid), the seed of the random anchors and,
# with `TOWER_DIR`, similarity on the tower's features or on raw pixels. A papermill run shows the
# figure at the parameter values; sliders redraw when released (JupyterLab).

# %%
from IPython.display import display

from llava_wb.viz import merge_explorer as mx

w = mx.explore(
    image,
    PATCH,
    ratio=RATIO,
    window=WINDOW[-1],
    anchor=ANCHOR,
    seed=SEED,
    tower=TOWER_DIR,
    placement=PLACEMENT,
    layers=LAYERS,
)
display(w)

# %% [markdown]
# ## Token budget at LLaVA-1.5-7B shapes (CLIP ViT-L/14-336 + Vicuna-7B)

# %%
rows = budget.budget_table(
    budget.CLIP_L14_336,
    budget.VICUNA_7B,
    {
        "identity (576)": ("identity", {}),
        "avgpool 2x2 (144)": ("avgpool", {}),
        "local_merge r=0.5": ("local_merge", {"ratio": 0.5}),
        "local_merge r=0.75": ("local_merge", {"ratio": 0.75}),
        f"local_merge r={RATIO} {PLACEMENT}": (
            "local_merge",
            {"ratio": RATIO, "window": WINDOW, "placement": PLACEMENT, "layers": LAYERS},
        ),
    },
    text_tokens=TEXT_TOKENS,
)
from IPython.display import Markdown

Markdown(budget.to_markdown(rows))

# %% [markdown]
# ## A clip: spatio-temporal 2x2x2 windows
# A photo panned over `FRAMES` frames; a group that spans two frames has the same colour in both
# (its number sits in its destination's frame).

# %%
clip = vm.pan_clip(image, FRAMES, step=2 * PATCH)
st_opts = {"ratio": RATIO, "window": [2, 2, 2]}
fig = vm.compare(
    clip,
    {"local_merge 2x2x2": ("local_merge", st_opts), "tome_sd 2x2x2": ("tome_sd", st_opts)},
    patch=2 * PATCH,
    numbers=True,
)
fig.savefig(os.path.join(OUT_DIR, "merge_clip.png"), dpi=80, bbox_inches="tight")
plt.show()

# %% [markdown]
# ## Token budget of video and audio
# A clip of `FRAMES` frames (one separator per time slice) and audio through a Whisper-large encoder
# (30 s windows, pooled to 25 or 5 tokens per second), at the same LLM.

# %%
rows = [
    budget.estimate(
        f"{f} frames, {name}",
        budget.CLIP_L14_336,
        budget.VICUNA_7B,
        red,
        opts,
        frames=f,
        separators=True,
        text_tokens=TEXT_TOKENS,
    )
    for f in (FRAMES, 8, 32)
    for name, (red, opts) in {
        "identity": ("identity", {}),
        "local_merge 2x2x2": ("local_merge", {"ratio": 0.875, "window": [2, 2, 2]}),
    }.items()
]
rows += [
    budget.estimate(
        f"{s} s audio, {tps} tokens/s",
        budget.CLIP_L14_336,
        budget.VICUNA_7B,
        images=0,
        audio_seconds=s,
        audio=dict(budget.WHISPER_LARGE_ENCODER, tokens_per_second=tps),
        text_tokens=TEXT_TOKENS,
    )
    for s in (30, 120)
    for tps in (25, 5)
]
Markdown(budget.to_markdown(rows))

# %% [markdown]
# ## Instruction-aware resampling: which tokens a question keeps
# `instruct_resample` keeps the tokens most relevant to the question (each question word ranks the
# projected tokens; plus distinctiveness, and temporal novelty on clips) in (t, h, w) order and merges the rest
# into their nearest kept token. Each row is one question on the same clip: kept patches in full
# colour with a white border, merged ones dimmed and tinted by the token they joined. The default clip
# is a long synthetic needle clip (`data_tools.synth_needle_clip`): the shape the first question names
# shows in one sampled frame only; the first figure is that frame alone as an image.

# %%
from llava_wb.viz import resample as vr

rs_model, rs_tok = vr.resample_model(RESAMPLE_MODEL, ratio=RESAMPLE_RATIO, frames=FRAMES)
frames = rs_model.config.video_frames
if RESAMPLE_CLIP == "needle":  # 4 x frames frames; the needle shows in one segment: one sampled frame holds it
    from data_tools.examples import needle_clip

    raw_clip, needle_meta = needle_clip(frames)
    questions, shown = QUESTIONS or vr.needle_questions(needle_meta), needle_meta["sampled_frame"]
    print(f"needle: the {needle_meta['objects'][needle_meta['needle']]['shape']} in frame {shown} only")
else:
    raw_clip, questions, shown = (
        vm.pan_clip(image, frames, step=2 * PATCH),
        QUESTIONS or ["What colour is the circle?", "Which way does the square move?"],
        0,
    )
rs_clip, rs_values = vr.as_model_input(rs_model, raw_clip)
patch = rs_model.vision_tower.patch_size
outs = vr.kept_for_questions(rs_model, rs_tok, rs_values[shown], questions, kind="image")
fig = vr.draw_kept(rs_clip[shown], outs, questions, patch)
fig.savefig(os.path.join(OUT_DIR, "resample_image.png"), dpi=80, bbox_inches="tight")
plt.show()
outs = vr.kept_for_questions(rs_model, rs_tok, rs_values, questions, kind="video")
fig = vr.draw_kept(rs_clip, outs, questions, patch)
fig.savefig(os.path.join(OUT_DIR, "resample_clip.png"), dpi=80, bbox_inches="tight")
plt.show()
