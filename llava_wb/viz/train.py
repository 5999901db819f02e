"""Figures for training and evaluation notebooks: loss/LR/throughput curves, accuracy vs baseline."""

from __future__ import annotations

import json
from collections.abc import Mapping


def read_metrics(path: str) -> list[dict]:
    """Rows of a run's ``metrics.jsonl`` (one JSON object per logging event)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_training(rows: list[dict]):
    """Three panels: training loss, learning rate, and samples/s + LLM tokens/s against step."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 3.6))
    series = {
        k: [(r["step"], r[k]) for r in rows if k in r]
        for k in ("loss", "learning_rate", "samples_per_s", "tokens_per_s")
    }
    for ax, key, title in ((axes[0], "loss", "training loss"), (axes[1], "learning_rate", "learning rate")):
        if series[key]:
            ax.plot(*zip(*series[key]), marker=".")
        ax.set_title(title)
        ax.set_xlabel("step")
    if series["samples_per_s"]:
        axes[2].plot(*zip(*series["samples_per_s"]), color="tab:green", label="samples/s")
    axes[2].set_ylabel("samples/s")
    twin = axes[2].twinx()
    if series["tokens_per_s"]:
        twin.plot(*zip(*series["tokens_per_s"]), color="tab:purple", label="LLM tokens/s")
    twin.set_ylabel("LLM tokens/s")
    axes[2].set_title("throughput (green: samples/s, purple: tokens/s)")
    axes[2].set_xlabel("step")
    fig.tight_layout()
    return fig


def plot_eval(per_type: Mapping[str, Mapping], title: str = "held-out exact match"):
    """Accuracy per question type beside the majority-class baseline."""
    import matplotlib.pyplot as plt
    import numpy as np

    types = list(per_type)
    x = np.arange(len(types))
    fig, ax = plt.subplots(figsize=(1.3 * len(types) + 2, 3.6))
    acc = [100 * per_type[t]["accuracy"] for t in types]
    base = [100 * per_type[t]["majority_accuracy"] for t in types]
    ax.bar(x - 0.2, acc, 0.4, label="model")
    ax.bar(x + 0.2, base, 0.4, label="majority baseline", color="lightgray")
    for i, v in enumerate(acc):
        ax.text(i - 0.2, v + 1, f"{v:.0f}", ha="center", fontsize=8)
    ax.set_xticks(x, types)
    ax.set_ylim(0, 105)
    ax.set_ylabel("% correct")
    ax.set_title(title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig
