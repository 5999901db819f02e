"""instruct_resample: properties (hypothesis), the answer-leak test, the multi-turn rule, training."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny import TINY_LLAMA, TINY_VISION

from llava_wb.data.collate import Collator
from llava_wb.data.conversation import build_prompt, tokenize_conversation
from llava_wb.model import ModelConfig, build_model
from llava_wb.model.projectors import build_projector
from llava_wb.model.reducers import build_reducer
from llava_wb.model.resample import (
    distinctiveness,
    instruction_dots,
    instruction_rows,
    relevance,
    resample,
    split_last_linear,
    standardize,
    temporal_novelty,
)

grids = st.tuples(st.integers(1, 3), st.integers(1, 5), st.integers(1, 5))


def _inputs(grid: tuple[int, int, int], seed: int, b: int = 2, d: int = 6, l: int = 4):  # noqa: E741
    g = torch.Generator().manual_seed(seed)
    n = grid[0] * grid[1] * grid[2]
    x = torch.randn(b, n, d, generator=g)
    q = torch.randn(b, l, d, generator=g)
    mask = torch.rand(b, l, generator=g) > 0.3
    return x, q, mask


@settings(max_examples=60, deadline=None)
@given(grid=grids, keep_frac=st.floats(0.05, 1.0), seed=st.integers(0, 10_000))
def test_order_sizes_groups_and_batching(grid: tuple[int, int, int], keep_frac: float, seed: int) -> None:
    x, q, mask = _inputs(grid, seed)
    n = x.shape[1]
    keep = max(1, int(round(keep_frac * n)))
    red = build_reducer("instruct_resample", {"tokens": keep, "novelty": 0.5}).eval()
    out = red(x, grid, query=q, query_mask=mask, project=lambda v: v)
    assert out.tokens.shape == (2, keep, 6) and red.output_len(grid) == keep
    assert bool((out.positions.diff(dim=1) > 0).all())  # ascending (t, h, w) order
    assert out.sizes.sum(1).tolist() == [n, n]
    assert bool((out.group_ids >= 0).all()) and bool((out.group_ids < keep).all())
    for b in range(2):  # group ids partition the input, sizes count them, a kept patch is in its own group
        assert torch.bincount(out.group_ids[b], minlength=keep).tolist() == out.sizes[b].tolist()
        assert out.group_ids[b, out.positions[b]].tolist() == list(range(keep))
        one = red(x[b : b + 1], grid, query=q[b : b + 1], query_mask=mask[b : b + 1], project=lambda v: v)
        torch.testing.assert_close(one.tokens[0], out.tokens[b])  # batched == per sample
    again = red(x, grid, query=q, query_mask=mask, project=lambda v: v)
    assert torch.equal(again.positions, out.positions)  # deterministic


def test_keep_all_is_the_identity_and_size_weighted_merge() -> None:
    x, q, mask = _inputs((1, 3, 3), 0)
    out = build_reducer("instruct_resample", {"tokens": 9})(x, (1, 3, 3), query=q, query_mask=mask, project=lambda v: v)
    torch.testing.assert_close(out.tokens, x)
    scores = torch.tensor([[5.0, 0, 0, 4.0]])
    y = torch.tensor([[[1.0, 0], [0.9, 0.1], [0.1, 0.9], [0, 1.0]]])
    merged = resample(y, scores, 2)
    assert merged.positions.tolist() == [[0, 3]] and merged.sizes.tolist() == [[2, 2]]
    torch.testing.assert_close(merged.tokens, torch.tensor([[[0.95, 0.05], [0.05, 0.95]]]))


def test_relevance_picks_the_tokens_like_the_instruction() -> None:
    x = torch.eye(4).unsqueeze(0)  # token i points along axis i
    q = torch.tensor([[[0.0, 0, 1, 0], [9, 9, 9, 9]]])
    mask = torch.tensor([[True, False]])  # the second query token is not instruction: ignored
    rel = relevance(instruction_dots(x, q, lambda v: v), mask)
    assert rel.argmax().item() == 2 and rel[0, 2].item() == pytest.approx(
        3**0.5, rel=1e-4
    )  # standardised: (1 - 1/4) / sd
    out = build_reducer("instruct_resample", {"tokens": 1, "novelty": 0.0, "saliency": 0.0})(
        x, (1, 2, 2), query=q, query_mask=mask, project=lambda v: v
    )
    assert out.positions.tolist() == [[2]]
    assert relevance(instruction_dots(x, q, lambda v: v), torch.zeros_like(mask)).abs().sum() == 0  # no instruction
    flat = relevance(instruction_dots(x, q, lambda v: v), torch.tensor([[False, True]]))
    assert flat.abs().max() < 1e-4  # a word equally close to every token (like a role tag) ranks none


@pytest.mark.parametrize("name", ["mlp2x_gelu", "linear"])
def test_pulling_the_last_layer_back_ranks_like_projecting_every_token(name: str) -> None:
    """<W h + b, q> = <h, W^T q> + <b, q>: the same standardised scores as projecting every token."""
    torch.manual_seed(0)
    proj = build_projector(name, 6, 10)
    assert split_last_linear(proj)[1] is not None  # the cheap path, not the full-projection fallback
    x, q = torch.randn(2, 9, 6), torch.randn(2, 5, 10)
    full = proj(x) @ q.transpose(1, 2)
    torch.testing.assert_close(standardize(instruction_dots(x, q, proj)), standardize(full), atol=1e-4, rtol=1e-4)


def test_only_instruction_rows_are_scored() -> None:
    q = torch.arange(2 * 6 * 2, dtype=torch.float32).view(2, 6, 2)
    mask = torch.tensor([[False, True, False, True, True, False], [False, False, False, False, True, False]])
    rows, rows_mask = instruction_rows(q, mask)
    assert rows.shape == (2, 3, 2) and rows_mask.tolist() == [[True, True, True], [True, False, False]]
    torch.testing.assert_close(rows[0], q[0, [1, 3, 4]])
    torch.testing.assert_close(rows[1, 0], q[1, 4])
    x = torch.randn(2, 5, 2)
    torch.testing.assert_close(
        relevance(instruction_dots(x, rows, lambda v: v), rows_mask),
        relevance(instruction_dots(x, q, lambda v: v), mask),
    )


def test_a_static_clip_keeps_what_changes() -> None:
    """Temporal novelty (standardised over the clip) outweighs a distinct but static patch."""
    torch.manual_seed(1)
    frame = torch.randn(1, 4, 8)
    clip = frame.repeat(1, 3, 1)
    clip[0, 4 + 2] = clip[0, 8 + 2] = torch.randn(8)  # patch 2 changes in frame 1 and stays
    red = build_reducer("instruct_resample", {"tokens": 1, "novelty": 2.0, "saliency": 1.0, "relevance": 0.0})
    assert red(clip, (3, 2, 2)).positions.tolist() == [[6]]


def test_distinctiveness_and_the_relevance_weight() -> None:
    frame = torch.ones(1, 4, 3)
    frame[0, 1] = torch.tensor([1.0, -1, 0])  # one patch unlike the rest of its frame
    assert distinctiveness(frame, (1, 2, 2)).argmax().item() == 1
    x = torch.eye(4).unsqueeze(0)
    mask = torch.tensor([[True]])
    blind = build_reducer("instruct_resample", {"tokens": 1, "novelty": 0.0, "relevance": 0.0})
    picks = {
        blind(
            x + 0.1, (1, 2, 2), query=torch.eye(4)[i].view(1, 1, 4), query_mask=mask, project=lambda v: v
        ).positions.item()
        for i in range(4)
    }
    assert len(picks) == 1  # relevance weight 0: the question does not matter


def test_temporal_novelty_is_zero_for_a_static_patch() -> None:
    frame = torch.randn(1, 4, 3)
    clip = torch.cat([frame, frame, -frame], 1)  # 3 frames of a 2x2 grid: static, then flipped
    nov = temporal_novelty(clip, (3, 2, 2)).view(3, 4)
    torch.testing.assert_close(nov[1], torch.zeros(4), atol=1e-6, rtol=0)
    torch.testing.assert_close(nov[2], torch.full((4,), 2.0))
    torch.testing.assert_close(nov[0], torch.full((4,), 1.0))  # the first frame: the mean of the others
    assert temporal_novelty(frame, (1, 2, 2)).abs().sum() == 0


def test_gradients_reach_the_inputs_and_the_learned_scorer() -> None:
    x, q, mask = _inputs((2, 3, 3), 1)
    x.requires_grad_(True)
    red = build_reducer("instruct_resample", {"ratio": 0.5, "mode": "learned", "dim": 8})
    red.bind(6, 6)
    torch.nn.init.normal_(red.query_proj.weight)
    red.train()
    out = red(x, (2, 3, 3), query=q, query_mask=mask, project=lambda v: v)
    out.tokens.square().sum().backward()
    assert x.grad is not None and bool((x.grad.abs().sum(-1) > 0).all())  # every token reaches the output
    assert red.visual_proj.weight.grad.abs().sum() > 0 and red.query_proj.weight.grad.abs().sum() > 0


def test_merged_tokens_scores_get_a_gradient_in_learned_mode() -> None:
    """One kept token of four: a loss blind to the token's scale still trains the scores of the three
    tokens merged into it (their weight in the average), and the values equal the eval-mode output."""
    torch.manual_seed(0)
    x, q = torch.randn(1, 4, 6), torch.randn(1, 3, 6)
    mask = torch.ones(1, 3, dtype=torch.bool)
    red = build_reducer("instruct_resample", {"tokens": 1, "mode": "learned", "dim": 8, "novelty": 0.0})
    red.bind(6, 6)
    torch.nn.init.normal_(red.query_proj.weight)
    red.train()
    out = red(x, (1, 2, 2), query=q, query_mask=mask, project=lambda v: v)
    torch.nn.functional.cosine_similarity(out.tokens[0, 0], torch.ones(6), dim=0).backward()
    assert red.visual_proj.weight.grad.abs().sum() > 0
    with torch.no_grad():
        ref = red.eval()(x, (1, 2, 2), query=q, query_mask=mask, project=lambda v: v)
    assert torch.equal(out.tokens.detach(), ref.tokens)  # the gate is exactly 1 in value
    assert out.sizes.tolist() == ref.sizes.tolist() == [[4]]


# ----------------------------------------------------------------------------- in the model
@pytest.fixture(scope="module")
def tok() -> Any:
    from llava_wb.tokenizer import build_demo_tokenizer, demo_corpus

    return build_demo_tokenizer(demo_corpus(["what colour is the circle square triangle red blue green yes no"]))


def _model(tok: Any, mode: str = "zero", novelty: float = 0.5, saliency: float = 1.0) -> Any:
    torch.manual_seed(0)
    return build_model(
        ModelConfig.from_dict(
            {
                "vision": {"type": "clip", "config": dict(TINY_VISION)},
                "llm": {"config": dict(TINY_LLAMA)},
                "reducer": {
                    "type": "instruct_resample",
                    "options": {"ratio": 0.75, "mode": mode, "novelty": novelty, "saliency": saliency},
                },
                "video": {"frames": 4},
            }
        ),
        tok,
    ).eval()


def _selection(model: Any, tok: Any, conv: list[dict[str, str]], media: dict[str, list], prompt: bool = False) -> list:
    """The positions the reducer kept for each media item of one conversation."""
    fn = build_prompt if prompt else tokenize_conversation
    t = fn(
        conv,
        tok,
        "vicuna_v1",
        max_length=512,
        media_tokens=model.media_tokens,
        expected_media={k: len(v) for k, v in media.items()},
    )
    batch = Collator(tok.pad_token_id)(
        [{"input_ids": t.input_ids, "labels": t.labels, "instruction_mask": t.instruction_mask, "media": media}]
    )
    kept = []
    hook = model.reducer.register_forward_hook(lambda mod, args, out: kept.append(out.positions.tolist()))
    try:
        with torch.no_grad():
            model(**{k: v for k, v in batch.items() if k != "labels"})
    finally:
        hook.remove()
    return kept


@pytest.mark.parametrize("mode", ["zero", "learned"])
def test_answers_never_change_the_selection_questions_do(tok: Any, mode: str) -> None:
    model = _model(tok, mode, novelty=0.0, saliency=0.0)  # relevance alone decides (the others ignore the question)
    if mode == "learned":
        torch.nn.init.normal_(model.reducer.query_proj.weight)
    torch.manual_seed(3)
    images = [torch.randn(3, 32, 32) for _ in range(6)]
    video = torch.randn(4, 3, 32, 32)
    changed = 0
    for i, img in enumerate(images):
        for placeholder, media in (("<image>", {"image": [img]}), ("<video>", {"video": [video * (i + 1)]})):
            ask = lambda q, a, p=placeholder: [{"from": "human", "value": f"{p} {q}"}, {"from": "gpt", "value": a}]  # noqa: E731
            base = _selection(model, tok, ask("what colour is the circle", "red"), media)
            assert _selection(model, tok, ask("what colour is the circle", "blue green no"), media) == base
            changed += _selection(model, tok, ask("square triangle green no", "red"), media) != base  # no shared word
    assert changed > 6, changed  # a different question moves the selection in most of the 12 items (8 of 12 measured)


def test_multi_turn_rule_union_of_questions_never_answers(tok: Any) -> None:
    """One selection per image from the human turns present: earlier answers in a prompt do not count."""
    model = _model(tok)
    torch.manual_seed(5)
    media = {"image": [torch.randn(3, 32, 32)]}
    turns = [
        {"from": "human", "value": "<image> what colour is the circle"},
        {"from": "gpt", "value": "red"},
        {"from": "human", "value": "is the square blue"},
    ]
    prompt = _selection(model, tok, turns, media, prompt=True)
    other_answer = [dict(turns[0]), {"from": "gpt", "value": "green triangle"}, dict(turns[2])]
    assert _selection(model, tok, other_answer, media, prompt=True) == prompt
    train = _selection(model, tok, turns + [{"from": "gpt", "value": "no"}], media)
    assert train == prompt  # the training sequence holds the same questions: the same selection


def test_trains_end_to_end_and_round_trips(tok: Any, tmp_path: Any) -> None:
    from llava_wb.model.bundle import load_bundle, save_bundle

    model = _model(tok, "learned").train()
    conv = [{"from": "human", "value": "<image> what colour is the circle"}, {"from": "gpt", "value": "red"}]
    t = tokenize_conversation(
        conv, tok, "vicuna_v1", max_length=512, media_tokens=model.media_tokens, expected_media={"image": 1}
    )
    batch = Collator(tok.pad_token_id)(
        [
            {
                "input_ids": t.input_ids,
                "labels": t.labels,
                "instruction_mask": t.instruction_mask,
                "media": {"image": [torch.randn(3, 32, 32)]},
            }
        ]
    )
    model(**batch).loss.backward()
    assert model.reducer.query_proj.weight.grad.abs().sum() > 0  # the scorer learns through the gate
    model.eval()
    save_bundle(model, tok, tmp_path / "m")
    loaded, _ = load_bundle(tmp_path / "m")
    torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits)
