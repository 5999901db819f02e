"""Figures for the data notebooks: rejection reasons, and a grid of decoded samples with their text."""

from __future__ import annotations

import io
import textwrap
from collections.abc import Mapping, Sequence

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


def filmstrip(data: bytes, frames: int = 4):
    """The first video of a sample as ``frames`` uniformly sampled frames side by side."""
    import numpy as np

    from ..data.errors import SampleError
    from ..data.video import read_video

    try:
        clip, _ = read_video(data, num_frames=frames)
    except SampleError:
        return np.full((8, 8 * frames, 3), 128, dtype=np.uint8)  # undecodable: a gray strip (the loader skips it)
    return np.concatenate(list(clip), axis=1)


def spectrogram(data: bytes, seconds: float = 4.0):
    """Whisper log-mel features (80 bins x 10 ms) of the first ``seconds`` of an audio file."""
    from ..data.audio import features, read_audio

    wave, _ = read_audio(data)
    return features(wave, sampling_rate=16000, seconds=min(seconds, max(len(wave) / 16000, 0.1)), n_mels=80).numpy()


def show_samples(samples: Sequence[dict], image: ImageConfig | None = None, cols: int = 4, width: int = 40):
    """Grid: each raw sample (``RawSample`` output) as the model sees its first image (after pad/resize),
    a filmstrip of its video or the log-mel spectrogram of its audio, with the first exchange of its
    conversation underneath."""
    import matplotlib.pyplot as plt
    from PIL import Image

    transform = ImageTransform(image or ImageConfig(size=224))
    rows = max(1, -(-len(samples) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 4.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, s in zip(axes.flat, samples):
        media = s["media"]
        if media.get("image"):
            data = media["image"][0]
            ax.imshow(transform.pil(data) if isinstance(data, (bytes, bytearray)) else Image.open(io.BytesIO(data)))
        elif media.get("video"):
            ax.imshow(filmstrip(media["video"][0]))
        elif media.get("audio"):
            ax.imshow(spectrogram(media["audio"][0]), origin="lower", aspect="auto", cmap="magma")
        else:
            ax.text(0.5, 0.5, "text only", ha="center", va="center", transform=ax.transAxes)
        conv = s["conversations"]
        text = " / ".join(f"{t['from']}: {t['value']}" for t in conv[:2]).replace("\n", " ")
        ax.set_title("\n".join(textwrap.wrap(f"[{s['id']}] {text}", width)[:5]), fontsize=8, loc="left")
    fig.tight_layout()
    return fig
