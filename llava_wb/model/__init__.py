"""The llava_wb model: vision tower -> token reducer -> projector -> causal LLM.

Each part sits behind a registry (``TOWERS``, ``REDUCERS``, ``PROJECTORS``); an unknown name
raises ``UnknownNameError`` listing the known ones. Typical use::

    from llava_wb.model import ModelConfig, build_model, save_bundle, load_bundle
    model = build_model(ModelConfig.from_dict(cfg["model"]), tokenizer)
    save_bundle(model, tokenizer, "runs/x/checkpoint")

Names are exported lazily: ``import llava_wb.model.config`` (the typed config, no torch) stays
cheap, and torch/transformers load on first use of a model name. Importing
``llava_wb.model.llava`` registers ``llava_wb`` with ``AutoConfig`` / ``AutoModelForCausalLM``.
HF Llava conversion: ``llava_wb.model.hf_llava`` (``to_hf_llava``, ``from_hf_llava``).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    **dict.fromkeys(["build_llm", "build_model", "check_model_config", "set_trainable"], "build"),
    **dict.fromkeys(["load_bundle", "save_bundle"], "bundle"),
    **dict.fromkeys(
        ["LLMConfig", "ModelConfig", "ModelConfigError", "ProjectorConfig", "ReducerConfig", "VisionConfig"], "config"
    ),
    **dict.fromkeys(["ImageFeatures", "LlavaWBConfig", "LlavaWBForCausalLM"], "llava"),
    **dict.fromkeys(["PROJECTORS", "build_projector"], "projectors"),
    **dict.fromkeys(["REDUCERS", "IdentityReducer", "ReducerOutput", "TokenReducer", "build_reducer"], "reducers"),
    **dict.fromkeys(["TOWERS", "CLIPTower", "DINOv2Tower", "SiglipTower", "VisionTower", "build_tower"], "towers"),
    **dict.fromkeys(["to_hf_llava", "from_hf_llava"], "hf_llava"),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'llava_wb.model' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"llava_wb.model.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
