"""bf16 autocast on the CPU (``llava_wb.model.cpu_amp``): ``sdpa_fp32`` computes attention in fp32 where
``sdpa`` would get bf16, equals ``sdpa`` outside autocast, keeps packed samples apart with its mask, and
a ``train.bf16`` run on the CPU switches to it without writing it into the saved model."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from test_packing_model import REDUCERS, build, pack, per_sample, run, samples, tokenizer
from torch.utils._python_dispatch import TorchDispatchMode
from train_fixtures import make_workspace, tiny_config

from llava_wb.data.collate import Collator
from llava_wb.model.cpu_amp import SDPA_FP32, use_fp32_attention
from llava_wb.train import load_config, train


@pytest.fixture(scope="module")
def tok() -> Any:
    return tokenizer()


class AttentionDtypes(TorchDispatchMode):
    """Records the dtype of the query of every scaled-dot-product-attention kernel that runs."""

    def __init__(self) -> None:
        super().__init__()
        self.dtypes: list[torch.dtype] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if "scaled_dot_product" in func.name():
            self.dtypes.append(args[0].dtype)
        return func(*args, **(kwargs or {}))


def attention_dtypes(model: Any, batch: dict[str, Any]) -> set[torch.dtype]:
    with torch.autocast("cpu", dtype=torch.bfloat16), AttentionDtypes() as seen:
        run(model, batch)
    assert seen.dtypes, "no attention kernel ran"
    return set(seen.dtypes)


def test_attention_runs_in_fp32_under_cpu_autocast(tok: Any) -> None:
    model = build(tok, REDUCERS["avgpool"]).eval()
    batch = Collator(pad_token_id=tok.pad_token_id)(samples(tok, model)[:3])
    assert attention_dtypes(model, batch) == {torch.bfloat16}  # control: plain sdpa gets bf16 there
    switched = use_fp32_attention(model)
    assert {"LlamaForCausalLM", "CLIPVisionModel", "WhisperEncoder"} <= set(switched), switched
    assert attention_dtypes(model, batch) == {torch.float32}


def test_sdpa_fp32_equals_sdpa_without_autocast(tok: Any) -> None:
    model = build(tok, REDUCERS["avgpool"]).eval()
    batch = Collator(pad_token_id=tok.pad_token_id)(samples(tok, model))
    want = run(model, batch).logits
    use_fp32_attention(model)
    assert model.language_model.config._attn_implementation == SDPA_FP32
    assert torch.equal(run(model, batch).logits, want)


@pytest.mark.parametrize("name", ["avgpool", "local_merge_original"])
def test_packed_rows_stay_apart_under_bf16_autocast(tok: Any, name: str) -> None:
    """Sample B's logits do not move when A, packed before it, changes; over the whole row they do
    (the control: without its mask function, a registered attention would get no mask at all)."""
    model = build(tok, REDUCERS[name], attn=SDPA_FP32).eval()
    s, other = samples(tok, model, seed=0), samples(tok, model, seed=1)
    rows = [pack(tok, [[a, s[4]]]) for a in (s[0], {**other[4], "id": "x"})]
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        logits = [per_sample(run(model, r).logits, r, True)[1] for r in rows]
        whole = []
        for r in rows:
            r = {**r, "attention_mask": torch.ones_like(r["input_ids"])}
            r["position_ids"] = torch.arange(r["input_ids"].shape[1]).unsqueeze(0)
            whole.append(per_sample(run(model, r).logits, rows[0], True)[1])
    assert float((logits[0] - logits[1]).abs().max()) <= 1e-6
    assert float((whole[0] - whole[1]).abs().max()) > 1e-2


def test_bf16_training_on_the_cpu_switches_attention_but_saves_sdpa(tmp_path) -> None:
    ws = make_workspace(tmp_path / "ws", n=16, shard_size=16)
    out = tmp_path / "run"
    cfg = tiny_config(ws, out, max_steps=2, bf16=True, report_to="none", log_sample_ids=False)
    cfg["data"]["num_workers"] = 0
    result = train(load_config(cfg))
    assert result["finished"] and result["bf16"] is True
    assert "LlamaForCausalLM" in result["fp32_attention"], result["fp32_attention"]
    saved = (out / "final" / "config.json").read_text()
    assert SDPA_FP32 not in saved and json.loads(saved)["model_type"] == "llava_wb"
