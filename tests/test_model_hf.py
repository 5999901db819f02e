"""Tests for saving, loading and converting llava_wb models: save_pretrained/from_pretrained round
trips in one self-describing folder, HF ``LlavaForConditionalGeneration`` export and import (same
logits within 1e-5 in float32, both directions), and towers/LLMs loaded from local checkpoints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from test_model import GPT2, LLAMA, VISION, collate, make_model, make_samples, make_tokenizer
from transformers import AutoModelForCausalLM, CLIPConfig, CLIPModel, LlamaConfig, LlamaForCausalLM

from llava_wb.model import LlavaWBForCausalLM, ModelConfig, build_model, load_bundle, save_bundle
from llava_wb.model.hf_llava import from_hf_llava, to_hf_llava


@pytest.fixture(scope="module")
def tok() -> Any:
    return make_tokenizer()


def logits(model: Any, batch: dict[str, Any]) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits


def hf_logits(hf: Any, batch: dict[str, Any]) -> torch.Tensor:
    keys = ("input_ids", "attention_mask", "pixel_values")
    with torch.no_grad():
        return hf(**{k: batch[k] for k in keys}).logits


def real(x: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
    """Logits at real (non-padding) positions: padding outputs are arbitrary."""
    return x[batch["attention_mask"].bool()]


@pytest.mark.parametrize("llm", [LLAMA, GPT2], ids=["llama", "gpt2-tied"])
def test_save_load_round_trip(tok: Any, tmp_path: Path, llm: dict[str, Any]) -> None:
    model = make_model(tok, llm=llm, select="cls_patch", feature_layer=-1)
    batch = collate(tok, make_samples(tok, model.tokens_per_image))
    save_bundle(model, tok, tmp_path)
    names = {p.name for p in tmp_path.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= names
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "llava_wb" and config["model_config"]["vision"]["select"] == "cls_patch"
    assert config["text_config"]["vocab_size"] == len(tok) and config["image_token_id"] == model.config.image_token_id
    loaded, tok2 = load_bundle(tmp_path)
    assert tok2.convert_tokens_to_ids("<image>") == model.config.image_token_id
    assert loaded.tokens_per_image == model.tokens_per_image == 17
    assert loaded.language_model.config._attn_implementation == "sdpa"
    torch.testing.assert_close(logits(loaded, batch), logits(model, batch), atol=0, rtol=0)
    auto = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert isinstance(auto, LlavaWBForCausalLM)
    torch.testing.assert_close(logits(auto, batch), logits(model, batch), atol=0, rtol=0)
    if llm is GPT2:
        lm = loaded.language_model
        assert lm.get_output_embeddings().weight is lm.get_input_embeddings().weight


def test_bundle_refuses_a_different_tokenizer(tok: Any, tmp_path: Path) -> None:
    model = make_model(tok)
    save_bundle(model, tok, tmp_path)
    model.config.image_token_id = 5
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="image_token_id 5"):
        load_bundle(tmp_path)


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"llm": GPT2, "select": "cls_patch"},
        {"vision_type": "siglip", "feature_layer": -1},
        {"projector": "linear"},
        {"llm": {**LLAMA, "tie_word_embeddings": True}},
    ],
    ids=["clip-mlp", "clip-cls-gpt2", "siglip", "clip-linear", "llama-tied"],
)
def test_hf_llava_export_import_equivalence(tok: Any, kw: dict[str, Any]) -> None:
    kw = dict(kw)
    projector = kw.pop("projector", None)
    if projector is None:
        model = make_model(tok, **kw)
    else:
        torch.manual_seed(0)
        cfg = ModelConfig.from_dict(
            {"vision": {"config": dict(VISION)}, "llm": {"config": dict(LLAMA)}, "projector": {"type": projector}}
        )
        model = build_model(cfg, tok).eval()
    batch = collate(tok, make_samples(tok, model.tokens_per_image))  # right padding: HF uses arange positions
    ours = logits(model, batch)
    hf = to_hf_llava(model)
    assert hf.config.image_token_id == model.config.image_token_id
    assert hf.config.image_seq_length == model.tokens_per_image
    torch.testing.assert_close(real(hf_logits(hf, batch), batch), real(ours, batch), atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # a different HF model, imported, must agree with HF
        for p in hf.parameters():
            p.add_(0.01 * torch.randn_like(p))
    back = from_hf_llava(hf)
    if kw.get("llm", {}).get("tie_word_embeddings"):
        assert hf.lm_head.weight is hf.model.language_model.embed_tokens.weight
        assert back.language_model.lm_head.weight is back.language_model.get_input_embeddings().weight
    assert back.config.projector_type == model.config.projector_type
    assert back.vision_tower.select == model.vision_tower.select
    torch.testing.assert_close(
        real(logits(back, batch), batch), real(hf_logits(hf, batch), batch), atol=1e-5, rtol=1e-5
    )


def test_hf_llava_refuses_what_it_cannot_express(tok: Any) -> None:
    model = make_model(tok)
    model.config.reducer_type = "avgpool"
    with pytest.raises(ValueError, match="only reducer 'identity'"):
        to_hf_llava(model)
    model.config.reducer_type = "identity"
    hf = to_hf_llava(model)
    hf.config.projector_hidden_act = "relu"
    with pytest.raises(ValueError, match="projector_hidden_act 'relu'"):
        from_hf_llava(hf)


def test_tower_and_llm_from_local_checkpoints(tok: Any, tmp_path: Path) -> None:
    torch.manual_seed(1)
    clip = CLIPModel(
        CLIPConfig(
            vision_config=dict(VISION),
            projection_dim=16,
            text_config=dict(
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=1,
                num_attention_heads=4,
                vocab_size=40,
                bos_token_id=1,
                eos_token_id=2,
                pad_token_id=0,
            ),
        )
    )
    clip.save_pretrained(tmp_path / "clip")  # a full CLIP checkpoint: its text half is ignored
    llama_args = {k: v for k, v in LLAMA.items() if k != "model_type"}
    llama = LlamaForCausalLM(LlamaConfig(**llama_args, vocab_size=len(tok) - 2))
    llama.save_pretrained(tmp_path / "llama")
    cfg = ModelConfig.from_dict({"vision": {"path": str(tmp_path / "clip")}, "llm": {"path": str(tmp_path / "llama")}})
    model = build_model(cfg, tok)
    torch.testing.assert_close(
        model.vision_tower.model.embeddings.patch_embedding.weight, clip.vision_model.embeddings.patch_embedding.weight
    )
    emb = model.language_model.get_input_embeddings().weight
    assert emb.shape[0] == len(tok)  # grown to the tokenizer
    torch.testing.assert_close(emb[: len(tok) - 2], llama.get_input_embeddings().weight)
    torch.testing.assert_close(
        model.language_model.model.layers[1].mlp.up_proj.weight, llama.model.layers[1].mlp.up_proj.weight
    )
    assert torch.isfinite(model(**collate(tok, make_samples(tok, model.tokens_per_image))).loss)
    deeper = {"path": str(tmp_path / "clip"), "config": {"num_hidden_layers": 3}}
    with pytest.raises(ValueError, match=r"lacks \d+ tower weights: encoder\.layers\.2\."):
        build_model(ModelConfig.from_dict({"vision": deeper, "llm": {"path": str(tmp_path / "llama")}}), tok)
