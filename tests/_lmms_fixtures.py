"""A llava_wb run folder (avgpool reducer, video, audio; untrained, built from config classes) and
the held-out shards it is scored on, for the lmms-eval adapter tests."""

from __future__ import annotations

from pathlib import Path

import yaml
from tiny import TINY_WHISPER

MIX = {"image": 0.4, "video": 0.25, "audio": 0.25, "text": 0.1}
MODEL = {
    "vision": {
        "type": "clip",
        "config": dict(
            image_size=32,
            patch_size=8,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
        ),
    },
    "llm": {
        "config": dict(
            model_type="llama",
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=512,
        )
    },
    "reducer": {"type": "avgpool", "options": {"window": [2, 2, 2]}},
    "video": {"frames": 4},
    "audio": {
        "config": dict(TINY_WHISPER),
        "tokens_per_second": 10,
    },
}


def av_run(base: Path, n_heldout: int = 12) -> dict[str, Path]:
    """``base/heldout`` (shards) and ``base/run`` (``final/`` bundle + ``resolved_config.yaml``)."""
    import torch

    from data_tools.convert_to_wds import convert
    from data_tools.make_synthetic import generate
    from llava_wb.model import ModelConfig, build_model
    from llava_wb.model.bundle import save_bundle
    from llava_wb.tokenizer import build_demo_tokenizer, demo_corpus
    from recipes.demo import stream_records

    data = generate(
        base / "data",
        n_pretrain=0,
        n_instruct=0,
        n_heldout=n_heldout,
        mix=MIX,
        progress=False,
        image_size=32,
        video_frames=4,
        seed=3,
    )
    summary = convert(
        [data["files"]["heldout"]], [data["media_root"]], base / "heldout", shard_size=8, workers=1, progress=False
    )
    assert summary.rejected == 0
    tok = build_demo_tokenizer(demo_corpus(records=stream_records(data["files"].values())))
    torch.manual_seed(0)
    model = build_model(ModelConfig.from_dict(MODEL), tok)
    save_bundle(model, tok, base / "run" / "final")
    (base / "run" / "resolved_config.yaml").write_text(
        yaml.safe_dump({"data": {"template": "vicuna_v1", "image": {"size": 32, "aspect": "pad"}}})
    )
    return {"heldout": base / "heldout", "run": base / "run"}
