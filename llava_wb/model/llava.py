"""The LLaVA model: vision tower -> token reducer -> projector -> spliced into a causal LLM
(plus videos through the same tower and an optional audio tower, ``llava_wb.model.media``).

``LlavaWBForCausalLM`` is a transformers ``PreTrainedModel`` with its own ``LlavaWBConfig`` (vision,
text and audio sub-configs, the run's ``ModelConfig`` as one field ``model_config``, and the
placeholder ids), so
``save_pretrained(dir)`` / ``LlavaWBForCausalLM.from_pretrained(dir)`` (or ``AutoModelForCausalLM``
once ``llava_wb.model`` is imported) give one self-describing folder. ``llava_wb.model.bundle``
adds the tokenizer to that folder.

Splicing: every ``<image>`` in the text was expanded to ``tokens_per_image`` copies of
``image_token_id`` (``llava_wb.data.conversation``); the images of the batch, concatenated in
sample order (``pixel_values [N_img, 3, S, S]``), are encoded to ``[N_img, tokens_per_image, D]``
and written into those positions with one ``index_copy`` over the flattened positions (``splice``:
row-major order = sample order, then position order), so any mix of samples with zero, one or
several images works without a Python loop over samples. ``tokens_per_image`` is derived in one
place (``llava_wb.model.tokens``, which the config checks and the budget use too) and checked
against the placeholders of every batch: a mismatch raises ``ValueError`` naming both numbers.
Labels at image positions are forced to -100; position ids come from the attention mask (left
padding).

Videos (``video_values [N_vid, T, 3, S, S]``, ``<video>`` expanded to ``tokens_per_video``) and
audio (``audio_values [N_aud, n_mels, frames]``, ``<audio>`` to ``tokens_per_audio``) are spliced
the same way, each with its own placeholder id and count check (``MediaMixin``); a batch may mix
image, video, audio and text-only samples.

Reducer options the model applies (``llava_wb.model.reducers``): ``placement="tower"`` merges
inside the tower's last layers (``VisionTower.forward_merged``); ``size_embedding`` adds a learned
embedding of each visual token's size (``reducer.size_embed``, zero at init);
``position_ids="original"`` numbers each visual token by its patch's raster index, so an image
spans as many positions as it has patches whatever the reducer kept (``visual_position_ids``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedConfig, PreTrainedModel
from transformers.configuration_utils import SubConfigSpec
from transformers.modeling_outputs import CausalLMOutputWithPast

from llava_wb.constants import IGNORE_INDEX
from llava_wb.model.audio import AUDIO_TOWERS, AudioTower
from llava_wb.model.config import AudioModelConfig, ModelConfig
from llava_wb.model.media import MediaMixin
from llava_wb.model.packed import check_packing, is_packed, restrict_to_sample, segment_ids, segment_mask
from llava_wb.model.projectors import build_projector
from llava_wb.model.reducers import Grid, ReducerOutput, build_reducer
from llava_wb.model.tokens import image_tokens
from llava_wb.model.towers import TOWERS, VisionTower

PLURAL = {"image": "images", "video": "videos", "audio": "audio clips"}
# Keyword arguments of ``forward`` that go on to the LLM; every other extra key is batch metadata.
PASSED_TO_LLM = ("output_hidden_states", "output_attentions")


class LlavaWBConfig(PreTrainedConfig):
    """Architecture of a ``LlavaWBForCausalLM``: saved as ``config.json`` next to the weights."""

    model_type = "llava_wb"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="clip_vision_model"),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama"),
        "audio_config": SubConfigSpec(config_class=AutoConfig, model_type="whisper", optional=True),
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    audio_config: dict | PreTrainedConfig | None = None  # None: no audio tower
    # The run's ``ModelConfig.to_dict()`` as one field: tower, reducers, projectors, video, audio settings.
    model_config: dict | None = None
    image_token_id: int | None = None
    video_token_id: int | None = None
    audio_token_id: int | None = None
    tie_word_embeddings: bool = False

    @property
    def parts(self) -> ModelConfig:
        """``model_config`` as a typed ``ModelConfig`` (defaults where a field is absent)."""
        return ModelConfig.from_dict({"llm": {"config": {"model_type": "llama"}}, **(self.model_config or {})})

    def __post_init__(self, **kwargs: Any) -> None:
        # transformers sets ``attn_implementation`` (None unless given) on every sub-config; keep
        # the implementation that already-built sub-models were configured with.
        kept = {
            key: sub._attn_implementation
            for key in ("vision_config", "text_config", "audio_config")
            if isinstance(sub := getattr(self, key), PreTrainedConfig)
        }
        super().__post_init__(**kwargs)
        if kwargs.get("attn_implementation") is None:
            for key, impl in kept.items():
                if impl is not None:
                    getattr(self, key)._attn_implementation_internal = impl


# Read/write views of ``model_config`` under the names of the flat fields that bundles saved before it
# carry in their config.json (loading one sets them, which fills ``model_config``) and that
# ``hf_llava`` and the media mixin read.
_FLAT_FIELDS = {
    "vision_tower_type": ("vision", "type"),
    "vision_feature_layer": ("vision", "feature_layer"),
    "vision_feature_select": ("vision", "select"),
    "reducer_type": ("reducer", "type"),
    "reducer_options": ("reducer", "options"),
    "projector_type": ("projector", "type"),
    "projector_options": ("projector", "options"),
    "video_frames": ("video", "frames"),
    "video_separators": ("video", "separators"),
    "video_reducer_type": ("video", "reducer", "type"),
    "video_reducer_options": ("video", "reducer", "options"),
    "audio_tower_type": ("audio", "type"),
    "audio_tokens_per_second": ("audio", "tokens_per_second"),
    "audio_projector_type": ("audio", "projector", "type"),
    "audio_projector_options": ("audio", "projector", "options"),
}


def _flat_view(path: tuple[str, ...]) -> property:
    def get(self: LlavaWBConfig) -> Any:
        for source in (self.model_config or {}, None):  # the stored dict, else the defaults
            node: Any = self.parts.to_dict() if source is None else source
            for key in path:
                node = node.get(key, KeyError) if isinstance(node, dict) else None if node is None else KeyError
            if node is not KeyError:
                return node
        return None

    def set_(self: LlavaWBConfig, value: Any) -> None:
        if value is None and len(path) == 3:  # e.g. video_reducer_type=None: no video reducer
            return
        node = self.model_config = dict(self.model_config or {})
        for key in path[:-1]:
            node[key] = dict(node.get(key) or {})
            node = node[key]
        node[path[-1]] = value

    return property(get, set_)


for _name, _path in _FLAT_FIELDS.items():
    setattr(LlavaWBConfig, _name, _flat_view(_path))


def splice(embeds: torch.Tensor, mask: torch.Tensor, feats: torch.Tensor, positions: int) -> torch.Tensor:
    """``embeds [B, L, D]`` with the rows of ``feats [N, T, D]`` (cast to its dtype) written where
    ``mask [B, L]`` is set, in row-major order: ``masked_scatter``'s values and gradients, but as an
    ``index_copy`` of whole rows, whose backward gathers rows where masked_scatter's selected
    elements through a ``[B, L, D]`` mask (``benchmarks/bench_overheads.py``; equality:
    ``tests/test_model.py``). ``positions``: how many positions ``mask`` sets, known on the host
    (``check_placeholders`` counted them), so that a GPU does not wait for the count; ``ValueError``
    when ``feats`` does not hold exactly that many rows of width D."""
    b, length, d = embeds.shape
    if feats.shape[-1] != d or feats.numel() != positions * d:
        raise ValueError(
            f"media features {tuple(feats.shape)} do not fill the {positions} placeholder positions of width {d}"
        )
    rows = feats.reshape(-1, d).to(embeds.dtype)
    flat = mask.reshape(-1)
    if flat.device.type in ("cpu", "cuda"):
        where = torch.nonzero_static(flat, size=positions).squeeze(1)
    else:  # other backends may lack nonzero_static
        where = flat.nonzero().squeeze(1)
    return embeds.reshape(b * length, d).index_copy(0, where, rows).view(b, length, d)


@dataclass
class ImageFeatures:
    """Encoded images: ``embeds [N, tokens_per_image, D_llm]`` and the reducer's bookkeeping."""

    embeds: torch.Tensor
    reduced: ReducerOutput


class LlavaWBForCausalLM(MediaMixin, PreTrainedModel):
    """Vision tower, token reducer, projector and a causal LM (see the module docstring)."""

    config_class = LlavaWBConfig
    config: LlavaWBConfig
    base_model_prefix = ""
    main_input_name = "input_ids"
    input_modalities = ("image", "video", "audio", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    def __init__(
        self,
        config: LlavaWBConfig,
        vision_tower: VisionTower | None = None,
        language_model: PreTrainedModel | None = None,
        audio_tower: AudioTower | None = None,
    ):
        super().__init__(config)
        m = config.parts
        if vision_tower is None:
            vision_tower = TOWERS.get(m.vision.type).from_config(
                config.vision_config, feature_layer=m.vision.feature_layer, select=m.vision.select
            )
        elif (vision_tower.feature_layer, vision_tower.select) != (m.vision.feature_layer, m.vision.select):
            raise ValueError("the given vision tower's feature_layer/select differ from the config")
        if language_model is None:
            language_model = AutoModelForCausalLM.from_config(config.text_config)
        self.vision_tower = vision_tower
        self.reducer = build_reducer(m.reducer.type, m.reducer.options)
        self.projector = build_projector(
            m.projector.type, vision_tower.hidden_size, language_model.config.hidden_size, m.projector.options
        )
        self.language_model = language_model
        d_llm = language_model.config.hidden_size
        # None: videos use the image reducer (a property, so no module is registered twice)
        self.video_reducer_module = (
            None if m.video.reducer is None else build_reducer(m.video.reducer.type, m.video.reducer.options)
        )
        if self.video_reducer_module is not None and self.video_reducer_module.placement != "after":
            raise ValueError("the video reducer must merge after the tower (placement 'after')")
        self.frame_separator = nn.Embedding(1, d_llm) if m.video.separators else None
        audio = m.audio or AudioModelConfig()
        if audio_tower is None and config.audio_config is not None:
            audio_tower = AUDIO_TOWERS.get(audio.type).from_config(config.audio_config, audio.tokens_per_second)
        self.audio_tower = audio_tower
        self.audio_projector = (
            None
            if audio_tower is None
            else build_projector(audio.projector.type, audio_tower.hidden_size, d_llm, audio.projector.options)
        )
        # One source of truth: resizing the LLM's embeddings updates the saved config too.
        config.vision_config = vision_tower.config
        config.text_config = language_model.config
        if audio_tower is not None:
            config.audio_config = audio_tower.config
        if self.reducer.size_embedding:
            self.reducer.size_embed = torch.nn.Embedding(self.patches_per_image + 1, language_model.config.hidden_size)
        for red in {id(r): r for r in (self.reducer, self.video_reducer)}.values():
            if red.needs_instruction:
                if red.placement != "after":
                    raise ValueError("an instruction-aware reducer works after the tower (placement 'after')")
                red.bind(vision_tower.hidden_size, d_llm)
        self.post_init()
        if self.reducer.size_embedding:
            torch.nn.init.zeros_(self.reducer.size_embed.weight)  # starts as a no-op
        for red in (self.reducer, self.video_reducer):
            if getattr(red, "query_proj", None) is not None:
                torch.nn.init.zeros_(red.query_proj.weight)  # the learned score starts at 0

    # ---- sizes ---------------------------------------------------------------------------------
    @property
    def image_grid(self) -> Grid:
        """The ``(T, H, W)`` patch grid of one image, as the reducer sees it."""
        return (1, *self.vision_tower.grid)

    @property
    def patches_per_image(self) -> int:
        t, h, w = self.image_grid
        return t * h * w

    @property
    def tokens_per_image(self) -> int:
        """LLM tokens (= ``<image>`` placeholder ids) per image (``llava_wb.model.tokens.image_tokens``)."""
        return image_tokens(self.vision_tower.grid, self.reducer, self.vision_tower.num_prefix_tokens)

    @property
    def video_reducer(self) -> torch.nn.Module:
        return self.video_reducer_module if self.video_reducer_module is not None else self.reducer

    @property
    def image_token_id(self) -> int:
        return self.placeholder_id("image")

    def placeholder_id(self, kind: str) -> int:
        value = getattr(self.config, f"{kind}_token_id")
        if value is None:
            raise ValueError(f"config.{kind}_token_id is not set (build the model with build_model(cfg, tokenizer))")
        return int(value)

    # ---- embeddings ----------------------------------------------------------------------------
    def get_input_embeddings(self) -> torch.nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: torch.nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> torch.nn.Module | None:
        return self.language_model.get_output_embeddings()

    def resize_token_embeddings(self, *args: Any, **kwargs: Any) -> torch.nn.Embedding:
        """Resize the LLM's vocabulary (the saved text config follows: it is the LLM's config)."""
        return self.language_model.resize_token_embeddings(*args, **kwargs)

    def encode_images(self, pixel_values: torch.Tensor, instruction: dict[str, Any] | None = None) -> ImageFeatures:
        """``pixel_values [N, 3, S, S]`` -> LLM embeddings ``[N, tokens_per_image, D_llm]``;
        ``instruction``: ``query [N, L, D_llm]`` and ``query_mask [N, L]`` per image, for an
        instruction-aware reducer."""
        k = self.vision_tower.num_prefix_tokens
        if self.reducer.placement == "tower":
            prefix, reduced = self.vision_tower.forward_merged(pixel_values, self.reducer, self.image_grid)
        else:
            features = self.vision_tower(pixel_values)
            context = self.reducer_context(self.reducer, instruction)
            prefix, reduced = features[:, :k], self.reducer(features[:, k:], grid=self.image_grid, **context)
        tokens = torch.cat([prefix, reduced.tokens], dim=1) if k else reduced.tokens
        weight = next(self.projector.parameters())
        embeds = self.projector(tokens.to(weight.dtype))
        if self.reducer.size_embedding:
            sizes = self.reducer.size_embed(reduced.sizes.clamp(max=self.patches_per_image)).to(embeds.dtype)
            embeds = embeds + torch.nn.functional.pad(sizes, (0, 0, k, 0))
        if embeds.shape[1] != self.tokens_per_image:
            raise RuntimeError(
                f"encoded {embeds.shape[1]} tokens per image, tokens_per_image is {self.tokens_per_image}"
            )
        return ImageFeatures(embeds=embeds, reduced=reduced)

    def visual_position_ids(
        self,
        mask: torch.Tensor,
        attention_mask: torch.Tensor,
        positions: torch.Tensor,
        segments: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Position ids with each image's tokens at ``prefix + original raster index`` and the text
        after it continuing from ``prefix + patches_per_image`` (``position_ids="original"``).
        ``mask``: image-token positions; ``positions [N_img, M]`` from the reducer; ``segments``:
        each token's sample in a packed row (positions then count from 0 in every sample)."""
        starts = None
        if segments is not None:
            starts = torch.diff(segments, dim=1, prepend=segments[:, :1] - 1) != 0
        step = attention_mask.long().clone()  # each real token advances the position by one
        k, n = self.vision_tower.num_prefix_tokens, self.patches_per_image
        if positions.numel():
            first = torch.full_like(positions[:, :1], -1)
            delta = torch.diff(positions, dim=1, prepend=first)  # >= 1: jumps over merged patches
            per_image = torch.cat([torch.ones_like(positions[:, :k]), delta], dim=1) if k else delta
            step = step.masked_scatter(mask, per_image.to(step.dtype))
            flat = mask.reshape(-1).nonzero().reshape(positions.shape[0], -1)[:, -1]  # each image's last token
            after = flat + 1
            inside = (after % mask.shape[1]) != 0  # the image is not at the end of its row
            if starts is not None:  # ... nor at the end of its sample
                inside &= ~starts.reshape(-1)[after.clamp(max=starts.numel() - 1)]
            bump = (n - 1 - positions[:, -1]).to(step.dtype)
            step.view(-1).index_add_(0, after[inside], bump[inside])
        total = step.cumsum(-1)
        if starts is not None:  # restart the count at every sample of the row
            return total - torch.where(starts, total - step, 0).cummax(-1).values - 1
        return ((total - 1) * attention_mask.long()).clamp_min(0)

    def check_placeholders(
        self, input_ids: torch.Tensor, num_items: int, counts: torch.Tensor | None, kind: str = "image"
    ) -> torch.Tensor:
        """The ``kind`` placeholder mask of ``input_ids``; ``ValueError`` when the placeholders do not
        match ``num_items * tokens_per_<kind>`` (and ``counts[b] * tokens_per_<kind>`` per sample)."""
        per_item = self.media_tokens.get(kind, 0)
        token_id = getattr(self.config, f"{kind}_token_id")
        if num_items and (token_id is None or not per_item):
            what = "has no audio tower (model.audio)" if kind == "audio" else f"has no {kind}_token_id"
            raise ValueError(f"the batch has {num_items} {PLURAL[kind]} but the model {what}")
        if token_id is None:
            return torch.zeros_like(input_ids, dtype=torch.bool)
        mask = input_ids == token_id
        per_sample = mask.sum(dim=1)
        if counts is None:
            found = int(per_sample.sum())
            counted, bad = num_items, 0
        else:
            counts = torch.as_tensor(counts, device=per_sample.device).reshape(-1)
            if counts.numel() != input_ids.shape[0]:
                raise ValueError(f"{kind}_counts has {counts.numel()} entries for a batch of {input_ids.shape[0]}")
            stats = torch.stack([per_sample.sum(), counts.sum(), (per_sample != counts * per_item).sum()])
            found, counted, bad = stats.tolist()  # one device sync
        if found != num_items * per_item or counted != num_items:
            raise ValueError(
                f"input_ids hold {found} {kind}-token positions but the batch has {num_items} {PLURAL[kind]} x "
                f"{per_item} tokens per {kind} = {num_items * per_item} ({kind}_counts sum to {counted}); "
                f"expand each <{kind}> to tokens_per_{kind} placeholder ids"
            )
        if bad:
            b = int((per_sample != counts * per_item).nonzero()[0, 0])
            raise ValueError(
                f"sample {b}: {int(per_sample[b])} {kind}-token positions but {kind}_counts[{b}]={int(counts[b])} x "
                f"{per_item} tokens per {kind} = {int(counts[b]) * per_item}"
            )
        return mask

    def embed_inputs(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        image_counts: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        video_values: torch.Tensor | None = None,
        video_counts: torch.Tensor | None = None,
        audio_values: torch.Tensor | None = None,
        audio_counts: torch.Tensor | None = None,
        instruction_mask: torch.Tensor | None = None,
        segments: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Text embeddings with the image/video/audio embeddings written into their placeholder
        positions, ``labels`` with those positions set to -100, and position ids (``None``: the
        default ones from the attention mask; set when the reducer asks for ``position_ids="original"``).
        ``segments``: each token's sample in a packed row (``llava_wb.model.packed``)."""
        embeds = self.get_input_embeddings()(input_ids)
        position_ids = None
        media = {
            "image": (pixel_values, image_counts),
            "video": (video_values, video_counts),
            "audio": (audio_values, audio_counts),
        }
        text = embeds  # the instruction's embeddings, before any media is spliced in
        present: set[str] = set()
        placeholders = torch.zeros_like(input_ids, dtype=torch.bool)
        for kind, (values, counts) in media.items():
            num = 0 if values is None else int(values.shape[0])
            mask = self.check_placeholders(input_ids, num, counts, kind)
            placeholders |= mask
            if not num:
                continue
            present.add(kind)
            reducer = self.reducer if kind == "image" else self.video_reducer
            instruction = None
            if kind != "audio" and reducer.needs_instruction:
                instruction = self.item_instruction(text, instruction_mask, mask.sum(1) // self.media_tokens[kind])
                if instruction is not None and segments is not None:
                    instruction["query_mask"] = restrict_to_sample(
                        instruction["query_mask"], segments, mask, self.media_tokens[kind]
                    )
            if kind == "image":
                features = self.encode_images(values, instruction)
                feats = features.embeds
                if self.reducer.position_ids == "original":
                    attn = torch.ones_like(input_ids) if attention_mask is None else attention_mask
                    position_ids = self.visual_position_ids(mask, attn, features.reduced.positions, segments)
            else:
                feats = self.encode_videos(values, instruction) if kind == "video" else self.encode_audios(values)
            embeds = splice(embeds, mask, feats, num * self.media_tokens[kind])
        if self.training and len(present) < 3:
            embeds = embeds + self.blank_media_term(present, embeds.device).to(embeds.dtype)
        if labels is not None:
            labels = labels.masked_fill(placeholders, IGNORE_INDEX)
        return embeds, labels, position_ids

    # ---- forward / generate --------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_counts: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        video_values: torch.Tensor | None = None,
        video_counts: torch.Tensor | None = None,
        audio_values: torch.Tensor | None = None,
        audio_counts: torch.Tensor | None = None,
        instruction_mask: torch.Tensor | None = None,
        num_items_in_batch: torch.Tensor | int | None = None,
        **metadata: Any,
    ) -> CausalLMOutputWithPast:
        """Loss and logits for a collated batch. ``output_hidden_states``/``output_attentions`` go
        to the LLM; other batch keys (``id``, ...) are ignored. A packed batch
        (``llava_wb.data.packing``) has ``position_ids`` restarting at every sample and no
        ``attention_mask``; its samples never see each other."""
        inputs = self.llm_inputs(
            input_ids,
            attention_mask,
            labels,
            position_ids,
            pixel_values=pixel_values,
            image_counts=image_counts,
            video_values=video_values,
            video_counts=video_counts,
            audio_values=audio_values,
            audio_counts=audio_counts,
            instruction_mask=instruction_mask,
        )
        extra: dict[str, Any] = {k: metadata[k] for k in PASSED_TO_LLM if metadata.get(k) is not None}
        if num_items_in_batch is not None:
            extra["num_items_in_batch"] = num_items_in_batch
        return self.language_model(**inputs, use_cache=False, logits_to_keep=logits_to_keep, **extra)

    def llm_inputs(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        **media: torch.Tensor | None,
    ) -> dict[str, torch.Tensor | None]:
        """What the LLM computes on for a collated batch (``forward``'s first half): ``inputs_embeds``
        with the media features spliced in, ``labels``, and the ``attention_mask`` / ``position_ids``
        that keep packed samples apart (``benchmarks/bench_packing.py`` times the LLM alone on them).
        ``media``: ``embed_inputs``' keyword arguments (``pixel_values``, ``video_counts``, ...)."""
        segments = None
        if attention_mask is None and position_ids is not None and is_packed(position_ids):
            check_packing(self.language_model.config, self.reducer.position_ids == "original")
            segments = segment_ids(position_ids)
        embeds, labels, visual_positions = self.embed_inputs(
            input_ids, labels=labels, attention_mask=attention_mask, segments=segments, **media
        )
        if visual_positions is not None and attention_mask is None:
            # The positions jump over merged patches, and transformers would read every jump as the
            # start of a new packed sequence: the mask says where each sample (or the one sequence) is.
            whole = torch.zeros_like(input_ids) if segments is None else segments
            attention_mask, position_ids = segment_mask(whole, embeds.dtype), visual_positions
        if position_ids is None:
            position_ids = visual_positions
        if position_ids is None and attention_mask is not None:
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)
        return {
            "inputs_embeds": embeds,
            "attention_mask": attention_mask,
            "position_ids": position_ids,
            "labels": labels,
        }

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_counts: torch.Tensor | None = None,
        max_new_tokens: int = 32,
        video_values: torch.Tensor | None = None,
        video_counts: torch.Tensor | None = None,
        audio_values: torch.Tensor | None = None,
        audio_counts: torch.Tensor | None = None,
        instruction_mask: torch.Tensor | None = None,
        **generate_kwargs: Any,
    ) -> torch.Tensor:
        """Greedy (unless ``generate_kwargs`` say otherwise) answers for a left-padded batch:
        ``LongTensor [B, <= max_new_tokens]`` holding only the new tokens."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if bool((attention_mask[:, -1] == 0).any()):
            raise ValueError("generate needs left padding (a sample's last position is padding)")
        embeds, _, position_ids = self.embed_inputs(
            input_ids,
            pixel_values,
            image_counts,
            attention_mask=attention_mask,
            video_values=video_values,
            video_counts=video_counts,
            audio_values=audio_values,
            audio_counts=audio_counts,
            instruction_mask=instruction_mask,
        )
        if position_ids is not None:
            generate_kwargs["position_ids"] = position_ids
        generate_kwargs.setdefault("do_sample", False)
        return self.language_model.generate(
            inputs_embeds=embeds, attention_mask=attention_mask, max_new_tokens=max_new_tokens, **generate_kwargs
        )

    # ---- training helpers ----------------------------------------------------------------------
    def _set_gradient_checkpointing(self, enable: bool = True, **kwargs: Any) -> None:
        """Checkpoint the LLM's layers, and the tower's when any of its parameters trains."""
        self.language_model._set_gradient_checkpointing(enable=enable, **kwargs)
        tower_trains = any(p.requires_grad for p in self.vision_tower.parameters())
        self.vision_tower.model._set_gradient_checkpointing(enable=enable and tower_trains, **kwargs)
        if self.audio_tower is not None:
            audio_trains = any(p.requires_grad for p in self.audio_tower.parameters())
            self.audio_tower.model._set_gradient_checkpointing(enable=enable and audio_trains, **kwargs)


AutoConfig.register(LlavaWBConfig.model_type, LlavaWBConfig, exist_ok=True)
AutoModelForCausalLM.register(LlavaWBConfig, LlavaWBForCausalLM, exist_ok=True)
