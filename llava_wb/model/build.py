"""Build a ``LlavaWBForCausalLM`` from a ``ModelConfig`` and a tokenizer.

``check_model_config`` validates the registry names (tower, projector, reducer) and the reducer
and projector options without loading any weights, so a bad config fails before any work.
``build_model`` then loads or creates the tower and the LLM, sizes the LLM's vocabulary to the
tokenizer (a config-built LLM gets ``vocab_size = len(tokenizer)`` unless set; a loaded one grows
when the tokenizer has more tokens), copies the tokenizer's pad/bos/eos ids into the text config
(so generation knows them after a reload) and sets ``image_token_id`` from the tokenizer.
``set_trainable`` freezes and unfreezes the parts per training stage. ``media_token_counts`` says
how many LLM tokens an image, a clip and an audio clip of a ``ModelConfig`` take, from configs
alone (the arithmetic is ``llava_wb.model.tokens``'s, the same the built model uses).
"""

from __future__ import annotations

import copy
import os
from typing import TYPE_CHECKING, Any

import torch

from llava_wb.data.conversation import special_token_id
from llava_wb.model.audio import AUDIO_TOWERS, build_audio_tower
from llava_wb.model.config import LLMConfig, ModelConfig
from llava_wb.model.llava import LlavaWBConfig, LlavaWBForCausalLM
from llava_wb.model.projectors import PROJECTORS, build_projector
from llava_wb.model.reducers import build_reducer
from llava_wb.model.tokens import TokenCountError, TokenCounts, audio_tokens, image_tokens, video_tokens
from llava_wb.model.towers import TOWERS, build_tower, patch_grid
from llava_wb.registry import UnknownNameError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

SPECIAL_IDS = ("pad_token_id", "bos_token_id", "eos_token_id")


def check_model_config(cfg: ModelConfig) -> None:
    """Raise (``UnknownNameError``, ``ValueError``) on unknown names or bad options; cheap."""
    TOWERS.get(cfg.vision.type)
    PROJECTORS.get(cfg.projector.type)
    build_reducer(cfg.reducer.type, cfg.reducer.options)
    build_projector(cfg.projector.type, 1, 1, cfg.projector.options)
    if cfg.video.reducer is not None:
        video = build_reducer(cfg.video.reducer.type, cfg.video.reducer.options)
        if video.placement != "after":
            raise ValueError("model.video.reducer: the video reducer must merge after the tower (placement 'after')")
    if cfg.audio is not None:
        AUDIO_TOWERS.get(cfg.audio.type)
        PROJECTORS.get(cfg.audio.projector.type)
        build_projector(cfg.audio.projector.type, 1, 1, cfg.audio.projector.options)


def build_llm(cfg: LLMConfig, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    """The causal LM of ``cfg``: loaded from its local path or created from its config, with the
    tokenizer's pad/bos/eos ids in its config and generation config."""
    from transformers import AutoConfig, AutoModelForCausalLM

    special = {n: getattr(tokenizer, n) for n in SPECIAL_IDS if getattr(tokenizer, n, None) is not None}
    kwargs: dict[str, Any] = {}
    if cfg.attn_implementation is not None:
        kwargs["attn_implementation"] = cfg.attn_implementation
    if cfg.path is not None:
        lm = AutoModelForCausalLM.from_pretrained(cfg.path, local_files_only=True, **cfg.config, **kwargs)
    else:
        options = {"vocab_size": len(tokenizer), **copy.deepcopy(cfg.config), **special}
        text_config = AutoConfig.for_model(options.pop("model_type"), **options)
        lm = AutoModelForCausalLM.from_config(text_config, **kwargs)
    if len(tokenizer) > lm.get_input_embeddings().num_embeddings:
        lm.resize_token_embeddings(len(tokenizer))
    for name, value in special.items():
        setattr(lm.config, name, value)
        setattr(lm.generation_config, name, value)
    return lm


def build_model(cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase) -> LlavaWBForCausalLM:
    """The model of ``cfg`` for ``tokenizer``: tower frozen when ``cfg.vision.freeze``, projector
    and LLM trainable (training stages change this with ``set_trainable``)."""
    check_model_config(cfg)
    image_token_id = special_token_id(tokenizer, cfg.image_token)
    tower = build_tower(
        cfg.vision.type,
        path=cfg.vision.path,
        config=cfg.vision.config,
        feature_layer=cfg.vision.feature_layer,
        select=cfg.vision.select,
    )
    if not cfg.vision.position_embeddings:
        tower.drop_position_embeddings()
    lm = build_llm(cfg.llm, tokenizer)
    audio = None
    if cfg.audio is not None:
        audio = build_audio_tower(
            cfg.audio.type, path=cfg.audio.path, config=cfg.audio.config, tokens_per_second=cfg.audio.tokens_per_second
        )
    config = LlavaWBConfig(
        vision_config=tower.config,
        text_config=lm.config,
        audio_config=None if audio is None else audio.config,
        model_config=cfg.to_dict(),
        image_token_id=image_token_id,
        video_token_id=special_token_id(tokenizer, cfg.video_token),
        audio_token_id=None if cfg.audio is None else special_token_id(tokenizer, cfg.audio_token),
        tie_word_embeddings=bool(getattr(lm.config, "tie_word_embeddings", False)),
    )
    model = LlavaWBForCausalLM(config, vision_tower=tower, language_model=lm, audio_tower=audio)
    set_trainable(
        model,
        tower=not cfg.vision.freeze,
        projector=True,
        llm=True,
        audio=cfg.audio is not None and not cfg.audio.freeze,
    )
    return model


def set_trainable(
    model: LlavaWBForCausalLM, *, tower: bool, projector: bool, llm: bool, audio: bool = False
) -> dict[str, int]:
    """Set ``requires_grad`` per part (the reducers, the frame separator and the audio projector
    follow the projector; tower parameters that the features never reach stay frozen; ``audio``:
    the audio tower). Returns the trainable parameter count per part."""
    unused = set(model.vision_tower.unused_parameter_names())
    for name, param in model.vision_tower.named_parameters():
        param.requires_grad_(tower and name not in unused)
    media = [m for m in (model.video_reducer_module, model.frame_separator, model.audio_projector) if m is not None]
    flags = [
        (model.projector, projector),
        (model.reducer, projector),
        (model.language_model, llm),
        *((m, projector) for m in media),
    ]
    if model.audio_tower is not None:
        flags.append((model.audio_tower, audio))
    for module, flag in flags:
        for param in module.parameters():
            param.requires_grad_(flag)
    if model.audio_tower is not None:
        for param in model.audio_tower.fixed_parameters():
            param.requires_grad_(False)
    parts = {
        "tower": model.vision_tower,
        "reducer": model.reducer,
        "projector": model.projector,
        "llm": model.language_model,
        "media": torch.nn.ModuleList(media),
        "audio_tower": model.audio_tower or torch.nn.ModuleList(),
    }
    return {k: sum(p.numel() for p in m.parameters() if p.requires_grad) for k, m in parts.items()}


def media_token_counts(model_config: ModelConfig) -> TokenCounts:
    """Token counts of ``model_config`` from configs only (a local checkpoint's ``config.json``, or
    the ``config`` overrides over the transformers defaults); no weights. Raises
    ``TokenCountError`` naming the field (``UnknownNameError`` for an unregistered name)."""
    m = model_config
    tower_cls = TOWERS.get(m.vision.type)
    vision = _read_config(tower_cls.model_class().config_class, m.vision.path, m.vision.config, "model.vision")
    try:
        grid = patch_grid(vision, strict=True)
    except ValueError as exc:
        raise TokenCountError("model.vision", str(exc)) from None
    if m.vision.select == "cls_patch" and not tower_cls.has_cls:
        raise TokenCountError("model.vision.select", f"{m.vision.type!r} has no CLS token; use 'patch'")
    prefix = 1 if m.vision.select == "cls_patch" else 0
    reducer = _reducer(build_reducer, m.reducer.type, m.reducer.options, "model.reducer")
    try:
        image = image_tokens(grid, reducer, prefix)
    except ValueError as exc:
        raise TokenCountError("model.reducer", f"{exc} (tower grid {grid[0]}x{grid[1]})") from None
    if m.video.reducer is not None:
        reducer = _reducer(build_reducer, m.video.reducer.type, m.video.reducer.options, "model.video.reducer")
    try:
        video = video_tokens(m.video.frames, grid, reducer, m.video.separators)
    except ValueError as exc:
        raise TokenCountError("model.video", f"{exc} (clip grid {m.video.frames}x{grid[0]}x{grid[1]})") from None
    audio = None
    if m.audio is not None:
        audio_cls = AUDIO_TOWERS.get(m.audio.type)
        config = _read_config(audio_cls.config_class(), m.audio.path, m.audio.config, "model.audio")
        try:
            audio = audio_tokens(audio_cls, config, m.audio.tokens_per_second)
        except ValueError as exc:
            raise TokenCountError("model.audio.tokens_per_second", str(exc)) from None
    return TokenCounts(
        image=image,
        video=video,
        audio=audio,
        image_size=int(vision["image_size"] if isinstance(vision, dict) else vision.image_size),
    )


def _reducer(build: Any, name: str, options: dict[str, Any], field: str) -> Any:
    try:
        return build(name, options)
    except UnknownNameError:
        raise
    except (TypeError, ValueError) as exc:
        raise TokenCountError(field, str(exc)) from None


def _read_config(config_cls: Any, path: str | None, overrides: dict[str, Any], field: str) -> Any:
    """A transformers config: ``overrides`` over the defaults, or a local checkpoint's config.json."""
    if path is None:
        try:
            return config_cls(**overrides)
        except (TypeError, ValueError) as exc:
            raise TokenCountError(f"{field}.config", str(exc)) from None
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise TokenCountError(f"{field}.path", f"{path!r} is not a local checkpoint folder (no config.json)")
    return config_cls.from_pretrained(path, local_files_only=True, **overrides)
