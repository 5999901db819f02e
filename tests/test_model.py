"""Tests for llava_wb.model: config parsing, registries, splicing, padding, generate, freezing.

Tiny CLIP (32 px, 8 px patches: 16 tokens per image) and tiny Llama (hidden 32, 2 layers) with the
demo tokenizer; batches come from the real vicuna_v1 template and collator and mix text-only,
one-image and two-image samples. The helpers here are shared with test_model_hf.py.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from llava_wb.data.collate import Collator
from llava_wb.data.conversation import IGNORE_INDEX, tokenize_conversation
from llava_wb.model import ModelConfig, ModelConfigError, build_model, set_trainable
from llava_wb.registry import UnknownNameError
from llava_wb.tokenizer import build_demo_tokenizer, demo_corpus

TEXTS = [
    "what colour is the square ?",
    "the square is red .",
    "compare the two pictures .",
    "both show a green shape on the left .",
    "tell me a story without pictures .",
    "once upon a time there was a circle .",
    "is the blue circle left or right of the triangle ?",
    "right .",
]
VISION = dict(
    image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4
)
LLAMA = dict(
    model_type="llama",
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
)
# Learned absolute positions and tied embeddings: left padding is only right with position ids.
GPT2 = dict(model_type="gpt2", n_embd=32, n_layer=2, n_head=4, n_positions=128)
H, G = "human", "gpt"
# (conversation, number of images): text-only, one image, two images, an image after the text.
CONVERSATIONS = [
    ([{"from": H, "value": TEXTS[4]}, {"from": G, "value": TEXTS[5]}], 0),
    ([{"from": H, "value": "<image>\n" + TEXTS[0]}, {"from": G, "value": TEXTS[1]}], 1),
    ([{"from": H, "value": "<image>\n<image>\n" + TEXTS[2]}, {"from": G, "value": TEXTS[3]}], 2),
    ([{"from": H, "value": TEXTS[6] + "\n<image>"}, {"from": G, "value": TEXTS[7]}], 1),
]


def make_tokenizer() -> Any:
    return build_demo_tokenizer(demo_corpus(TEXTS))


def model_dict(vision_type: str = "clip", llm: dict[str, Any] | None = None, **vision: Any) -> dict[str, Any]:
    return {"vision": {"type": vision_type, "config": dict(VISION), **vision}, "llm": {"config": dict(llm or LLAMA)}}


def make_model(tok: Any, seed: int = 0, **kw: Any) -> Any:
    torch.manual_seed(seed)
    return build_model(ModelConfig.from_dict(model_dict(**kw)), tok).eval()


def make_samples(tok: Any, tokens_per_image: int, generation: bool = False) -> list[dict[str, Any]]:
    gen = torch.Generator().manual_seed(0)
    out = []
    for i, (conv, n_images) in enumerate(CONVERSATIONS):
        tc = tokenize_conversation(
            conv[:1] if generation else conv,
            tok,
            "vicuna_v1",
            max_length=None,
            media_tokens={"image": tokens_per_image},
            add_generation_prompt=generation,
        )
        images = [torch.randn(3, 32, 32, generator=gen) for _ in range(n_images)]
        out.append({"input_ids": tc.input_ids, "labels": tc.labels, "media": {"image": images}, "id": f"s{i}"})
    return out


def collate(tok: Any, samples: list[dict[str, Any]], side: str = "right") -> dict[str, Any]:
    return Collator(tok.pad_token_id, padding_side=side)(samples)


def per_sample_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    ce = F.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:], ignore_index=IGNORE_INDEX, reduction="none")
    return ce.sum(1) / (labels[:, 1:] != IGNORE_INDEX).sum(1)


@pytest.fixture(scope="module")
def tok() -> Any:
    return make_tokenizer()


@pytest.fixture(scope="module")
def model(tok: Any) -> Any:
    return make_model(tok)


def test_config_from_dict_and_unknown_fields() -> None:
    cfg = ModelConfig.from_dict(model_dict(feature_layer=-1, select="cls_patch"))
    assert cfg.vision.feature_layer == -1 and cfg.projector.type == "mlp2x_gelu" and cfg.reducer.type == "identity"
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ModelConfigError, match=r"unknown field\(s\) model\.vision\.feture_layer"):
        ModelConfig.from_dict(model_dict(feture_layer=-2))
    with pytest.raises(ModelConfigError, match=r"model\.projecter"):
        ModelConfig.from_dict({**model_dict(), "projecter": {"type": "linear"}})
    with pytest.raises(ModelConfigError, match=r"model\.vision\.select"):
        ModelConfig.from_dict(model_dict(select="cls"))
    with pytest.raises(ModelConfigError, match=r"model\.llm"):
        ModelConfig.from_dict({"vision": {}})
    with pytest.raises(ModelConfigError, match="model_type"):
        ModelConfig.from_dict({"llm": {"config": {"hidden_size": 8}}})


@pytest.mark.parametrize(
    "section,field,known",
    [
        ("vision", "type", "clip, dinov2, siglip"),
        ("projector", "type", "linear, mlp2x_gelu"),
        ("reducer", "type", "avgpool, identity, instruct_resample, local_merge, tome_sd"),
    ],
)
def test_unknown_names_list_known(tok: Any, section: str, field: str, known: str) -> None:
    d = model_dict()
    d.setdefault(section, {})[field] = "nope"
    with pytest.raises(UnknownNameError, match=f"'nope'; known: {known}"):
        build_model(ModelConfig.from_dict(d), tok)


def test_bad_options_and_missing_image_token(tok: Any) -> None:
    with pytest.raises(ValueError, match="bad options for projector"):
        build_model(ModelConfig.from_dict({**model_dict(), "projector": {"options": {"depth": 3}}}), tok)
    with pytest.raises(ValueError, match="<picture>"):
        build_model(ModelConfig.from_dict({**model_dict(), "image_token": "<picture>"}), tok)


def test_tokens_per_image_and_sizes(tok: Any, model: Any) -> None:
    assert model.vision_tower.grid == (4, 4) and model.image_grid == (1, 4, 4)
    assert model.tokens_per_image == 16 and model.config.image_token_id == tok.convert_tokens_to_ids("<image>")
    assert make_model(tok, select="cls_patch").tokens_per_image == 17
    assert model.language_model.get_input_embeddings().num_embeddings == len(tok)
    assert model.language_model.config._attn_implementation == "sdpa"
    feats = model.encode_images(torch.randn(2, 3, 32, 32))
    assert feats.embeds.shape == (2, 16, 32)
    assert feats.reduced.positions[0].tolist() == list(range(16)) and bool((feats.reduced.sizes == 1).all())


@pytest.mark.parametrize("llm", ["llama", "gpt2"])
def test_mixed_batch_forward_backward_matches_per_sample_both_paddings(tok: Any, model: Any, llm: str) -> None:
    model = model if llm == "llama" else make_model(tok, llm=GPT2)
    samples = make_samples(tok, model.tokens_per_image)
    singles = [model(**collate(tok, [s])).logits[0] for s in samples]
    for side in ("right", "left"):
        batch = collate(tok, samples, side)
        assert batch["image_counts"].tolist() == [0, 1, 2, 1]
        out = model(**batch)
        losses = per_sample_loss(out.logits, batch["labels"])
        for i, single in enumerate(singles):
            real = batch["attention_mask"][i].bool()
            torch.testing.assert_close(out.logits[i, real], single, atol=1e-5, rtol=1e-5)
            ref = per_sample_loss(single[None], torch.as_tensor(samples[i]["labels"])[None])[0]
            torch.testing.assert_close(losses[i], ref, atol=1e-5, rtol=1e-5)
    model.train()
    try:
        out = model(**batch)
        out.loss.backward()
    finally:
        model.eval()
    assert torch.isfinite(out.loss)
    assert model.projector[0].weight.grad is not None and model.projector[0].weight.grad.abs().sum() > 0
    assert model.language_model.get_input_embeddings().weight.grad is not None
    assert all(p.grad is None for p in model.vision_tower.parameters())
    model.zero_grad(set_to_none=True)


def test_labels_at_image_positions_are_ignored(tok: Any, model: Any) -> None:
    batch = collate(tok, make_samples(tok, model.tokens_per_image))
    dirty = dict(batch, labels=torch.where(batch["attention_mask"].bool(), batch["input_ids"], IGNORE_INDEX))
    text_only = dirty["labels"].masked_fill(batch["input_ids"] == model.config.image_token_id, IGNORE_INDEX)
    torch.testing.assert_close(model(**dirty).loss, model(**dict(batch, labels=text_only)).loss)


def test_placeholder_mismatch_names_the_numbers(tok: Any, model: Any) -> None:
    batch = collate(tok, make_samples(tok, model.tokens_per_image))
    ids = batch["input_ids"].clone()
    ids[1, (ids[1] == model.config.image_token_id).nonzero()[0, 0]] = tok.unk_token_id
    with pytest.raises(ValueError, match=r"63 image-token positions .* 4 images x 16 tokens per image = 64"):
        model(**dict(batch, input_ids=ids))
    with pytest.raises(ValueError, match=r"64 image-token positions .* 3 images x 16 tokens per image = 48"):
        model(**dict(batch, pixel_values=batch["pixel_values"][:3]))
    with pytest.raises(ValueError, match=r"sample 1: 16 image-token positions but image_counts\[1\]=2"):
        model(**dict(batch, image_counts=torch.tensor([0, 2, 1, 1])))
    out = model(**dict(batch, output_hidden_states=True))
    assert len(out.hidden_states) == 3 and out.hidden_states[0].shape == (*ids.shape, 32)
    with pytest.raises(ValueError, match=r"0 video-token positions but the batch has 1 videos"):
        model(**dict(batch, video_values=torch.zeros(1, 8, 3, 32, 32)))
    with pytest.raises(ValueError, match=r"the batch has 1 audio clips but the model has no audio tower"):
        model(**dict(batch, audio_values=torch.zeros(1, 80, 3000)))


def test_generate_left_padding_one_answer_per_sample(tok: Any, model: Any) -> None:
    samples = make_samples(tok, model.tokens_per_image, generation=True)
    batch = collate(tok, samples, "left")
    keys = ("input_ids", "attention_mask", "pixel_values", "image_counts")
    answers = model.generate(**{k: batch[k] for k in keys}, max_new_tokens=5)
    assert answers.shape[0] == len(samples) and 1 <= answers.shape[1] <= 5
    for i, s in enumerate(samples):  # greedy: batched equals one at a time
        single = collate(tok, [s], "left")
        alone = model.generate(**{k: single[k] for k in keys}, max_new_tokens=5)[0]
        assert answers[i, : alone.numel()].tolist() == alone.tolist()
    with pytest.raises(ValueError, match="left padding"):
        right = collate(tok, samples, "right")
        model.generate(**{k: right[k] for k in keys}, max_new_tokens=2)


def test_freezing_and_unused_tower_parameters(tok: Any) -> None:
    model = make_model(tok)
    assert not any(p.requires_grad for p in model.vision_tower.parameters())
    assert all(p.requires_grad for p in model.projector.parameters())
    counts = set_trainable(model, tower=True, projector=False, llm=False)
    assert counts["projector"] == 0 and counts["llm"] == 0 and counts["tower"] > 0
    frozen = {n for n, p in model.vision_tower.named_parameters() if not p.requires_grad}
    assert frozen == set(model.vision_tower.unused_parameter_names())
    assert any(".layers.1." in n for n in frozen) and any("post_layernorm" in n for n in frozen)
    assert not any(".layers.0." in n for n in frozen)
    model.train()
    batch = collate(tok, make_samples(tok, model.tokens_per_image))
    model(**batch).loss.backward()
    used = [p for n, p in model.vision_tower.named_parameters() if n not in frozen]
    assert all(p.grad is not None for p in used)  # everything trainable gets a gradient (DDP-safe)
    assert all(p.grad is None for p in model.language_model.parameters())


def test_text_only_batch_in_training_keeps_visual_path_in_graph(tok: Any) -> None:
    model = make_model(tok).train()
    batch = collate(tok, make_samples(tok, model.tokens_per_image)[:1])
    assert batch["pixel_values"] is None
    loss = model(**batch).loss
    loss.backward()
    assert all(p.grad is not None and not p.grad.any() for p in model.projector.parameters())
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(**batch).loss, loss.detach())


def test_gradient_checkpointing_passthrough(tok: Any) -> None:
    model = make_model(tok)
    batch = collate(tok, make_samples(tok, model.tokens_per_image))
    ref = model(**batch).loss
    model.activation_checkpointing_enable()
    layers = model.language_model.model.layers
    assert all(layer.gradient_checkpointing for layer in layers)
    assert not any(getattr(m, "gradient_checkpointing", False) for m in model.vision_tower.modules())
    model.train()
    loss = model(**batch).loss
    loss.backward()
    torch.testing.assert_close(loss, ref, atol=1e-6, rtol=1e-6)
    assert model.projector[0].weight.grad is not None
    set_trainable(model, tower=True, projector=True, llm=True)
    model.activation_checkpointing_enable()
    assert any(getattr(m, "gradient_checkpointing", False) for m in model.vision_tower.modules())


def test_siglip_tower(tok: Any) -> None:
    model = make_model(tok, vision_type="siglip")
    assert model.tokens_per_image == 16 and model.vision_tower.image_mean == (0.5, 0.5, 0.5)
    out = model(**collate(tok, make_samples(tok, model.tokens_per_image)))
    assert torch.isfinite(out.loss)
    unused = model.vision_tower.unused_parameter_names()
    assert any(n.startswith("model.head.") for n in unused)
    with pytest.raises(ValueError, match="no CLS token"):
        make_model(tok, vision_type="siglip", select="cls_patch")


def test_llm_vocab_grows_to_tokenizer(tok: Any) -> None:
    model = make_model(tok, llm={**LLAMA, "vocab_size": 8})
    assert model.language_model.get_input_embeddings().num_embeddings == len(tok)
    assert model.config.text_config.vocab_size == len(tok)
    assert model.config.text_config.pad_token_id == tok.pad_token_id
    model.resize_token_embeddings(len(tok) + 3)
    assert model.config.text_config.vocab_size == len(tok) + 3
    assert model.get_output_embeddings().weight.shape[0] == len(tok) + 3


def test_model_config_imports_without_torch() -> None:
    code = (
        "import sys, llava_wb.model, llava_wb.model.config; "
        "heavy = [m for m in ('torch', 'transformers') if m in sys.modules]; assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@settings(max_examples=80, deadline=None)
@given(
    b=st.integers(1, 4),
    length=st.integers(1, 12),
    d=st.integers(1, 6),
    seed=st.integers(0, 2**16),
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
)
def test_splice_is_masked_scatter_in_values_and_gradients(b, length, d, seed, dtype):
    """``splice`` writes the media rows where ``masked_scatter`` did, in the same (row-major) order, and
    passes back the same gradients to the text embeddings and to the media features."""
    from llava_wb.model.llava import splice

    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(b, length, generator=g) < 0.4
    n = int(mask.sum())
    tokens = next(t for t in (3, 2, 1) if n % t == 0)  # [items, tokens per item, D]
    text = torch.randn(b, length, d, generator=g).requires_grad_()
    feats = torch.randn(n // tokens, tokens, d, generator=g).to(dtype).requires_grad_()
    upstream = torch.randn(b, length, d, generator=g)
    got = splice(text, mask, feats, n)
    want = text.masked_scatter(mask.unsqueeze(-1), feats.to(text.dtype))
    assert torch.equal(got, want)
    grads = torch.autograd.grad((got * upstream).sum(), (text, feats))
    expected = torch.autograd.grad((want * upstream).sum(), (text, feats))
    assert all(torch.equal(x, y) for x, y in zip(grads, expected, strict=True))


def test_splice_refuses_features_that_do_not_fill_the_placeholders():
    """``masked_scatter`` raised on too few source values; ``splice`` must not write some positions and
    leave the rest as placeholder embeddings, nor read a wrong width as more rows."""
    from llava_wb.model.llava import splice

    text, mask = torch.zeros(2, 5, 4), torch.tensor([[1, 1, 0, 0, 0], [0, 0, 1, 1, 0]], dtype=torch.bool)
    assert torch.equal(splice(text, mask, torch.ones(2, 2, 4), 4)[mask], torch.ones(4, 4))
    for feats in (torch.ones(1, 2, 4), torch.ones(3, 2, 4), torch.ones(4, 2, 2)):  # too few, too many, too narrow
        with pytest.raises(ValueError, match="do not fill the 4 placeholder positions of width 4"):
            splice(text, mask, feats, 4)
