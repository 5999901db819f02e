"""Overlays for token reducers: which patches merged, and in what order the survivors reach the LLM.

``merge_image`` cuts an image (or a clip, ``[T, H, W, 3]``) into patches and runs a registered
reducer on them (similarity on the patches' pixels by default, or on features you pass: a tower's;
``tower_merge`` runs a saved tower). ``draw_groups`` paints each merged group as one region (its
mean colour, or a distinct colour per group) with group borders, numbers the output tokens at their
positions (font sized to the patch cells; numbers that would overlap are left out) and draws the
reading path in sequence order; on a clip it draws one panel per frame, so a group spanning two
frames shows up in both in the same colour (its number sits in its destination's frame).
``compare`` puts several reducers side by side, e.g. ``local_merge`` (raster path) beside
``tome_sd`` (the path jumps: its order is broken), titles naming ratio, window and anchor, with a
legend. ``sample_image`` returns real photographs that ship with scikit-image and matplotlib. The
interactive explorer is ``llava_wb.viz.merge_explorer``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

PHOTOS = ("astronaut", "chelsea", "coffee", "grace_hopper")


def sample_image(name: str = "astronaut", size: int = 336) -> np.ndarray:
    """A real photo as ``uint8 [size, size, 3]`` (centre square crop, resized)."""
    from PIL import Image

    if name == "grace_hopper":
        from matplotlib import cbook

        with cbook.get_sample_data("grace_hopper.jpg") as f:
            img = Image.open(f).convert("RGB")
    elif name in PHOTOS:
        from skimage import data

        img = Image.fromarray(getattr(data, name)()).convert("RGB")
    else:
        raise ValueError(f"unknown sample image {name!r}; known: {', '.join(PHOTOS)}")
    w, h = img.size
    s = min(w, h)
    img = img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    return np.asarray(img.resize((size, size), Image.BICUBIC))


def as_clip(image: np.ndarray) -> np.ndarray:
    """``[H, W, 3]`` -> ``[1, H, W, 3]``; clips pass through."""
    return image[None] if image.ndim == 3 else image


def patchify(clip: np.ndarray, patch: int) -> tuple[Any, tuple[int, int, int]]:
    """Pixel patches as features ``[1, T*H*W, 3*patch*patch]`` (raster order) and the grid."""
    import torch

    clip = as_clip(clip).astype(np.float32) / 255.0
    t, h, w, _ = clip.shape
    gh, gw = h // patch, w // patch
    x = clip[:, : gh * patch, : gw * patch].reshape(t, gh, patch, gw, patch, 3).transpose(0, 1, 3, 2, 4, 5)
    return torch.from_numpy(np.ascontiguousarray(x.reshape(1, t * gh * gw, -1))), (t, gh, gw)


def build_shown(reducer: str, options: Mapping[str, Any] | None) -> Any:
    """The reducer ``reducer`` as an overlay shows it: in eval mode, except with ``random_dst``, which
    only draws destinations in training mode; then it runs in training mode so ``anchor=random``
    really is random (drawn from ``seed``: the same seed gives the same groups)."""
    from llava_wb.model.reducers import build_reducer

    options = dict(options or {})
    return build_reducer(reducer, options).train(bool(options.get("random_dst")))


def merge_image(
    clip: np.ndarray, reducer: str, options: Mapping[str, Any] | None = None, *, patch: int = 16, features: Any = None
) -> Any:
    """Run reducer ``reducer`` on the image's patches (``build_shown``: eval mode, training-style
    random destinations with ``random_dst``); returns its ``ReducerOutput``.
    ``features [1, N, D]`` (e.g. a tower's patch features) replace the pixels as the similarity metric."""
    import torch

    pixels, grid = patchify(clip, patch)
    red = build_shown(reducer, options)
    with torch.no_grad():
        out = red(pixels, grid, metric=features)
    out.grid = grid
    return out


def group_colours(clip: np.ndarray, out: Any, patch: int, mode: str = "mean") -> np.ndarray:
    """``[M, 3]`` float colours per output token: the group's mean pixel colour, or distinct hues."""
    if mode == "distinct":
        import matplotlib

        m = int(out.group_ids.max()) + 1
        rng = np.random.default_rng(0)
        return np.asarray(matplotlib.colormaps["tab20"](rng.permutation(m) % 20))[:, :3]
    pixels, _ = patchify(clip, patch)
    means = pixels[0].view(pixels.shape[1], -1, 3).mean(1).numpy()  # per patch mean colour
    gid = out.group_ids[0].numpy()
    sums = np.zeros((gid.max() + 1, 3))
    np.add.at(sums, gid, means)
    return sums / np.bincount(gid)[:, None]


MIN_FONT, MAX_FONT = 7.0, 12.0  # points: token numbers never smaller (where they would overlap, some are left out)
BORDER = "0.35"  # group borders (grey)
PATH_COLOUR = "crimson"


LABEL_EM = 0.62  # width of a digit, in font sizes
LABEL_PAD = 0.6  # box padding and a gap, in font sizes


def label_font(ax: Any, grid: tuple[int, int], tokens: int) -> tuple[float, float]:
    """``(font size, patch cell side)`` in points for numbering ``tokens`` output tokens on a
    ``grid`` of patches drawn on ``ax``: the largest font whose longest number fits one cell, kept
    between ``MIN_FONT`` and ``MAX_FONT`` (at ``MIN_FONT`` adjacent numbers may not fit side by
    side: ``readable_labels`` then leaves some out)."""
    fig = ax.figure
    box = ax.get_position()
    cell = min(box.width * fig.get_figwidth() / grid[1], box.height * fig.get_figheight() / grid[0]) * 72
    font = cell * 0.95 / (LABEL_EM * len(str(max(tokens - 1, 0))) + LABEL_PAD)
    return float(np.clip(font, MIN_FONT, MAX_FONT)), cell


def readable_labels(rows: np.ndarray, cols: np.ndarray, font: float, cell: float) -> np.ndarray:
    """``bool [M]``: which of the numbers (token j at patch ``rows[j], cols[j]``; its label is as
    wide as ``j`` has digits) are drawn: in sequence order, each one that overlaps none drawn before
    (all of them where the font fits a cell)."""
    m = len(rows)
    width = (LABEL_EM * np.array([len(str(j)) for j in range(m)]) + LABEL_PAD) * font / cell  # in cells
    height = 1.25 * font / cell
    keep = np.zeros(m, dtype=bool)
    for j in range(m):
        placed = np.nonzero(keep[:j])[0]
        clash = (np.abs(cols[placed] - cols[j]) * 2 < width[placed] + width[j]) & (
            np.abs(rows[placed] - rows[j]) < height
        )
        keep[j] = not clash.any()
    return keep


def draw_groups(
    axes: Any,
    clip: np.ndarray,
    out: Any,
    patch: int,
    *,
    fill: str = "mean",
    numbers: bool = True,
    path: bool = True,
    title: str = "",
) -> int:
    """Paint groups, borders, token numbers and the reading path on ``axes`` (one per frame).
    Numbers are sized to the patch cells on the figure (``label_font``); where cells are too small
    for readable numbers side by side some are left out (``readable_labels``). Returns how many
    tokens are numbered."""
    clip = as_clip(clip)
    t, gh, gw = out.grid
    axes = np.atleast_1d(axes).ravel()
    gid = out.group_ids[0].numpy().reshape(t, gh, gw)
    colours = group_colours(clip, out, patch, fill)
    pos = out.positions[0].numpy()
    ft, fy, fx = pos // (gh * gw), (pos // gw) % gh, pos % gw
    cy, cx = (fy + 0.5) * patch, (fx + 0.5) * patch
    font, cell = label_font(axes[0], (gh, gw), len(pos))
    shown = np.zeros(len(pos), dtype=bool)
    for f in range(t):
        here = np.nonzero(ft == f)[0]
        shown[here] = readable_labels(fy[here], fx[here], font, cell)
    for f in range(t):
        ax = axes[f]
        painted = np.kron(colours[gid[f]], np.ones((patch, patch, 1)))  # [gh*p, gw*p, 3]
        ax.imshow(clip[f, : gh * patch, : gw * patch], alpha=1.0)
        ax.imshow(painted, alpha=0.78 if fill == "mean" else 0.55)
        lab = np.kron(gid[f], np.ones((patch, patch), dtype=int))
        edge = np.zeros(lab.shape, dtype=bool)
        edge[:, 1:] |= lab[:, 1:] != lab[:, :-1]
        edge[1:, :] |= lab[1:, :] != lab[:-1, :]
        ax.imshow(np.ma.masked_where(~edge, np.ones_like(lab)), cmap="gray", vmin=0, vmax=1 / 0.35, alpha=0.9)
        here = ft == f
        if path:
            ax.plot(cx[here], cy[here], "-", color="white", lw=1.6, alpha=0.9)
            ax.plot(cx[here], cy[here], "-", color=PATH_COLOUR, lw=0.8, alpha=0.9)
        if numbers:
            for j in np.nonzero(here & shown)[0]:
                ax.text(
                    cx[j],
                    cy[j],
                    str(j),
                    ha="center",
                    va="center",
                    fontsize=font,
                    color="black",
                    bbox={"boxstyle": "round,pad=0.12", "fc": "white", "ec": "none", "alpha": 0.8},
                )
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"{title} · frame {f}" if t > 1 else title, fontsize=10)
    return int(shown.sum()) if numbers else 0


def describe(options: Mapping[str, Any]) -> str:
    """``ratio 0.75 · window 4x4 · anchor random (seed 3)``: what a merge panel was drawn with."""
    window = list(options.get("window", (2, 2, 2)))
    if len(window) == 3 and window[0] == 1:
        window = window[1:]  # one-frame window: rows x cols
    budget = f"ratio {options['ratio']:g}" if options.get("ratio") is not None else f"{options.get('tokens')} tokens"
    if options.get("random_dst"):
        anchor = f"random (seed {options.get('seed')})"
    else:
        anchor = options.get("destination", "first")
    return f"{budget} · window {'x'.join(str(w) for w in window)} · anchor {anchor}"


LEGEND_TWO_COLUMNS = 9.5  # inches: narrower figures get a one-column legend (LEGEND_INCHES high)
LEGEND_INCHES = {1: 1.3, 2: 0.8}


def add_legend(fig: Any, *, fill: str = "mean", all_numbered: bool = True) -> Any:
    """The figure's legend, below the panels: what the fill, the borders, the numbers and the line
    mean (leave ``LEGEND_INCHES`` free at the bottom)."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [
        Patch(
            facecolor="#b08a6a",
            alpha=0.8,
            label="merged group = one output token (fill: "
            + ("its patches' mean colour)" if fill == "mean" else "one colour per group)"),
        ),
        Line2D(
            [],
            [],
            ls="",
            marker="$7$",
            markersize=9,
            color="black",
            label="token's place in the LLM's input, on its destination patch"
            + ("" if all_numbered else "\n(numbers left out where they would overlap)"),
        ),
        Line2D([], [], color=BORDER, lw=2.5, label="group border"),
        Line2D([], [], color=PATH_COLOUR, lw=1.5, label="reading path (the order the LLM reads the tokens)"),
    ]
    ncol = 2 if fig.get_figwidth() >= LEGEND_TWO_COLUMNS else 1
    return fig.legend(handles=handles, loc="lower center", ncol=ncol, fontsize=9, frameon=False)


def order_kept(out: Any) -> bool:
    """True when the output tokens are in ascending raster order (what the LLM's positions assume)."""
    pos = out.positions[0]
    return bool((pos[1:] > pos[:-1]).all())


def panel_title(label: str, out: Any, options: Mapping[str, Any]) -> str:
    """Two lines: ``label: M tokens (raster order / order broken)`` and ``describe(options)``."""
    tag = "raster order" if order_kept(out) else "order broken"
    return f"{label}: {out.tokens.shape[1]} tokens ({tag})\n{describe(options)}"


def compare(
    clip: np.ndarray,
    reducers: Mapping[str, tuple[str, Mapping[str, Any]]],
    *,
    patch: int = 16,
    fill: str = "mean",
    features: Any = None,
    numbers: bool = True,
):
    """One row per reducer (one panel per frame): ``{label: (reducer, options)}`` -> figure with a
    legend; each title names the ratio, window and anchor."""
    import matplotlib.pyplot as plt

    clip = as_clip(clip)
    t = clip.shape[0]
    width = 4.2 * t
    legend = LEGEND_INCHES[2 if width >= LEGEND_TWO_COLUMNS else 1]
    fig, axes = plt.subplots(len(reducers), t, figsize=(width, 4.4 * len(reducers) + legend), squeeze=False)
    fig.subplots_adjust(
        left=0.02,
        right=0.98,
        top=1 - 0.45 / fig.get_figheight(),
        bottom=legend / fig.get_figheight(),
        hspace=0.25,
        wspace=0.05,
    )
    all_numbered = True
    for row, (label, (name, options)) in zip(axes, reducers.items()):
        out = merge_image(clip, name, options, patch=patch, features=features)
        numbered = draw_groups(
            row, clip, out, patch, fill=fill, numbers=numbers, title=panel_title(label, out, options)
        )
        all_numbered &= numbered == out.tokens.shape[1]
    add_legend(fig, fill=fill, all_numbered=all_numbered or not numbers)
    return fig


def dark_patches(clip: np.ndarray, patch: int, threshold: float = 0.15) -> np.ndarray:
    """``bool [T*H*W]``: patches whose mean brightness (0..1) is below ``threshold``."""
    pixels, _ = patchify(clip, patch)
    return pixels[0].mean(1).numpy() < threshold


def merged_share(out: Any, mask: np.ndarray | None = None) -> float:
    """Share of the patches (those in ``mask``, default all) that merged with another (group size > 1)."""
    gid = out.group_ids[0].numpy()
    merged = np.bincount(gid)[gid] > 1
    return float(merged[mask].mean() if mask is not None else merged.mean())


def pan_clip(image: np.ndarray, frames: int = 4, step: int = 16) -> np.ndarray:
    """A clip from one photo: the view pans ``step`` pixels right per frame (same size as ``image``)."""
    w = image.shape[1]
    wide = np.concatenate([image, image[:, ::-1]], axis=1)  # mirrored so the pan never runs out
    return np.stack([wide[:, f * step : f * step + w] for f in range(frames)])


def load_tower(tower_dir: str, tower_type: str | None = None, feature_layer: int = -2) -> Any:
    """A saved tower (a transformers checkpoint folder, e.g. ``runs/demo/tower/final``) in eval mode;
    ``tower_type`` (a ``TOWERS`` name) defaults to the one its ``config.json`` names."""
    import json
    import os

    from llava_wb.model.towers import build_tower, tower_name_for

    if tower_type is None:
        config = os.path.join(tower_dir, "config.json")
        if not os.path.isfile(config):
            raise FileNotFoundError(f"{tower_dir} holds no config.json: not a saved tower (e.g. runs/demo/tower/final)")
        with open(config, encoding="utf-8") as f:
            model_type = json.load(f).get("model_type", "")
        try:
            tower_type = tower_name_for(model_type)
        except ValueError:  # a full CLIP/SigLIP checkpoint names the whole model
            tower_type = tower_name_for(f"{model_type}_vision_model")
    return build_tower(tower_type, path=tower_dir, feature_layer=feature_layer).eval()


def tower_input(tower: Any, image: np.ndarray) -> tuple[Any, np.ndarray]:
    """``(pixel_values [1, 3, S, S], the image resized to S x S)``: ``image`` as ``tower`` sees it."""
    from PIL import Image

    from llava_wb.data.config import ImageConfig
    from llava_wb.data.decode import ImageTransform

    size = tower.image_size
    small = np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC))
    cfg = ImageConfig(size=size, aspect="resize", mean=tower.image_mean, std=tower.image_std)
    return ImageTransform(cfg)(_png_bytes(small))[None], small


def tower_merge(
    tower_dir: str | None,
    image: np.ndarray,
    reducer: str,
    options: Mapping[str, Any],
    *,
    tower_type: str | None = None,
    feature_layer: int = -2,
    tower: Any = None,
) -> tuple[Any, np.ndarray, int]:
    """Merge with a saved tower's view of ``image`` (or an already loaded ``tower``): similarity on
    its features (``placement: after``) or inside it (``placement: tower``). Returns
    ``(ReducerOutput, resized image, patch)``."""
    import torch

    tower = tower if tower is not None else load_tower(tower_dir, tower_type, feature_layer)
    pix, small = tower_input(tower, image)
    red = build_shown(reducer, options)
    grid = (1, *tower.grid)
    with torch.no_grad():
        if getattr(red, "placement", "after") == "tower":
            _, out = tower.forward_merged(pix, red, grid)
        else:
            out = red(tower(pix), grid)
    out.grid = grid
    return out, small, tower.patch_size


def _png_bytes(arr: np.ndarray) -> bytes:
    """PNG bytes of an image array (what ``ImageTransform`` decodes)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


ANCHORS = ("first", "random", "typical")


def anchor_options(anchor: str) -> dict[str, Any]:
    """Merge-reducer options for an anchor (destination) mode: ``first`` patch of each window,
    ``random`` member (training-style draws), or ``typical``: each window's medoid."""
    if anchor not in ANCHORS:
        raise ValueError(f"anchor must be one of {', '.join(ANCHORS)}; got {anchor!r}")
    return {"random_dst": anchor == "random", "destination": "typical" if anchor == "typical" else "first"}
