"""In-process training with the tiny model: learning, run-folder contents, stages, LoRA, init_from.

These call ``llava_wb.train.train`` directly (the notebook path, one process).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_fixtures import make_workspace, read_metrics, tiny_config

from llava_wb.train import ConfigError, load_config, train


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return make_workspace(tmp_path_factory.mktemp("train_run"), n=48, shard_size=16)


def weights(folder: Path | str) -> dict[str, torch.Tensor]:
    return load_file(str(Path(folder) / "model.safetensors"))


@pytest.mark.parametrize("decay", [{"lr_scheduler_kwargs": {"num_decay_steps": 4}}, {"decay_ratio": 0.4}])
def test_scheduler_kwargs_reach_the_schedule(ws, tmp_path, decay):
    """train.lr_scheduler_kwargs (or decay_ratio) reach transformers' scheduler: warmup-stable-decay holds
    the peak, then decays over the last 4 of 10 steps."""
    out = tmp_path / "run"
    cfg = tiny_config(ws, out, max_steps=10, warmup_ratio=0.0, save_steps=100, learning_rate=1e-3, logging_steps=1)
    cfg["train"].update(lr_scheduler_type="warmup_stable_decay", **decay)
    cfg["data"].update(sources=[ws["one_batch"]], num_workers=0)
    train(load_config(cfg))
    lrs = [row["learning_rate"] for _, row in sorted(read_metrics(out).items())]
    assert lrs[:6] == [1e-3] * 6, lrs  # stable: 10 steps less 4 of decay
    decay = lrs[-3:]
    assert decay == sorted(decay, reverse=True) and decay[0] < 1e-3 and decay[-1] < 0.2e-3, lrs


def test_loss_falls_on_a_repeated_batch_and_run_folder_is_complete(ws, tmp_path):
    out = tmp_path / "run"
    cfg = tiny_config(
        ws, out, max_steps=15, warmup_ratio=0.0, save_steps=10, learning_rate=1e-2, lr_scheduler_type="constant"
    )
    cfg["data"].update(sources=[ws["one_batch"]], num_workers=0)
    result = train(load_config(cfg))
    rows = read_metrics(out)
    losses = [rows[s]["loss"] for s in sorted(rows)]
    assert sorted(rows) == list(range(1, 16)) and result["global_step"] == 15 and result["finished"]
    assert losses[-1] < 0.5 * losses[0], losses
    row = rows[15]
    for key in (
        "learning_rate",
        "grad_norm",
        "samples_per_s",
        "tokens_per_s",
        "visual_tokens_per_sample",
        "data_wait_frac",
        "lr/llm",
        "lr/projector",
        "lr/tower",
        "epoch",
    ):
        assert key in row, key
    assert row["samples_per_s"] > 0 and row["tokens_per_s"] > row["samples_per_s"]
    assert 0 < row["visual_tokens_per_sample"] <= 16  # one 16-token image per sample (text-only ones: 0)
    assert load_config(out / "resolved_config.yaml").to_dict() == load_config(cfg).to_dict()
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert json.loads((out / "result.json").read_text())["global_step"] == 15
    ckpt = out / "checkpoint-15"  # saved at the end; save_total_limit 2 keeps checkpoint-10 too
    assert {
        "complete.json",
        "loader_state_rank0.json",
        "optimizer.pt",
        "scheduler.pt",
        "rng_state.pth",
        "trainer_state.json",
        "model.safetensors",
    } <= {p.name for p in ckpt.iterdir()}
    assert (out / "checkpoint-10" / "complete.json").is_file()

    from llava_wb.model import load_bundle

    model, tok = load_bundle(out / "final")
    assert model.tokens_per_image == 16 and tok.convert_tokens_to_ids("<image>") == model.config.image_token_id
    for name, tensor in weights(out / "final").items():
        assert torch.equal(tensor, weights(ckpt)[name]), name


def test_output_dir_is_not_silently_reused(ws, tmp_path):
    out = tmp_path / "run"
    train(load_config(tiny_config(ws, out, max_steps=1, log_sample_ids=False, report_to="none")))
    with pytest.raises(ConfigError, match=r"train\.resume=true.*train\.overwrite=true"):
        train(load_config(tiny_config(ws, out, max_steps=1)))
    result = train(load_config(tiny_config(ws, out, max_steps=2, overwrite=True, report_to="none")))
    assert result["global_step"] == 2 and not (out / "checkpoint-1").exists()


def test_pretrain_then_finetune_from_its_output(ws, tmp_path):
    s1, s2 = tmp_path / "stage1", tmp_path / "stage2"
    r1 = train(
        load_config(tiny_config(ws, s1, stage="pretrain", max_steps=3, report_to="none"), ["model.vision.freeze=true"])
    )
    assert r1["trainable_parameters"]["projector"] > 0
    assert r1["trainable_parameters"]["tower"] == r1["trainable_parameters"]["llm"] == 0
    # stage 2 starts from stage 1's final/ (model + tokenizer); projector frozen here to see it carried over
    cfg2 = tiny_config(
        ws, s2, stage="finetune", max_steps=2, init_from=str(s1), report_to="none", trainable={"projector": False}
    )
    del cfg2["tokenizer"]  # taken from the stage-1 bundle
    r2 = train(load_config(cfg2, ["model.vision.freeze=true"]))
    assert r2["trainable_parameters"]["llm"] > 0 and r2["trainable_parameters"]["projector"] == 0
    w1, w2 = weights(s1 / "final"), weights(s2 / "final")
    proj = [k for k in w1 if k.startswith("projector.")]
    llm = [k for k in w1 if k.startswith("language_model.") and "layers.0.mlp" in k]
    assert proj and all(torch.equal(w1[k], w2[k]) for k in proj)
    assert llm and not all(torch.equal(w1[k], w2[k]) for k in llm)
    with pytest.raises(ConfigError, match=r"train\.init_from.*model\.projector\.type"):
        train(
            load_config(
                cfg2,
                ["model.vision.freeze=true", "model.projector.type=linear", f"train.output_dir={tmp_path / 'bad'}"],
            )
        )


def test_lora_with_gradient_checkpointing_trains_adapters_and_saves_a_merged_model(ws, tmp_path):
    out = tmp_path / "lora"
    result = train(
        load_config(
            tiny_config(
                ws,
                out,
                max_steps=2,
                report_to="none",
                gradient_checkpointing=True,
                lora={"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
            )
        )
    )
    full = sum(v.numel() for k, v in weights(out / "final").items() if k.startswith("language_model."))
    assert 0 < result["trainable_parameters"]["llm"] < full / 10
    assert not [k for k in weights(out / "final") if "lora" in k]  # merged into the base weights
    lora_b = [v for k, v in weights(out / "checkpoint-2").items() if "lora_B" in k]  # checkpoints keep adapters
    assert lora_b and any(bool(v.abs().sum() > 0) for v in lora_b)  # B starts at zero: the adapters trained

    from llava_wb.model import load_bundle

    model, _ = load_bundle(out / "final")
    ids = torch.tensor([[model.config.text_config.bos_token_id, 10, 11]])
    assert model(input_ids=ids).logits.shape[:2] == (1, 3)
