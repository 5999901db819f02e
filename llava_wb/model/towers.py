"""Vision towers: transformers vision encoders that turn images into patch features.

``VisionTower`` wraps one transformers vision model (``self.model``) and returns the hidden state of
``feature_layer`` (LLaVA: -2) with the CLS token dropped (``select="patch"``, LLaVA's default) or
kept in front (``select="cls_patch"``): ``forward(pixel_values [N, 3, S, S]) -> [N, P + H*W, D]``
with ``P = num_prefix_tokens``. It exposes ``grid`` (patch rows, cols), ``hidden_size``,
``image_size``, ``patch_size`` and the preprocessing defaults ``image_mean`` / ``image_std``.

A new tower is a subclass registered in ``TOWERS``. Besides the class metadata (``hf_model_type``,
``has_cls``, ``image_mean`` / ``image_std``, ``unused_modules``: submodules or parameters, relative
to ``self.model``, that the selected hidden state never reaches), it implements these hooks; the
base class builds everything else (feature selection, freezing what does not train, merging inside
the tower, dropping position embeddings) from them:

- ``model_class()``: the transformers vision model class;
- ``encoder_layers()``: the ``nn.ModuleList`` of transformer blocks, in order;
- ``embed(pixel_values)``: the input of the first block (patch + prefix tokens, positions added);
- ``layer_keys(i, hidden)``: block ``i``'s attention keys for ``hidden`` (the merging metric);
- ``position_embedding()``: the parameter holding the absolute position embeddings;
- ``grid`` (property, default ``image_size // patch_size`` square): patch rows and columns.

``clip`` and ``siglip`` (transformers' ``*VisionModel`` layout, ``TransformersViTTower``) and
``dinov2`` are registered; ``DINOv2Tower`` is the worked example of a tower with another layout.
The contract tests (``tests/test_registry_contracts.py``) build, run, train and merge every
registered tower from a tiny config, so a new entry is tested by registering it.

Towers build from a config (``build_tower(name, config=...)``) or from a local checkpoint folder
(``path``; a full CLIP/SigLIP checkpoint works, its text half is ignored).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from llava_wb.constants import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    SIGLIP_MEAN,
    SIGLIP_STD,
)
from llava_wb.model.config import SELECT_STRATEGIES
from llava_wb.model.feature_cache import CachedTower
from llava_wb.registry import Registry

if TYPE_CHECKING:
    from transformers import PreTrainedConfig, PreTrainedModel


def patch_grid(config: Any, strict: bool = False) -> tuple[int, int]:
    """Patch rows and columns of one image for a vision config (object or mapping with
    ``image_size`` and ``patch_size``); ``strict``: raise ``ValueError`` unless the patches tile it."""
    get = config.get if isinstance(config, Mapping) else lambda key: getattr(config, key)
    size, patch = int(get("image_size")), int(get("patch_size"))
    if strict and size % patch:
        raise ValueError(f"image_size {size} is not a multiple of patch_size {patch}")
    return (size // patch, size // patch)


class VisionTower(CachedTower, nn.Module):
    """Base class of the vision towers (see the module docstring)."""

    hf_model_type: ClassVar[str] = ""  # transformers ``model_type`` of the vision config
    has_cls: ClassVar[bool] = True  # the encoder puts a CLS token in front of the patches
    image_mean: ClassVar[tuple[float, float, float]] = CLIP_MEAN
    image_std: ClassVar[tuple[float, float, float]] = CLIP_STD
    # Submodules or parameters of ``self.model`` never reached on the way to an intermediate hidden
    # state (kept frozen when training, so DDP sees no unused parameters).
    unused_modules: ClassVar[tuple[str, ...]] = ()

    # ---- hooks a tower implements (see the module docstring) ----
    @classmethod
    def model_class(cls) -> type[PreTrainedModel]:
        """The transformers vision model class."""
        raise NotImplementedError

    def encoder_layers(self) -> nn.ModuleList:
        """The transformer blocks, in order (hidden state ``i`` is the output of block ``i - 1``)."""
        raise NotImplementedError

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[N, 3, S, S]`` -> the first block's input ``[N, P + H*W, D]`` (``P``: 1 with a CLS token)."""
        raise NotImplementedError

    def layer_keys(self, index: int, hidden: torch.Tensor) -> torch.Tensor:
        """Attention keys of block ``index`` for its input ``hidden`` (the ``metric="keys"`` of merging)."""
        raise NotImplementedError

    def position_embedding(self) -> nn.Parameter:
        """The parameter holding the absolute position embeddings (zeroed by ``drop_position_embeddings``)."""
        raise NotImplementedError

    def run_layer(self, index: int, hidden: torch.Tensor, attention_bias: torch.Tensor | None) -> torch.Tensor:
        """Block ``index`` on ``hidden`` with an additive attention bias (``[N, 1, 1, L]`` or None)."""
        out = self.encoder_layers()[index](hidden, attention_mask=attention_bias)
        return out[0] if isinstance(out, tuple) else out

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
        self.feature_cache = None  # CachedTower.enable_feature_cache

    def drop_position_embeddings(self) -> None:
        """Zero the absolute position embeddings and keep them frozen: the features then carry no
        position of their own (a control for reducers that change token order)."""
        with torch.no_grad():
            self.position_embedding().zero_()
        self.position_embeddings = False

    @classmethod
    def from_config(cls, config: PreTrainedConfig | dict[str, Any], **kwargs: Any) -> VisionTower:
        """A randomly initialised tower from a transformers config (or its keyword arguments)."""
        model_cls = cls.model_class()
        if isinstance(config, dict):
            config = model_cls.config_class(**config)
        if getattr(config, "model_type", None) != cls.hf_model_type:
            raise ValueError(
                f"{cls.__name__} needs a {cls.hf_model_type!r} config, got {getattr(config, 'model_type', None)!r}"
            )
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
        return patch_grid(self.config)

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens in front of the patch grid in ``forward``'s output (the CLS token, if kept)."""
        return 1 if self.select == "cls_patch" else 0

    @property
    def layers_run(self) -> int:
        """Blocks run to reach ``feature_layer`` (hidden state ``i`` is the output of block ``i - 1``)."""
        return self.feature_layer % (self.config.num_hidden_layers + 1)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if pixel_values.dim() != 4 or tuple(pixel_values.shape[1:]) != (3, self.image_size, self.image_size):
            raise ValueError(
                f"pixel_values must be [N, 3, {self.image_size}, {self.image_size}], got {tuple(pixel_values.shape)}"
            )
        return self.cached(pixel_values, self.features)

    def prefetch(self, pixel_values: torch.Tensor) -> int:
        """Cache the features of ``pixel_values`` as ``forward`` would take them (``CachedTower``)."""
        return self.prefetch_with(pixel_values, self.features)

    def features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The selected hidden state ``[N, P + H*W, D]`` of ``[N, 3, S, S]``, always computed."""
        rows, cols = self.grid
        # Only the blocks up to ``feature_layer`` run: the ones after it (LLaVA's -2: the last) cannot
        # change the selected hidden state, so the transformers forward would compute them for nothing.
        hidden = self.embed(pixel_values.to(self.dtype))
        for i in range(self.layers_run):
            hidden = self.run_layer(i, hidden, None)
        if self.has_cls and self.select == "patch":
            hidden = hidden[:, 1:]
        expected = self.num_prefix_tokens + rows * cols
        if hidden.shape[1] != expected:
            raise RuntimeError(f"{type(self).__name__} produced {hidden.shape[1]} tokens, expected {expected}")
        return hidden

    def forward_merged(
        self, pixel_values: torch.Tensor, reducer: Any, grid: tuple[int, int, int]
    ) -> tuple[torch.Tensor, Any]:
        """ToMe-style placement: run the layers up to ``feature_layer``, merging with ``reducer``
        right before its last ``reducer.layers`` of them (similarity on that layer's keys when
        ``reducer.metric == "keys"``), then those layers on the fewer tokens with proportional
        attention (``+log(size)`` on the attention logits). Returns ``(prefix tokens, ReducerOutput
        with the final features)``; the prefix (CLS) is never merged."""
        run = self.layers_run
        start = run - reducer.layers
        if start < 0:
            raise ValueError(
                f"reducer layers={reducer.layers} but feature_layer {self.feature_layer} runs {run} layers"
            )
        h = self.embed(pixel_values.to(self.dtype))
        p = 1 if self.has_cls else 0
        bias, reduced = None, None
        for i in range(run):
            if i == start:
                metric = h[:, p:]
                if reducer.metric == "keys":
                    metric = self.layer_keys(i, h)[:, p:]
                reduced = reducer(h[:, p:], grid=grid, metric=metric)
                h = torch.cat([h[:, :p], reduced.tokens], dim=1)
                sizes = torch.nn.functional.pad(reduced.sizes, (p, 0), value=1).to(h.dtype)
                bias = sizes.log()[:, None, None, :]  # [B, 1, 1, N']: proportional attention
            h = self.run_layer(i, h, bias)
        reduced.tokens = h[:, p:]
        return h[:, : self.num_prefix_tokens], reduced

    def unused_parameter_names(self) -> list[str]:
        """Names (in ``self``) of parameters the selected hidden state does not depend on: blocks
        after ``feature_layer``, ``unused_modules`` and the position embeddings once dropped. They
        stay frozen when the tower trains, so DDP sees no unused parameters."""
        first_unused = self.layers_run
        unused: set[int] = set()
        for path in self.unused_modules:
            try:
                unused.update(id(p) for p in self.model.get_submodule(path).parameters())
            except AttributeError:
                unused.add(id(self.model.get_parameter(path)))
        if not self.position_embeddings:
            unused.add(id(self.position_embedding()))
        for block in list(self.encoder_layers())[first_unused:]:
            unused.update(id(p) for p in block.parameters())
        return [n for n, p in self.named_parameters() if id(p) in unused]


class TransformersViTTower(VisionTower):
    """The hooks for transformers' ``CLIPVisionModel`` / ``SiglipVisionModel`` layout
    (``vision_model.embeddings.position_embedding``, ``encoder.layers[i].self_attn.k_proj``)."""

    unused_modules = ("post_layernorm",)

    @property
    def vision_model(self) -> nn.Module:
        return getattr(self.model, "vision_model", self.model)

    def encoder_layers(self) -> nn.ModuleList:
        return self.vision_model.encoder.layers

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        vm = self.vision_model
        h = vm.embeddings(pixel_values)
        return vm.pre_layrnorm(h) if hasattr(vm, "pre_layrnorm") else h

    def layer_keys(self, index: int, hidden: torch.Tensor) -> torch.Tensor:
        layer = self.encoder_layers()[index]
        return layer.self_attn.k_proj(layer.layer_norm1(hidden))

    def position_embedding(self) -> nn.Parameter:
        return self.vision_model.embeddings.position_embedding.weight


TOWERS: Registry[type[VisionTower]] = Registry("vision tower")


@TOWERS.register("clip")
class CLIPTower(TransformersViTTower):
    """OpenAI CLIP ViT (LLaVA-1.5: ViT-L/14-336, layer -2, CLS dropped: 576 tokens)."""

    hf_model_type = "clip_vision_model"
    has_cls = True
    image_mean, image_std = CLIP_MEAN, CLIP_STD

    @classmethod
    def model_class(cls) -> type[PreTrainedModel]:
        from transformers import CLIPVisionModel

        return CLIPVisionModel


@TOWERS.register("siglip")
class SiglipTower(TransformersViTTower):
    """SigLIP ViT: no CLS token, so ``patch`` keeps every token; the pooling head is unused."""

    hf_model_type = "siglip_vision_model"
    has_cls = False
    image_mean, image_std = SIGLIP_MEAN, SIGLIP_STD
    unused_modules = ("post_layernorm", "head")

    @classmethod
    def model_class(cls) -> type[PreTrainedModel]:
        from transformers import SiglipVisionModel

        return SiglipVisionModel


@TOWERS.register("dinov2")
class DINOv2Tower(VisionTower):
    """DINOv2 ViT (transformers ``Dinov2Model``): CLS token, ImageNet statistics, layer scale; its
    final ``layernorm`` and the masked-image-modelling ``mask_token`` never reach a hidden state."""

    hf_model_type = "dinov2"
    has_cls = True
    image_mean, image_std = IMAGENET_MEAN, IMAGENET_STD
    unused_modules = ("layernorm", "embeddings.mask_token")

    @classmethod
    def model_class(cls) -> type[PreTrainedModel]:
        from transformers import Dinov2Model

        return Dinov2Model

    def encoder_layers(self) -> nn.ModuleList:
        return self.model.encoder.layer

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.embeddings(pixel_values)

    def layer_keys(self, index: int, hidden: torch.Tensor) -> torch.Tensor:
        layer = self.encoder_layers()[index]
        return layer.attention.k_proj(layer.norm1(hidden))

    def position_embedding(self) -> nn.Parameter:
        return self.model.embeddings.position_embeddings


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
