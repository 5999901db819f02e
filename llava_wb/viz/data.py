"""Figures for the data notebooks: rejection reasons, and a grid of decoded samples with their text."""

from __future__ import annotations

import io
import textwrap
from typing import Mapping, Sequence

from ..data.config import ImageConfig
from ..data.decode import ImageTransform


def plot_reasons(counts: Mapping[str, int], title: str = "rejected records by reason", ax=None):
    """Horizontal bar chart of counts by reason (an empty chart says 'none')."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 0.4 * max(3, len(counts)) + 0.8))
    items = sorted(counts.items(), key=lambda kv: kv[1])
    if items:
        ax.barh([k for k, _ in items], [v for _, v in items], color="tab:red")
        for i, (_, v) in enumerate(items):
            ax.text(v, i, f" {v}", va="center")
    else:
        ax.text(0.5, 0.5, "none", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(title)
    ax.set_xlabel("records")
    return ax.figure


def show_samples(samples: Sequence[dict], image: ImageConfig | None = None, cols: int = 4, width: int = 40):
    """Grid: each raw sample (``RawSample`` output) as the model sees its first image (after pad/resize)
    with the first exchange of its conversation underneath."""
    import matplotlib.pyplot as plt
    from PIL import Image

    transform = ImageTransform(image or ImageConfig(size=224))
    rows = max(1, -(-len(samples) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 4.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, s in zip(axes.flat, samples):
        imgs = s["media"].get("image", [])
        if imgs:
            data = imgs[0]
            ax.imshow(transform.pil(data) if isinstance(data, (bytes, bytearray)) else Image.open(io.BytesIO(data)))
        else:
            ax.text(0.5, 0.5, "text only", ha="center", va="center", transform=ax.transAxes)
        conv = s["conversations"]
        text = " / ".join(f"{t['from']}: {t['value']}" for t in conv[:2]).replace("\n", " ")
        ax.set_title("\n".join(textwrap.wrap(f"[{s['id']}] {text}", width)[:5]), fontsize=8, loc="left")
    fig.tight_layout()
    return fig
