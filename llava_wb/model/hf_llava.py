"""Convert between ``LlavaWBForCausalLM`` and transformers' ``LlavaForConditionalGeneration``.

Only models that HF Llava can express convert: the identity reducer, and a ``mlp2x_gelu`` or
``linear`` projector (HF Llava always has ``linear_1, act, linear_2``; ``linear`` exports as
``act="linear"`` with ``linear_2`` the identity, and imports by folding the two layers). Settings map as

==========================  ===========================================================
llava_wb                    transformers ``LlavaConfig``
==========================  ===========================================================
vision_feature_layer        ``vision_feature_layer`` (int only)
select ``patch`` + CLS      ``vision_feature_select_strategy="default"`` (drops CLS)
``cls_patch``, or no CLS    ``"full"`` (SigLIP has no CLS: LLaVA-style SigLIP uses "full")
image_token_id              ``image_token_id`` (``image_token_index``)
tokens_per_image            ``image_seq_length`` (HF's processor expands ``<image>`` to it)
==========================  ===========================================================

Weights are copied by name: ``vision_tower.model.*`` <-> ``model.vision_tower.*``,
``language_model.<base>.*`` <-> ``model.language_model.*``, the LM head <-> ``lm_head.*``,
``projector.{0,2}`` <-> ``model.multi_modal_projector.linear_{1,2}``. HF Llava can tie the LM head
only to an ``embed_tokens`` embedding: a tied LM that names it otherwise (GPT-2's ``wte``) exports
untied, with equal copies.
"""

from __future__ import annotations

import copy

import torch
from transformers import LlavaConfig, LlavaForConditionalGeneration
from transformers.initialization import no_init_weights

from llava_wb.model.llava import LlavaWBConfig, LlavaWBForCausalLM
from llava_wb.model.towers import TOWERS, tower_name_for

_HF_PROJ = "model.multi_modal_projector."
_ACT = {"mlp2x_gelu": "gelu", "linear": "linear"}
VIDEO_ONLY = "frame_separator."  # HF Llava reads images only: the video separator is not exported


def _key_map(model: LlavaWBForCausalLM) -> dict[str, str]:
    """Our state-dict key -> HF Llava key, for every key but the projector's."""
    lm = model.language_model
    head = lm.get_output_embeddings()
    head_name = next(n for n, m in lm.named_modules() if m is head)
    rules = [
        ("vision_tower.model.", "model.vision_tower."),
        (f"language_model.{lm.base_model_prefix}.", "model.language_model."),
        (f"language_model.{head_name}.", "lm_head."),
    ]
    mapping: dict[str, str] = {}
    for key in model.state_dict():
        if key.startswith(("projector.", VIDEO_ONLY)):
            continue
        target = next((new + key[len(old) :] for old, new in rules if key.startswith(old)), None)
        if target is None:
            raise ValueError(f"cannot map parameter {key!r} to the HF Llava layout")
        mapping[key] = target
    return mapping


def _check_convertible(config: LlavaWBConfig) -> None:
    if config.reducer_type != "identity":
        raise ValueError(
            f"HF Llava has no token reducer: only reducer 'identity' converts, got {config.reducer_type!r}"
        )
    if config.projector_type not in _ACT:
        raise ValueError(f"HF Llava supports projectors {sorted(_ACT)}, got {config.projector_type!r}")
    if config.projector_options:
        raise ValueError(f"projector options {config.projector_options} have no HF Llava equivalent")
    if config.audio_config is not None:
        raise ValueError("HF Llava has no audio tower: a model with model.audio does not convert")


@torch.no_grad()
def to_hf_llava(model: LlavaWBForCausalLM) -> LlavaForConditionalGeneration:
    """An HF ``LlavaForConditionalGeneration`` with ``model``'s weights (copied)."""
    config = model.config
    _check_convertible(config)
    tower = model.vision_tower
    lm = model.language_model
    text_config = copy.deepcopy(lm.config)
    embed = lm.get_input_embeddings()
    embed_name = next(n for n, m in lm.get_submodule(lm.base_model_prefix).named_modules() if m is embed)
    if getattr(text_config, "tie_word_embeddings", False) and embed_name != "embed_tokens":
        # HF Llava ties lm_head to ``language_model.embed_tokens`` only: export untied, equal copies.
        text_config.tie_word_embeddings = False
    hf_config = LlavaConfig(
        vision_config=copy.deepcopy(tower.config),
        text_config=text_config,
        image_token_id=model.image_token_id,
        image_seq_length=model.tokens_per_image,
        projector_hidden_act=_ACT[config.projector_type],
        vision_feature_select_strategy="default" if tower.has_cls and tower.select == "patch" else "full",
        vision_feature_layer=tower.feature_layer,
        multimodal_projector_bias=True,
        tie_word_embeddings=bool(getattr(text_config, "tie_word_embeddings", False)),
    )
    with no_init_weights():
        hf = LlavaForConditionalGeneration(hf_config)
    state = model.state_dict()
    new = {hf_key: state[key].clone() for key, hf_key in _key_map(model).items()}
    if config.projector_type == "mlp2x_gelu":
        for i, j in ((0, 1), (2, 2)):
            for p in ("weight", "bias"):
                new[f"{_HF_PROJ}linear_{j}.{p}"] = state[f"projector.{i}.{p}"].clone()
    else:
        new[f"{_HF_PROJ}linear_1.weight"] = state["projector.weight"].clone()
        new[f"{_HF_PROJ}linear_1.bias"] = state["projector.bias"].clone()
        d = state["projector.weight"].shape[0]
        w = state["projector.weight"]
        new[f"{_HF_PROJ}linear_2.weight"] = torch.eye(d, dtype=w.dtype, device=w.device)
        new[f"{_HF_PROJ}linear_2.bias"] = torch.zeros(d, dtype=w.dtype, device=w.device)
    hf.load_state_dict(new, strict=True)
    hf.tie_weights()
    return hf.to(model.device).train(model.training)


@torch.no_grad()
def from_hf_llava(hf: LlavaForConditionalGeneration) -> LlavaWBForCausalLM:
    """A ``LlavaWBForCausalLM`` with the weights of an HF ``LlavaForConditionalGeneration``."""
    c = hf.config
    if not isinstance(c.vision_feature_layer, int):
        raise ValueError(f"only a single vision_feature_layer converts, got {c.vision_feature_layer!r}")
    tower_type = tower_name_for(c.vision_config.model_type)
    has_cls = TOWERS.get(tower_type).has_cls
    if c.vision_feature_select_strategy == "default":
        if not has_cls:
            raise ValueError(f"strategy 'default' drops the first token, but {tower_type!r} has no CLS token")
        select = "patch"
    else:
        select = "cls_patch" if has_cls else "patch"
    projector_type = {act: name for name, act in _ACT.items()}.get(c.projector_hidden_act)
    if projector_type is None:
        raise ValueError(f"projector_hidden_act {c.projector_hidden_act!r} has no llava_wb projector (gelu or linear)")
    config = LlavaWBConfig(
        vision_config=copy.deepcopy(c.vision_config),
        text_config=copy.deepcopy(c.text_config),
        vision_tower_type=tower_type,
        vision_feature_layer=c.vision_feature_layer,
        vision_feature_select=select,
        projector_type=projector_type,
        image_token_id=c.image_token_id,
        video_separators=False,
        tie_word_embeddings=bool(c.tie_word_embeddings),
    )
    with no_init_weights():
        model = LlavaWBForCausalLM(config)
    hf_state = hf.state_dict()
    state = {key: hf_state[hf_key].clone() for key, hf_key in _key_map(model).items()}
    proj = {}
    for j in (1, 2):
        w = hf_state[f"{_HF_PROJ}linear_{j}.weight"]
        b = hf_state.get(f"{_HF_PROJ}linear_{j}.bias")
        proj[j] = (w, torch.zeros(w.shape[0], dtype=w.dtype, device=w.device) if b is None else b)
    if projector_type == "mlp2x_gelu":
        for i, j in ((0, 1), (2, 2)):
            state[f"projector.{i}.weight"], state[f"projector.{i}.bias"] = (t.clone() for t in proj[j])
    else:  # act is the identity: fold linear_2(linear_1(x)) into one layer
        (w1, b1), (w2, b2) = proj[1], proj[2]
        w = w2.double() @ w1.double()
        b = w2.double() @ b1.double() + b2.double()
        state["projector.weight"], state["projector.bias"] = w.to(w1.dtype), b.to(w1.dtype)
    model.load_state_dict(state, strict=True)
    model.tie_weights()
    return model.to(hf.device).train(hf.training)
