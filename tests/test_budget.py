"""The token budget calculator agrees with the model it describes and with hand-counted FLOPs."""

from __future__ import annotations

import pytest
from test_model import LLAMA, VISION, make_tokenizer

from llava_wb import budget
from llava_wb.model import ModelConfig, build_model


@pytest.mark.parametrize(
    "reducer,options",
    [
        ("identity", {}),
        ("avgpool", {}),
        ("local_merge", {"ratio": 0.5}),
        ("tome_sd", {"tokens": 6}),
        ("local_merge", {"ratio": 0.75, "placement": "tower"}),
    ],
)
def test_visual_tokens_equal_the_models_own_count(reducer, options):
    tok = make_tokenizer()
    model = build_model(
        ModelConfig.from_dict(
            {
                "vision": {"config": dict(VISION)},
                "llm": {"config": dict(LLAMA)},
                "reducer": {"type": reducer, "options": options},
            }
        ),
        tok,
    )
    b = budget.estimate(
        "x",
        {**VISION, "feature_layer": -2},
        {**LLAMA, "vocab_size": len(tok)},
        reducer,
        options,
        text_tokens=10,
        images=2,
    )
    assert b.visual_tokens == 2 * model.tokens_per_image and b.seq_len == b.visual_tokens + 10


def test_llm_flops_by_hand():
    cfg = {
        "hidden_size": 8,
        "intermediate_size": 16,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "vocab_size": 10,
        "gated_mlp": True,
    }
    seq = 5
    # q, o: 8x8 each; k, v: 8x4 each; gated MLP: 3 x 8x16; per layer 2*64 + 2*32 + 384 = 576 parameters
    by_hand = 2 * seq * 2 * 576 + 2 * 2 * seq * seq * 8 + 2 * seq * 8 * 10
    assert budget.llm_forward_flops(cfg, seq) == by_hand
    assert budget.kv_cache_bytes(cfg, seq) == 2 * 2 * seq * 1 * 4 * 2


def test_llava15_budget_falls_with_the_ratio_and_tower_placement_saves_tower_compute():
    rows = budget.budget_table(
        budget.CLIP_L14_336,
        budget.VICUNA_7B,
        {
            "identity": ("identity", {}),
            "0.5": ("local_merge", {"ratio": 0.5}),
            "0.75": ("local_merge", {"ratio": 0.75}),
            "0.75 tower": ("local_merge", {"ratio": 0.75, "placement": "tower", "layers": 4}),
        },
    )
    assert [r.visual_tokens for r in rows] == [576, 288, 144, 144]
    train = [r.llm_flops_train for r in rows]
    assert train[0] > train[1] > train[2] == train[3]
    assert rows[3].tower_flops_forward < rows[2].tower_flops_forward == rows[0].tower_flops_forward
    assert "| identity | 576 |" in budget.to_markdown(rows)
