"""Overlays for token reducers: which patches merged, and in what order the survivors reach the LLM.

``merge_image`` cuts an image (or a clip, ``[T, H, W, 3]``) into patches and runs a registered
reducer on them (similarity on the patches' pixels by default, or on features you pass: a tower's).
``draw_groups`` paints each merged group as one region (its mean colour, or a distinct colour per
group) with group borders, numbers every output token at its position and draws the reading path in
sequence order; on a clip it draws one panel per frame, so a group spanning two frames shows up in
both in the same colour (its number sits in its destination's frame). ``compare`` puts several reducers side by side, e.g.
``local_merge`` (raster path) beside ``tome_sd`` (the path jumps: its order is broken).
``sample_image`` returns real photographs that ship with scikit-image and matplotlib.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

PHOTOS = ("astronaut", "chelsea", "coffee", "grace_hopper")


def sample_image(name: str = "astronaut", size: int = 336) -> np.ndarray:
    """A real photo as ``uint8 [size, size, 3]`` (centre square crop, resized)."""
    from PIL import Image

    if name == "grace_hopper":
        import matplotlib.cbook as cbook

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
    x = clip[:, :gh * patch, :gw * patch].reshape(t, gh, patch, gw, patch, 3).transpose(0, 1, 3, 2, 4, 5)
    return torch.from_numpy(np.ascontiguousarray(x.reshape(1, t * gh * gw, -1))), (t, gh, gw)


def build_shown(reducer: str, options: Mapping[str, Any] | None) -> Any:
    """The reducer ``reducer`` as an overlay shows it: in eval mode, except with ``random_dst``, which
    only draws destinations in training mode; then it runs in training mode so ``anchor=random``
    really is random (drawn from ``seed``: the same seed gives the same groups)."""
    from llava_wb.model.reducers import build_reducer

    options = dict(options or {})
    return build_reducer(reducer, options).train(bool(options.get("random_dst")))


def merge_image(clip: np.ndarray, reducer: str, options: Mapping[str, Any] | None = None, *, patch: int = 16,
                features: Any = None) -> Any:
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


def draw_groups(axes: Any, clip: np.ndarray, out: Any, patch: int, *, fill: str = "mean", numbers: bool = True,
                path: bool = True, title: str = "", max_numbers: int = 400) -> None:
    """Paint groups, borders, token numbers and the reading path on ``axes`` (one per frame)."""
    clip = as_clip(clip)
    t, gh, gw = out.grid
    axes = np.atleast_1d(axes).ravel()
    gid = out.group_ids[0].numpy().reshape(t, gh, gw)
    colours = group_colours(clip, out, patch, fill)
    pos = out.positions[0].numpy()
    ft, fy, fx = pos // (gh * gw), (pos // gw) % gh, pos % gw
    cy, cx = (fy + 0.5) * patch, (fx + 0.5) * patch
    for f in range(t):
        ax = axes[f]
        painted = np.kron(colours[gid[f]], np.ones((patch, patch, 1)))  # [gh*p, gw*p, 3]
        ax.imshow(clip[f, :gh * patch, :gw * patch], alpha=1.0)
        ax.imshow(painted, alpha=0.78 if fill == "mean" else 0.55)
        lab = np.kron(gid[f], np.ones((patch, patch), dtype=int))
        edge = np.zeros(lab.shape, dtype=bool)
        edge[:, 1:] |= lab[:, 1:] != lab[:, :-1]
        edge[1:, :] |= lab[1:, :] != lab[:-1, :]
        ax.imshow(np.ma.masked_where(~edge, np.ones_like(lab)), cmap="gray", vmin=0, vmax=2, alpha=0.9)
        here = ft == f
        if path:
            ax.plot(cx[here], cy[here], "-", color="white", lw=1.6, alpha=0.9)
            ax.plot(cx[here], cy[here], "-", color="crimson", lw=0.8, alpha=0.9)
        if numbers and len(pos) <= max_numbers:
            for j in np.nonzero(here)[0]:
                ax.text(cx[j], cy[j], str(j), ha="center", va="center", fontsize=max(4, min(9, 220 // max(gh, gw) // 2)),
                        color="black", bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.7})
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"{title} · frame {f}" if t > 1 else title, fontsize=9)


def order_kept(out: Any) -> bool:
    """True when the output tokens are in ascending raster order (what the LLM's positions assume)."""
    pos = out.positions[0]
    return bool((pos[1:] > pos[:-1]).all())


def compare(clip: np.ndarray, reducers: Mapping[str, tuple[str, Mapping[str, Any]]], *, patch: int = 16,
            fill: str = "mean", features: Any = None, numbers: bool = True):
    """One row per reducer (one panel per frame): ``{label: (reducer, options)}`` -> figure."""
    import matplotlib.pyplot as plt

    clip = as_clip(clip)
    t = clip.shape[0]
    fig, axes = plt.subplots(len(reducers), t, figsize=(4.2 * t, 4.4 * len(reducers)), squeeze=False)
    for row, (label, (name, options)) in zip(axes, reducers.items()):
        out = merge_image(clip, name, options, patch=patch, features=features)
        tag = "raster order" if order_kept(out) else "order broken"
        draw_groups(row, clip, out, patch, fill=fill, numbers=numbers,
                    title=f"{label}: {out.tokens.shape[1]} tokens ({tag})")
    fig.tight_layout()
    return fig


def pan_clip(image: np.ndarray, frames: int = 4, step: int = 16) -> np.ndarray:
    """A clip from one photo: the view pans ``step`` pixels right per frame (same size as ``image``)."""
    h, w, _ = image.shape
    wide = np.concatenate([image, image[:, ::-1]], axis=1)  # mirrored so the pan never runs out
    return np.stack([wide[:, f * step:f * step + w] for f in range(frames)])


def tower_merge(tower_dir: str, image: np.ndarray, reducer: str, options: Mapping[str, Any], *,
                tower_type: str = "clip", feature_layer: int = -2) -> tuple[Any, np.ndarray, int]:
    """Merge with a saved tower's view of ``image``: similarity on its features (``placement:
    after``) or inside it (``placement: tower``). Returns ``(ReducerOutput, resized image, patch)``."""
    import torch
    from PIL import Image

    from llava_wb.data.config import ImageConfig
    from llava_wb.data.decode import ImageTransform
    from llava_wb.model.towers import build_tower

    tower = build_tower(tower_type, path=tower_dir, feature_layer=feature_layer).eval()
    size, patch = tower.image_size, tower.patch_size
    small = np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC))
    cfg = ImageConfig(size=size, aspect="resize", mean=tower.image_mean, std=tower.image_std)
    pix = ImageTransform(cfg)(_png_bytes(small))[None]
    red = build_shown(reducer, options)
    grid = (1, *tower.grid)
    with torch.no_grad():
        if getattr(red, "placement", "after") == "tower":
            _, out = tower.forward_merged(pix, red, grid)
        else:
            out = red(tower(pix), grid)
    out.grid = grid
    return out, small, patch


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


def explore(image: np.ndarray, patch: int, *, ratio: float = 0.75, window: int = 4, anchor: str = "first"):
    """ipywidgets sliders (ratio, window side, anchor) redrawing ``local_merge`` beside ``tome_sd``
    into an Output widget. The first figure (the given values) is displayed as a plain cell output,
    not captured by the Output widget, so a notebook run without a live frontend (papermill) shows it
    and never routes output through a widget: nbclient could block on that capture (seen under
    load: the cell never finished; jupyter/nbclient#312)."""
    import ipywidgets as widgets
    import matplotlib.pyplot as plt
    from IPython.display import display

    side = image.shape[0] // patch
    controls = {
        "ratio": widgets.FloatSlider(value=ratio, min=0.0, max=0.9375, step=0.0625, description="ratio"),
        "window": widgets.IntSlider(value=window, min=2, max=max(2, min(8, side)), description="window"),
        "anchor": widgets.Dropdown(options=list(ANCHORS), value=anchor, description="anchor"),
    }
    out = widgets.Output()

    def draw() -> None:
        v = {k: c.value for k, c in controls.items()}
        opts = {"ratio": v["ratio"], "window": [1, v["window"], v["window"]], **anchor_options(v["anchor"]), "seed": 0}
        try:
            fig = compare(image, {"local_merge": ("local_merge", opts), "tome_sd": ("tome_sd", opts)}, patch=patch)
        except ValueError as exc:  # the ratio asks for more merges than the windows allow
            print(exc)
            return
        display(fig)
        plt.close(fig)

    def redraw(*_: Any) -> None:  # slider moves (live frontend only): into the Output widget
        with out:
            out.clear_output(wait=True)
            draw()

    for c in controls.values():
        c.observe(redraw, names="value")
    draw()
    return widgets.VBox([widgets.HBox(list(controls.values())), out])
