"""Vision towers: transformers vision encoders that turn images into patch features.

``VisionTower`` wraps one transformers vision model (``self.model``) and returns the hidden state of
``feature_layer`` (LLaVA: -2) with the CLS token dropped (``select="patch"``, LLaVA's default) or
kept in front (``select="cls_patch"``): ``forward(pixel_values [N, 3, S, S]) -> [N, P + H*W, D]``
with ``P = num_prefix_tokens``. It exposes ``grid`` (patch rows, cols), ``hidden_size``,
``image_size``, ``patch_size`` and the preprocessing defaults ``image_mean`` / ``image_std``.

A new tower is a small subclass registered in ``TOWERS``::

    @TOWERS.register("dinov2")
    class DINOv2Tower(VisionTower):
        hf_model_type = "dinov2"
        has_cls = True
        image_mean, image_std = IMAGENET_MEAN, IMAGENET_STD

        @classmethod
        def model_class(cls):
            from transformers import Dinov2Model
            return Dinov2Model

Towers build from a config (``build_tower(name, config=...)``) or from a local checkpoint folder
(``path``; a full CLIP/SigLIP checkpoint works, its text half is ignored).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from llava_wb.data.config import CLIP_MEAN, CLIP_STD
from llava_wb.model.config import SELECT_STRATEGIES
from llava_wb.registry import Registry

if TYPE_CHECKING:
    from transformers import PreTrainedConfig, PreTrainedModel

SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)


class VisionTower(nn.Module):
    """Base class of the vision towers (see the module docstring)."""

    hf_model_type: ClassVar[str] = ""  # transformers ``model_type`` of the vision config
    has_cls: ClassVar[bool] = True  # the encoder puts a CLS token in front of the patches
    image_mean: ClassVar[tuple[float, float, float]] = CLIP_MEAN
    image_std: ClassVar[tuple[float, float, float]] = CLIP_STD
    # Modules never reached on the way to an intermediate hidden state (kept frozen when training).
    unused_modules: ClassVar[tuple[str, ...]] = ("post_layernorm",)
    layers_path: ClassVar[str] = "encoder.layers"

    @classmethod
    def model_class(cls) -> type[PreTrainedModel]:
        """The transformers vision model class."""
        raise NotImplementedError

    def __init__(self, model: PreTrainedModel, feature_layer: int = -2, select: str = "patch"):
        super().__init__()
        if select not in SELECT_STRATEGIES:
            raise ValueError(f"vision select must be one of {', '.join(SELECT_STRATEGIES)}, got {select!r}")
        if select == "cls_patch" and not self.has_cls:
            raise ValueError(f"{type(self).__name__} has no CLS token; use select='patch'")
        layers = model.config.num_hidden_layers
        if not -(layers + 1) <= feature_layer <= layers:
            raise ValueError(f"feature_layer {feature_layer} is outside the {layers + 1} hidden states of the tower")
        self.model = model
        self.feature_layer = feature_layer
        self.select = select
        self.position_embeddings = True

    def drop_position_embeddings(self) -> None:
        """Zero the absolute position embeddings and keep them frozen: the features then carry no
        position of their own (a control for reducers that change token order)."""
        embeddings = getattr(getattr(self.model, "vision_model", self.model), "embeddings")
        with torch.no_grad():
            embeddings.position_embedding.weight.zero_()
        self.position_embeddings = False

    @classmethod
    def from_config(cls, config: PreTrainedConfig | dict[str, Any], **kwargs: Any) -> VisionTower:
        """A randomly initialised tower from a transformers config (or its keyword arguments)."""
        model_cls = cls.model_class()
        if isinstance(config, dict):
            config = model_cls.config_class(**config)
        if getattr(config, "model_type", None) != cls.hf_model_type:
            raise ValueError(f"{cls.__name__} needs a {cls.hf_model_type!r} config, got {getattr(config, 'model_type', None)!r}")
        return cls(model_cls._from_config(config), **kwargs)

    @classmethod
    def from_pretrained(cls, path: str, overrides: dict[str, Any] | None = None, **kwargs: Any) -> VisionTower:
        """A tower with the weights of the local checkpoint folder ``path``. Weights the tower
        lacks raise; extra ones (the text half of a full CLIP/SigLIP checkpoint) are ignored
        quietly."""
        from transformers.utils import logging as hf_logging

        level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # the load report lists every ignored text-model key
        try:
            model, info = cls.model_class().from_pretrained(
                path, local_files_only=True, output_loading_info=True, **(overrides or {})
            )
        finally:
            hf_logging.set_verbosity(level)
        missing = sorted(info["missing_keys"])
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise ValueError(f"vision checkpoint {path} lacks {len(missing)} tower weights: {shown}")
        return cls(model, **kwargs)

    @property
    def config(self) -> PreTrainedConfig:
        return self.model.config

    @property
    def hidden_size(self) -> int:
        return int(self.config.hidden_size)

    @property
    def image_size(self) -> int:
        return int(self.config.image_size)

    @property
    def patch_size(self) -> int:
        return int(self.config.patch_size)

    @property
    def grid(self) -> tuple[int, int]:
        """Patch rows and columns of one image."""
        from llava_wb.model.tokens import patch_grid

        return patch_grid(self.config)

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens in front of the patch grid in ``forward``'s output (the CLS token, if kept)."""
        return 1 if self.select == "cls_patch" else 0

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        rows, cols = self.grid
        if pixel_values.dim() != 4 or tuple(pixel_values.shape[1:]) != (3, self.image_size, self.image_size):
            raise ValueError(f"pixel_values must be [N, 3, {self.image_size}, {self.image_size}], got {tuple(pixel_values.shape)}")
        # Only the selected hidden state is captured (transformers 5 output capturing).
        out = self.model(pixel_values=pixel_values.to(self.dtype), output_hidden_states=self.feature_layer)
        hidden = out.hidden_states[self.feature_layer]
        if self.has_cls and self.select == "patch":
            hidden = hidden[:, 1:]
        expected = self.num_prefix_tokens + rows * cols
        if hidden.shape[1] != expected:
            raise RuntimeError(f"{type(self).__name__} produced {hidden.shape[1]} tokens, expected {expected}")
        return hidden

    def forward_merged(self, pixel_values: torch.Tensor, reducer: Any, grid: tuple[int, int, int]) -> tuple[torch.Tensor, Any]:
        """ToMe-style placement: run the layers up to ``feature_layer``, merging with ``reducer``
        right before its last ``reducer.layers`` of them (similarity on that layer's keys when
        ``reducer.metric == "keys"``), then those layers on the fewer tokens with proportional
        attention (``+log(size)`` on the attention logits). Returns ``(prefix tokens, ReducerOutput
        with the final features)``; the prefix (CLS) is never merged."""
        vm = getattr(self.model, "vision_model", self.model)  # transformers 5 has no wrapper
        layers = getattr(vm.encoder, "layers")
        run = self.feature_layer % (self.config.num_hidden_layers + 1)  # hidden state i = after i layers
        start = run - reducer.layers
        if start < 0:
            raise ValueError(f"reducer layers={reducer.layers} but feature_layer {self.feature_layer} runs {run} layers")
        h = vm.embeddings(pixel_values.to(self.dtype))
        if hasattr(vm, "pre_layrnorm"):
            h = vm.pre_layrnorm(h)
        p = 1 if self.has_cls else 0
        bias, reduced = None, None
        for i in range(run):
            if i == start:
                metric = h[:, p:]
                if reducer.metric == "keys":
                    layer = layers[i]
                    metric = layer.self_attn.k_proj(layer.layer_norm1(h))[:, p:]
                reduced = reducer(h[:, p:], grid=grid, metric=metric)
                h = torch.cat([h[:, :p], reduced.tokens], dim=1)
                sizes = torch.nn.functional.pad(reduced.sizes, (p, 0), value=1).to(h.dtype)
                bias = sizes.log()[:, None, None, :]  # [B, 1, 1, N']: proportional attention
            h = layers[i](h, attention_mask=bias)
            h = h[0] if isinstance(h, tuple) else h
        reduced.tokens = h[:, p:]
        return h[:, :self.num_prefix_tokens], reduced

    def unused_parameter_names(self) -> list[str]:
        """Names (in ``self``) of parameters the selected hidden state does not depend on: layers
        after ``feature_layer`` and ``unused_modules``. They stay frozen when the tower trains, so
        DDP sees no unused parameters."""
        layers = self.config.num_hidden_layers
        first_unused = self.feature_layer % (layers + 1)  # hidden state i comes out of layer i - 1
        prefixes = [f"model.{m}." for m in self.unused_modules]
        if not self.position_embeddings:
            prefixes.append("model.embeddings.position_embedding.")
        prefixes += [f"model.{self.layers_path}.{i}." for i in range(first_unused, layers)]
        return [n for n, _ in self.named_parameters() if any(n.startswith(p) for p in prefixes)]


TOWERS: Registry[type[VisionTower]] = Registry("vision tower")


@TOWERS.register("clip")
class CLIPTower(VisionTower):
    """OpenAI CLIP ViT (LLaVA-1.5: ViT-L/14-336, layer -2, CLS dropped: 576 tokens)."""

    hf_model_type = "clip_vision_model"
    has_cls = True
    image_mean, image_std = CLIP_MEAN, CLIP_STD

    @classmethod
    def model_class(cls) -> type[PreTrainedModel]:
        from transformers import CLIPVisionModel

        return CLIPVisionModel


@TOWERS.register("siglip")
class SiglipTower(VisionTower):
    """SigLIP ViT: no CLS token, so ``patch`` keeps every token; the pooling head is unused."""

    hf_model_type = "siglip_vision_model"
    has_cls = False
    image_mean, image_std = SIGLIP_MEAN, SIGLIP_STD
    unused_modules = ("post_layernorm", "head")

    @classmethod
    def model_class(cls) -> type[PreTrainedModel]:
        from transformers import SiglipVisionModel

        return SiglipVisionModel


def build_tower(
    name: str,
    *,
    path: str | None = None,
    config: PreTrainedConfig | dict[str, Any] | None = None,
    feature_layer: int = -2,
    select: str = "patch",
) -> VisionTower:
    """Build the tower registered as ``name`` from a local ``path`` (``config`` = overrides) or a config."""
    cls = TOWERS.get(name)
    if path is not None:
        overrides = config if isinstance(config, dict) else None
        return cls.from_pretrained(path, overrides, feature_layer=feature_layer, select=select)
    return cls.from_config(config if config is not None else {}, feature_layer=feature_layer, select=select)


def tower_name_for(model_type: str) -> str:
    """The registered tower whose transformers config has ``model_type`` (for imports)."""
    for name in TOWERS:
        if TOWERS.get(name).hf_model_type == model_type:
            return name
    known = ", ".join(f"{TOWERS.get(n).hf_model_type} ({n})" for n in TOWERS)
    raise ValueError(f"no vision tower registered for model_type {model_type!r}; known: {known}")
