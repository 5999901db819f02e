"""Video and audio end to end: synthetic records -> shards -> tokenized mixed batches -> a training
step of a model with an audio tower -> greedy evaluation per question type; corrupt media skipped."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny import TINY_WHISPER

from data_tools.convert_to_wds import convert
from data_tools.make_synthetic import generate
from llava_wb.data.config import DataConfig
from llava_wb.data.loader import build_train_loader
from llava_wb.model import ModelConfig, build_model
from llava_wb.model.media import media_settings

MIX = {"image": 0.4, "video": 0.25, "audio": 0.25, "text": 0.1}
VISION = dict(
    image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2
)
LLAMA = dict(
    model_type="llama",
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=1,
    num_attention_heads=2,
    num_key_value_heads=2,
    max_position_embeddings=512,
)
WHISPER = TINY_WHISPER


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from llava_wb.tokenizer import build_demo_tokenizer, demo_corpus
    from recipes.demo import stream_records

    base = tmp_path_factory.mktemp("av")
    data = generate(
        base / "data", n_pretrain=0, n_instruct=48, n_heldout=24, mix=MIX, progress=False, image_size=32, video_frames=4
    )
    shards = {}
    for split in ("instruct", "heldout"):
        summary = convert(
            [data["files"][split]], [data["media_root"]], base / split, shard_size=16, workers=1, progress=False
        )
        assert summary.rejected == 0 and summary.converted == {"instruct": 48, "heldout": 24}[split]
        shards[split] = base / split
    tok = build_demo_tokenizer(demo_corpus(records=stream_records(data["files"].values())))
    torch.manual_seed(0)
    model = build_model(
        ModelConfig.from_dict(
            {
                "vision": {"type": "clip", "config": VISION},
                "llm": {"config": LLAMA},
                "reducer": {"type": "avgpool", "options": {"window": [2, 2, 2]}},
                "video": {"frames": 4},
                "audio": {"config": WHISPER, "tokens_per_second": 10},
            }
        ),
        tok,
    )
    return {"data": data, "shards": shards, "tok": tok, "model": model, "base": base}


def loader(setup: dict[str, Any], path: Path, **data: Any) -> Any:
    model = setup["model"]
    cfg = DataConfig.from_dict(
        {
            "sources": [str(path)],
            "batch_size": 8,
            "num_workers": 0,
            "epoch_mode": "exact",
            "template": "vicuna_v1",
            "max_length": 256,
            "image": {"size": 32},
            **data,
        }
    )
    media = media_settings(model, cfg)
    cfg.video, cfg.audio = media.video, media.audio
    return build_train_loader(cfg, setup["tok"], media_tokens=model.media_tokens)


def test_mixed_shards_stream_as_mixed_batches_and_train(setup: dict[str, Any]) -> None:
    model = setup["model"]
    batches = list(loader(setup, setup["shards"]["instruct"]))
    counts = {k: sum(int(b[f"{k}_counts"].sum()) for b in batches if f"{k}_counts" in b) for k in model.media_tokens}
    info = json.loads(Path(setup["data"]["info"]).read_text())["counts"]["instruct"]["by_modality"]
    assert counts == {"image": info["image"], "video": info["video"], "audio": info["audio"]}
    mixed = next(b for b in batches if b.get("video_values") is not None and b.get("audio_values") is not None)
    assert mixed["video_values"].shape[1:] == (4, 3, 32, 32) and mixed["audio_values"].shape[1:] == (80, 200)
    for kind, per_item in model.media_tokens.items():
        placeholders = (mixed["input_ids"] == model.placeholder_id(kind)).sum(1)
        assert placeholders.tolist() == (mixed[f"{kind}_counts"] * per_item).tolist()
    model.train()
    keys = (
        "input_ids",
        "labels",
        "attention_mask",
        "pixel_values",
        "image_counts",
        "video_values",
        "video_counts",
        "audio_values",
        "audio_counts",
    )
    loss = model(**{k: mixed[k] for k in keys if k in mixed}).loss
    loss.backward()
    assert torch.isfinite(loss) and model.audio_tower.model.conv1.weight.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)
    model.eval()


def test_prefetching_a_mixed_batch_leaves_the_step_nothing_to_compute_in_the_towers(setup: dict[str, Any]) -> None:
    """Images, clip frames and audio clips go through the frozen towers in ``prefetch_media``; the
    forward on the same batch then only reads the caches and gives the uncached loss exactly."""
    import copy

    model = copy.deepcopy(setup["model"]).eval()
    model.requires_grad_(False)
    batch = next(
        b for b in loader(setup, setup["shards"]["instruct"]) if all(f"{k}_values" in b for k in ("video", "audio"))
    )
    batch = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
    plain = model(**{k: v for k, v in batch.items() if k != "token_mask"}).loss
    for tower in (model.vision_tower, model.audio_tower):
        tower.enable_feature_cache(2**24)
    items = batch["pixel_values"].shape[0] + batch["video_values"].shape[:2].numel() + batch["audio_values"].shape[0]
    assert model.prefetch_media(batch) == items
    computed = []
    for tower, name in ((model.vision_tower, "features"), (model.audio_tower, "pooled")):
        inner = getattr(tower, name)
        setattr(tower, name, lambda x, inner=inner: computed.append(x.shape[0]) or inner(x))
    assert model(**{k: v for k, v in batch.items() if k != "token_mask"}).loss == plain
    assert computed == []
    assert model.audio_tower.feature_cache.summary()["hits"] == batch["audio_values"].shape[0]


def test_evaluation_reports_video_and_audio_types(setup: dict[str, Any]) -> None:
    from llava_wb.data.config import ImageConfig
    from llava_wb.eval.evaluate import evaluate

    result = evaluate(
        setup["model"],
        setup["tok"],
        [str(setup["shards"]["heldout"])],
        image=ImageConfig(size=32),
        template="vicuna_v1",
        batch_size=16,
        max_new_tokens=3,
        progress=False,
    )
    types = set(result.per_type)
    assert {"pitch", "beeps"} & types and {"motion", "first_colour", "last_colour", "crossing"} & types, types


def test_corrupt_video_and_audio_are_skipped_and_counted(setup: dict[str, Any], tmp_path: Path) -> None:
    """A shard whose mp4 and wav are cut short: both samples are skipped with their reason, the rest stream."""
    src = sorted(setup["shards"]["instruct"].glob("*.tar"))[0]
    out = tmp_path / "bad.tar"
    broken = {}
    with tarfile.open(src) as tin, tarfile.open(out, "w") as tout:
        for member in tin.getmembers():
            data = tin.extractfile(member).read()
            ext = member.name.rsplit(".", 1)[-1]
            if ext in ("mp4", "wav") and ext not in broken:
                data, broken[ext] = data[: len(data) // 3], member.name
            info = tarfile.TarInfo(member.name)
            info.size = len(data)
            tout.addfile(info, io.BytesIO(data))
    assert set(broken) == {"mp4", "wav"}
    ld = loader(setup, out, max_skip_rate=1.0)
    n = sum(b["input_ids"].shape[0] for b in ld)
    skips = ld.skip_state()
    assert skips["skipped"] == {"corrupt_media": 2}, skips
    with tarfile.open(src) as t:
        total = len({m.name.split(".")[0] for m in t.getmembers()})
    assert n == total - 2
    assert "corrupt_media" in ld.skip_summary()
