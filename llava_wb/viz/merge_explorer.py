"""The merge explorer: ``local_merge`` beside ``tome_sd`` in ONE figure that sliders redraw in place.

``explore(image, patch, ...)`` returns a ``MergeExplorer``; display it (``display(w)`` or the last
expression of a cell). Controls: ratio, window side, anchor (``first`` / ``random`` / ``typical``),
the seed of the random anchors, and, given a saved tower (``tower=`` a checkpoint folder such as
``runs/demo/tower/final``), whether similarity is measured on the tower's features or on pixels.
The figure names ratio, window and anchor in every panel title and has a legend.

How it draws, and why this way:

- One matplotlib ``Figure`` made once (not through pyplot, so nothing piles up in
  ``plt.get_fignums()``), cleared and redrawn on every change, and rendered to PNG bytes that are
  set on one ``ipywidgets.Image``: the picture is replaced in place. A callback prints and displays
  nothing (JupyterLab drops output from widget callbacks) and no ``Output`` widget captures anything:
  under papermill, nbclient can block forever on such a capture (jupyter/nbclient#312, seen in
  this repo's runs). ipympl is not installed, so ``%matplotlib widget`` is not an option.
- The explorer is displayed as one output that carries the widget view and, beside it, the PNG of
  the figure at the given values: a live frontend renders the widget (sliders and the image they
  redraw); a headless run (papermill, nbconvert) keeps the PNG as a plain image output. Widget
  callbacks never fire without a frontend, so a headless run draws once.
- Sliders redraw when released (``continuous_update=False``): one redraw per choice.
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from llava_wb.viz import merge as vm

SIMILARITY = {"tower": "tower features", "pixels": "pixels"}


class MergeExplorer:
    """Sliders and one figure (module docstring). ``image``: ``uint8 [H, W, 3]``; ``patch``: pixels
    per patch (ignored with a tower: its own grid is used); ``tower``: a saved tower's folder (or a
    loaded ``VisionTower``); ``similarity``: ``tower`` (default with a tower) or ``pixels``;
    ``placement``: ``after`` the tower (its features are computed once) or ``tower`` (merging
    inside its last ``layers`` layers, recomputed per redraw)."""

    def __init__(
        self,
        image: np.ndarray,
        patch: int = 14,
        *,
        ratio: float = 0.75,
        window: int = 4,
        anchor: str = "first",
        seed: int = 0,
        tower: Any = None,
        tower_type: str | None = None,
        feature_layer: int = -2,
        similarity: str | None = None,
        placement: str = "after",
        layers: int = 1,
        reducers: Sequence[str] = ("local_merge", "tome_sd"),
        fill: str = "mean",
        width: float = 11.0,
        dpi: int = 100,
    ):
        import ipywidgets as widgets
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        vm.anchor_options(anchor)  # a clear error for an unknown anchor, before any work
        similarity = similarity or ("tower" if tower is not None else "pixels")
        if similarity not in SIMILARITY or (similarity == "tower" and tower is None):
            raise ValueError(f"similarity must be 'pixels' or, with a tower, 'tower'; got {similarity!r}")
        if placement not in ("after", "tower"):
            raise ValueError(f"placement must be 'after' or 'tower', got {placement!r}")
        self.reducers, self.fill, self.dpi, self.placement, self.layers = tuple(reducers), fill, dpi, placement, layers
        self._setup_source(image, patch, tower, tower_type, feature_layer)
        gh, gw = self.grid
        controls = {
            "ratio": widgets.FloatSlider(
                value=ratio,
                min=0.0,
                max=0.9375,
                step=0.0625,
                description="ratio",
                continuous_update=False,
                readout_format=".4g",
            ),
            "window": widgets.IntSlider(
                value=window, min=2, max=max(2, window, min(8, gh, gw)), description="window", continuous_update=False
            ),
            "anchor": widgets.Dropdown(options=list(vm.ANCHORS), value=anchor, description="anchor"),
            "seed": widgets.IntSlider(value=seed, min=0, max=99, description="seed", continuous_update=False),
        }
        if self.tower is not None:
            controls["similarity"] = widgets.Dropdown(
                options=[(v, k) for k, v in SIMILARITY.items()], value=similarity, description="similarity"
            )
        self.controls = controls
        controls["seed"].disabled = anchor != "random"
        self.similarity = similarity
        self.figure = Figure(dpi=dpi)
        FigureCanvasAgg(self.figure)
        self.image = widgets.Image(format="png", layout=widgets.Layout(max_width="100%", height="auto"))
        self.status = widgets.HTML()
        self.widget = widgets.VBox([widgets.HBox(list(controls.values())), self.status, self.image])
        self.width, self.outputs, self.numbered, self.draws = width, {}, {}, 0
        self.draw()  # the given values; a bad one raises here, naming it
        for control in controls.values():
            control.observe(self.redraw, names="value")

    def _setup_source(
        self, image: np.ndarray, patch: int, tower: Any, tower_type: str | None, feature_layer: int
    ) -> None:
        """What is shown (``self.shown``, cut into ``self.patch`` pixel patches on ``self.grid``) and
        the similarity features per mode (``None``: the shown pixels themselves)."""
        from PIL import Image

        self.tower, self.tower_name = None, None
        if tower is None:
            self.shown, self.patch = image, patch
            self.grid = (image.shape[0] // patch, image.shape[1] // patch)
            self.features = {"pixels": None}
            return
        import torch

        saved = isinstance(tower, (str, os.PathLike))
        self.tower_name = str(tower) if saved else type(tower).__name__
        self.tower = vm.load_tower(str(tower), tower_type, feature_layer) if saved else tower.eval()
        pix, small = vm.tower_input(self.tower, image)
        gh, gw = self.grid = tuple(self.tower.grid)
        self.patch = max(self.tower.patch_size, max(image.shape[:2]) // max(gh, gw))  # display pixels per patch
        self.shown = np.asarray(Image.fromarray(image).resize((gw * self.patch, gh * self.patch), Image.BICUBIC))
        with torch.no_grad():
            feats = self.tower(pix) if self.placement == "after" else None
        self.pixel_values = pix
        self.features = {"pixels": vm.patchify(small, self.tower.patch_size)[0], "tower": feats}

    def values(self) -> dict[str, Any]:
        """The controls' current values."""
        return {k: c.value for k, c in self.controls.items()}

    def options(self) -> dict[str, Any]:
        """Reducer options of the current values."""
        v = self.values()
        opts = {
            "ratio": v["ratio"],
            "window": [1, v["window"], v["window"]],
            **vm.anchor_options(v["anchor"]),
            "seed": v["seed"],
        }
        if self.tower is not None and v.get("similarity", self.similarity) == "tower" and self.placement == "tower":
            opts.update(placement="tower", layers=self.layers)
        return opts

    def merge(self, reducer: str, options: dict[str, Any]) -> Any:
        """The ``ReducerOutput`` of ``reducer`` on the current similarity source."""
        similarity = self.values().get("similarity", self.similarity)
        if options.get("placement") == "tower":
            out, _, _ = vm.tower_merge(None, self.shown, reducer, options, tower=self.tower)
            return out
        return vm.merge_image(self.shown, reducer, options, patch=self.patch, features=self.features[similarity])

    def _title(self) -> str:
        gh, gw = self.grid
        similarity = self.values().get("similarity", self.similarity)
        if similarity == "tower":
            where = "inside its last layers" if self.placement == "tower" else f"layer {self.tower.feature_layer}"
            source = f"similarity on the features of tower {self.tower_name} ({where})"
        else:
            source = "similarity on raw pixels" + (" (tower's input)" if self.tower is not None else "")
        return f"{gh}x{gw} patches · {source}"

    def draw(self) -> None:
        """Merge with every reducer and redraw the figure; the PNG goes to the image widget."""
        opts = self.options()
        outs = {name: self.merge(name, opts) for name in self.reducers}  # a ValueError leaves the figure as it was
        fig, (gh, gw) = self.figure, self.grid
        n = len(self.reducers)
        panel = (self.width * 0.98 - 0.15 * (n - 1)) / n
        height = panel * gh / gw + 1.9
        fig.clear()
        fig.set_size_inches(self.width, height)
        axes = fig.subplots(1, n, squeeze=False)[0]
        fig.subplots_adjust(left=0.01, right=0.99, top=1 - 0.95 / height, bottom=0.85 / height, wspace=0.15 / panel)
        numbered = {
            name: vm.draw_groups(
                [ax], self.shown, out, self.patch, fill=self.fill, title=vm.panel_title(name, out, opts)
            )
            for ax, (name, out) in zip(axes, outs.items())
        }
        fig.suptitle(self._title(), fontsize=11, y=1 - 0.12 / height, va="top")
        vm.add_legend(fig, fill=self.fill, all_numbered=all(n == outs[k].tokens.shape[1] for k, n in numbered.items()))
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=self.dpi)
        self.image.value = buf.getvalue()
        self.outputs, self.numbered = outs, numbered
        self.draws += 1

    def redraw(self, *_: Any) -> None:
        """Slider callback (live frontends only): redraw in place; a bad combination (a ratio the
        windows cannot reach) is reported above the figure, which keeps the last good choice."""
        self.controls["seed"].disabled = self.controls["anchor"].value != "random"
        try:
            self.draw()
        except ValueError as exc:
            self.status.value = f"<span style='color:#b00'>{exc}</span>"
            return
        self.status.value = ""

    def png(self) -> bytes:
        """The current figure as PNG bytes."""
        return self.image.value

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        bundle = self.widget._repr_mimebundle_(include=include, exclude=exclude)
        bundle["image/png"] = base64.b64encode(self.png()).decode("ascii")
        bundle["text/plain"] = f"<merge explorer: {self._title()}>"
        return bundle


def explore(image: np.ndarray, patch: int = 14, **options: Any) -> MergeExplorer:
    """A ``MergeExplorer`` (``ratio``, ``window``, ``anchor``, ``seed``, ``tower``, ... as there)."""
    return MergeExplorer(image, patch, **options)
