"""Reducers inside the model: placement in the tower, original position ids, size embeddings, save/load."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from test_model import collate, make_samples, make_tokenizer, model_dict

from llava_wb.model import LlavaWBForCausalLM, ModelConfig, build_model


@pytest.fixture(scope="module")
def tok() -> Any:
    return make_tokenizer()


def build(tok: Any, reducer: dict[str, Any], seed: int = 0, **vision: Any) -> Any:
    torch.manual_seed(seed)
    return build_model(ModelConfig.from_dict({**model_dict(**vision), "reducer": reducer}), tok).eval()


def test_tower_placement_with_no_merges_equals_the_plain_tower(tok):
    plain = build(tok, {"type": "identity"})
    inside = build(tok, {"type": "local_merge", "options": {"ratio": 0.0, "placement": "tower", "layers": 1}})
    inside.load_state_dict(plain.state_dict())
    pix = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(inside.encode_images(pix).embeds, plain.encode_images(pix).embeds)


@pytest.mark.parametrize("select", ["patch", "cls_patch"])
def test_tower_placement_cuts_tokens_and_trains(tok, select):
    model = build(
        tok,
        {"type": "local_merge", "options": {"ratio": 0.75, "placement": "tower", "layers": 1}},
        select=select,
        feature_layer=-1,
        freeze=False,
    ).train()
    assert model.tokens_per_image == 4 + (select == "cls_patch")
    batch = collate(tok, make_samples(tok, model.tokens_per_image))
    out = model(**batch)
    out.loss.backward()
    first = model.vision_tower.model.encoder.layers[0].self_attn.k_proj.weight
    assert first.grad is not None and bool(first.grad.abs().sum() > 0)


def test_original_position_ids_skip_merged_patches_and_continue_after_the_image(tok):
    model = build(tok, {"type": "local_merge", "options": {"ratio": 0.5, "position_ids": "original"}})
    samples = make_samples(tok, model.tokens_per_image)
    batch = collate(tok, samples, "left")
    embeds, _, pos = model.embed_inputs(
        batch["input_ids"], batch["pixel_values"], batch["image_counts"], attention_mask=batch["attention_mask"]
    )
    feats = model.encode_images(batch["pixel_values"])
    mask = batch["input_ids"] == model.image_token_id
    b = 1  # one image: visual positions = first visual position + original raster index
    vis = pos[b][mask[b]]
    start = int(vis[0]) - int(feats.reduced.positions[0, 0])
    assert vis.tolist() == (start + feats.reduced.positions[0]).tolist()
    after = int(mask[b].nonzero().max()) + 1
    assert int(pos[b, after]) == start + model.patches_per_image  # text continues after all 16 patches
    real = batch["attention_mask"].bool()
    assert all(bool((p[r][1:] > p[r][:-1]).all()) for p, r in zip(pos, real))  # increasing within each sample
    prompt = collate(tok, make_samples(tok, model.tokens_per_image, generation=True), "left")
    keys = ("input_ids", "attention_mask", "pixel_values", "image_counts")
    gen = model.generate(**{k: prompt[k] for k in keys}, max_new_tokens=1)
    # the first generated token is the argmax of a forward pass with the same position ids
    logits = model(**{k: prompt[k] for k in keys}).logits[:, -1]
    assert gen[:, 0].tolist() == logits.argmax(-1).tolist()


def test_size_embedding_starts_at_zero_trains_and_round_trips(tok, tmp_path):
    model = build(tok, {"type": "local_merge", "options": {"ratio": 0.5, "size_embedding": True}}).train()
    emb = model.reducer.size_embed
    assert emb.num_embeddings == 17 and bool((emb.weight == 0).all())
    model(**collate(tok, make_samples(tok, model.tokens_per_image))).loss.backward()
    assert emb.weight.grad is not None and bool(emb.weight.grad.abs().sum() > 0)
    model.save_pretrained(tmp_path)
    again = LlavaWBForCausalLM.from_pretrained(tmp_path)
    assert torch.equal(again.reducer.size_embed.weight, emb.weight)


def test_dropping_position_embeddings_makes_patch_features_position_free(tok):
    model = build(tok, {"type": "identity"}, position_embeddings=False, freeze=False)
    tower = model.vision_tower
    emb = tower.model.embeddings.position_embedding.weight
    assert bool((emb == 0).all()) and not emb.requires_grad
    pix = torch.randn(1, 3, 32, 32)
    swapped = pix.clone()  # swap patch (0, 0) with patch (3, 2): its features must move with it
    swapped[..., 0:8, 0:8], swapped[..., 24:32, 16:24] = pix[..., 24:32, 16:24], pix[..., 0:8, 0:8]
    a, b = tower(pix)[0], tower(swapped)[0]
    torch.testing.assert_close(a[0], b[14], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a[5], b[5], atol=1e-5, rtol=1e-5)
