"""Packed rows in the model: every sample's logits, loss and gradients equal the padded batch's, for
every reducer; attention never crosses samples; unsupported LLMs are refused."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from test_model_av import TINY_WHISPER
from tiny import TINY_LLAMA, TINY_VISION

from llava_wb.data.collate import Collator
from llava_wb.data.conversation import tokenize_conversation
from llava_wb.data.packing import PackedCollator
from llava_wb.model import ModelConfig, build_model

REDUCERS = {
    "identity": {"type": "identity"},
    "avgpool": {"type": "avgpool", "options": {"window": [2, 2, 2]}},
    "local_merge": {"type": "local_merge", "options": {"ratio": 0.75, "window": [2, 2, 2]}},
    "local_merge_original": {"type": "local_merge", "options": {"ratio": 0.5, "position_ids": "original"}},
    "tome_sd": {"type": "tome_sd", "options": {"ratio": 0.5}},
    # scored on the instruction alone, so reading a neighbour's instruction changes what it keeps
    "instruct_resample": {"type": "instruct_resample", "options": {"ratio": 0.5, "saliency": 0.0, "novelty": 0.0}},
}


def build(tok: Any, reducer: dict, llm: dict | None = None, attn: str = "sdpa") -> Any:
    torch.manual_seed(0)
    cfg = {
        "vision": {"type": "clip", "config": dict(TINY_VISION)},
        "llm": {"config": dict(llm or TINY_LLAMA), "attn_implementation": attn},
        "reducer": reducer,
        "video": {"frames": 4},
        "audio": {"config": dict(TINY_WHISPER), "tokens_per_second": 10},
    }
    return build_model(ModelConfig.from_dict(cfg), tok)


def tokenizer() -> Any:
    """The demo tokenizer over the words of ``samples``."""
    from llava_wb.tokenizer import build_demo_tokenizer, demo_corpus

    return build_demo_tokenizer(
        demo_corpus(["What colour is it? Which way? High or low? What is two plus two? red blue four hi"])
    )


@pytest.fixture(scope="module")
def tok() -> Any:
    return tokenizer()


def samples(tok: Any, model: Any, seed: int = 0) -> list[dict[str, Any]]:
    g = torch.Generator().manual_seed(seed)
    img = lambda: torch.randn(3, 32, 32, generator=g)  # noqa: E731
    vid = torch.randn(4, 3, 32, 32, generator=g)
    aud = torch.randn(80, 100, generator=g)
    cases = [
        ("<image>\nWhat colour is it?", "red", {"image": [img()]}),
        ("What is two plus two?", "four", {}),
        ("<video>\nWhich way?", "blue", {"video": [vid]}),
        ("<audio>\nHigh or low?", "hi", {"audio": [aud]}),
        ("<image> <image> What colour is it?", "blue red", {"image": [img(), img()]}),
        ("<image> <video> <audio> What is it?", "red", {"image": [img()], "video": [vid], "audio": [aud]}),
    ]
    ids = tok("What is two plus two? four")["input_ids"]
    # a language-modelling sample: its first label is set, so packing must not predict it across the boundary
    lm = {"id": "lm", "input_ids": ids, "labels": ids, "instruction_mask": torch.zeros(len(ids), dtype=torch.long)}
    out = []
    for i, (question, answer, media) in enumerate(cases):
        t = tokenize_conversation(
            [{"from": "human", "value": question}, {"from": "gpt", "value": answer}],
            tok,
            "vicuna_v1",
            max_length=512,
            media_tokens=model.media_tokens,
            expected_media={k: len(v) for k, v in media.items()},
        )
        out.append(
            {
                "id": f"s{i}",
                "input_ids": t.input_ids,
                "labels": t.labels,
                "instruction_mask": torch.tensor(t.instruction_mask),
                "media": media,
            }
        )
    return out + [lm]


def model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    keys = ("input_ids", "labels", "attention_mask", "position_ids", "instruction_mask")
    keys += tuple(k for k in batch if k.endswith(("_values", "_counts")))
    return {k: batch[k] for k in keys if k in batch}


def per_sample(logits: torch.Tensor, batch: dict[str, Any], packed: bool) -> list[torch.Tensor]:
    if not packed:
        return [logits[b, : int(n)] for b, n in enumerate(batch["attention_mask"].sum(1))]
    out = []
    for r, starts in enumerate(batch["position_ids"]):
        bounds = (starts == 0).nonzero().flatten().tolist() + [int(batch["token_mask"][r].sum())]
        out += [logits[r, a:b] for a, b in zip(bounds, bounds[1:]) if a < b]
    return out


def run(model: Any, batch: dict[str, Any], seed: int = 0) -> Any:
    torch.manual_seed(seed)  # tome_sd may draw random destinations
    return model(**model_inputs(batch))


def pack(tok: Any, rows: list[list[dict]]) -> dict[str, Any]:
    return PackedCollator(pad_token_id=tok.pad_token_id)(rows)


@pytest.mark.parametrize("name", list(REDUCERS))
def test_packed_equals_padded_logits_loss_and_gradients(tok: Any, name: str) -> None:
    model = build(tok, REDUCERS[name])
    s = samples(tok, model)
    padded = Collator(pad_token_id=tok.pad_token_id)(s)
    packed = pack(tok, [[s[0], s[1], s[2]], [s[3], s[4]], [s[5], s[6]]])
    assert "attention_mask" not in packed
    model.train()  # with the training-only terms (blank media) and gradients
    out_pad, out_pack = run(model, padded), run(model, packed)
    want, got = per_sample(out_pad.logits, padded, False), per_sample(out_pack.logits, packed, True)
    assert len(want) == len(got) == len(s)
    for i, (a, b) in enumerate(zip(want, got)):
        assert a.shape == b.shape, i
        assert float((a - b).abs().max()) <= 1e-5, (name, i)
    assert abs(float(out_pad.loss) - float(out_pack.loss)) <= 1e-5
    grads = []
    for out in (out_pad, out_pack):
        model.zero_grad()
        out.loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for n, g in grads[0].items():
        scale = float(g.abs().max()) + 1e-12
        assert float((g - grads[1][n]).abs().max()) <= 1e-5 * max(scale, 1.0), (name, n)


def test_rows_of_one_sample_keep_original_positions(tok: Any) -> None:
    """Rows that hold one sample each and no padding have no restart: the model must still number
    the kept visual tokens by their patches, as in the padded batch."""
    model = build(tok, REDUCERS["local_merge_original"]).eval()
    s = samples(tok, model)
    for sample in (s[0], s[4]):
        alone = Collator(pad_token_id=tok.pad_token_id)([sample])
        packed = pack(tok, [[sample]])
        assert not bool((packed["position_ids"][:, 1:] == 0).any())
        want, got = run(model, alone).logits, run(model, packed).logits
        assert float((want - got).abs().max()) <= 1e-5


def test_per_sample_loss_equals_each_sample_alone(tok: Any) -> None:
    """A sample's loss in a packed row is its loss computed alone (no label crosses a boundary)."""
    model = build(tok, REDUCERS["avgpool"]).eval()
    s = samples(tok, model)
    text = s[6]
    row = pack(tok, [[s[1], text, s[0], text, s[3]]])
    logits = run(model, row).logits
    pieces = per_sample(logits, row, True)
    for sample, piece in zip([s[1], text, s[0], text, s[3]], pieces):
        alone = run(model, Collator(pad_token_id=tok.pad_token_id)([sample]))
        labels = torch.as_tensor(sample["labels"])
        loss = torch.nn.functional.cross_entropy(piece[:-1], labels[1:], ignore_index=-100)
        assert abs(float(loss) - float(alone.loss)) <= 1e-5


@pytest.mark.parametrize("name", ["avgpool", "local_merge_original", "instruct_resample"])
def test_a_sample_never_sees_its_row_neighbours(tok: Any, name: str) -> None:
    """Change everything about sample A (image and text): sample B, packed after it, must not move.
    The control shows the check can fail: the same rows with attention over the whole row leak."""
    model = build(tok, REDUCERS[name]).eval()
    s, other = samples(tok, model, seed=0), samples(tok, model, seed=1)
    a_one, a_two, b = s[0], {**other[4], "id": "x"}, s[4]  # B's answer depends on its own images only
    rows = [pack(tok, [[a, b]]) for a in (a_one, a_two)]
    logits = [per_sample(run(model, r).logits, r, True)[1] for r in rows]
    assert float((logits[0] - logits[1]).abs().max()) <= 1e-6
    leaky = []
    for r in rows:
        whole = {**r, "attention_mask": torch.ones_like(r["input_ids"])}
        whole["position_ids"] = torch.arange(r["input_ids"].shape[1]).unsqueeze(0)
        leaky.append(per_sample(run(model, whole).logits, r, True)[1])
    assert float((leaky[0] - leaky[1]).abs().max()) > 1e-3


def test_instruct_resample_reads_only_its_own_instruction(tok: Any) -> None:
    model = build(tok, REDUCERS["instruct_resample"]).eval()
    s = samples(tok, model)
    row = pack(tok, [[s[1], s[0]]])
    image_mask = row["input_ids"] == model.image_token_id
    query = torch.ones(1, row["input_ids"].shape[1], dtype=torch.bool)
    from llava_wb.model.packed import restrict_to_sample, segment_ids

    own = restrict_to_sample(query, segment_ids(row["position_ids"]), image_mask, model.tokens_per_image)
    first = len(s[1]["input_ids"])
    assert not bool(own[0, :first].any()) and bool(own[0, first : first + len(s[0]["input_ids"])].all())


def test_qwen2_packs_exactly_too(tok: Any) -> None:
    qwen = {**TINY_LLAMA, "model_type": "qwen2"}
    model = build(tok, REDUCERS["avgpool"], llm=qwen).eval()
    s = samples(tok, model)
    padded, packed = Collator(pad_token_id=tok.pad_token_id)(s), pack(tok, [s[:3], s[3:]])
    want, got = (
        per_sample(run(model, padded).logits, padded, False),
        per_sample(run(model, packed).logits, packed, True),
    )
    assert max(float((a - b).abs().max()) for a, b in zip(want, got)) <= 1e-5


def test_unsupported_llm_or_attention_is_refused(tok: Any) -> None:
    neox = {
        "model_type": "gpt_neox",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 4,
    }
    model = build(tok, REDUCERS["avgpool"], llm=neox)
    s = samples(tok, model)
    with pytest.raises(ValueError, match="model type 'gpt_neox'.*turn data.packing off"):
        run(model, pack(tok, [s[:2]]))
    model = build(tok, REDUCERS["local_merge_original"], attn="flex_attention")
    with pytest.raises(ValueError, match="position_ids 'original'.*'flex_attention'"):
        run(model, pack(tok, [s[:2]]))


@pytest.mark.parametrize("name", ["avgpool", "local_merge_original"])
def test_llm_inputs_are_what_forward_feeds_the_llm(tok: Any, name: str) -> None:
    """``llm_inputs`` (what bench_packing times the LLM alone on) gives the LLM what ``forward`` does:
    a packed row keeps no attention mask and restarting positions, unless the reducer numbers its
    tokens by their patches (then a mask per sample)."""
    model = build(tok, REDUCERS[name]).eval()
    s = samples(tok, model)
    row = pack(tok, [[s[0], s[1], s[4]]])
    inputs = model.llm_inputs(**model_inputs(row))
    assert (inputs["attention_mask"] is None) == (name == "avgpool")
    positions = inputs["position_ids"][0]
    assert int((positions == 0).sum()) == 3  # each sample counts from 0
    steps = positions[1:] - positions[:-1]
    assert bool((steps > 1).any()) == (name != "avgpool")  # original positions jump over merged patches
    want = run(model, row)
    got = model.language_model(**inputs, use_cache=False)
    assert torch.equal(want.logits, got.logits) and torch.equal(want.loss, got.loss)
