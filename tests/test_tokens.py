"""``llava_wb.model.tokens``: the config-only token counts equal what the built model encodes, for
every registered reducer (image and video) and audio tower; the ZeRO-3 check reads the classes."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from tiny import TINY_LLAMA, TINY_VISION

from llava_wb.model import ModelConfig, build_model
from llava_wb.model.audio import AUDIO_TOWERS
from llava_wb.model.build import media_token_counts
from llava_wb.model.reducers import REDUCERS
from llava_wb.model.tokens import TokenCountError, TokenCounts

# Options per registered reducer; a new registry entry fails test_every_reducer_is_covered until it is added.
REDUCER_CASES: dict[str, list[dict[str, Any]]] = {
    "identity": [{}],
    "avgpool": [{}, {"window": [2, 2, 2]}],
    "local_merge": [{"ratio": 0.5}, {"ratio": 0.75, "window": [2, 2, 2]}, {"ratio": 0.75, "placement": "tower"}],
    "tome_sd": [{"ratio": 0.5}, {"ratio": 0.75, "window": [2, 2, 2]}],
    "instruct_resample": [{"tokens": 5}, {"ratio": 0.5, "mode": "learned", "dim": 8}],
}
AUDIO_CASES: dict[str, list[dict[str, Any]]] = {
    "whisper": [
        {
            "config": {
                "d_model": 32,
                "encoder_layers": 1,
                "encoder_attention_heads": 2,
                "encoder_ffn_dim": 64,
                "max_source_positions": 50,
                "num_mel_bins": 80,
            },
            "tokens_per_second": tps,
        }
        for tps in (50, 10, 5)
    ],
}
FRAMES = 4


@pytest.fixture(scope="module")
def tok() -> Any:
    from llava_wb.tokenizer import build_demo_tokenizer, demo_corpus

    return build_demo_tokenizer(demo_corpus(["what colour is it ?"]))


def model_config(
    reducer: dict[str, Any], video: dict[str, Any] | None = None, audio: dict[str, Any] | None = None, **vision: Any
) -> ModelConfig:
    return ModelConfig.from_dict(
        {
            "vision": {"type": "clip", "config": dict(TINY_VISION), **vision},
            "llm": {"config": dict(TINY_LLAMA)},
            "reducer": reducer,
            "video": video or {"frames": FRAMES},
            "audio": audio,
        }
    )


def encoded(model: Any, with_audio: bool) -> TokenCounts:
    """Token counts read off the shapes the built model encodes."""
    size = model.vision_tower.image_size
    with torch.no_grad():
        image = model.encode_images(torch.randn(2, 3, size, size)).embeds.shape[1]
        video = model.encode_videos(torch.randn(2, FRAMES, 3, size, size)).shape[1]
        audio = None
        if with_audio:
            tower = model.audio_tower
            audio = model.encode_audios(torch.randn(2, tower.n_mels, tower.input_frames)).shape[1]
    return TokenCounts(image=image, video=video, audio=audio, image_size=size)


def test_every_reducer_and_audio_tower_is_covered() -> None:
    assert set(REDUCER_CASES) == set(REDUCERS.names())
    assert set(AUDIO_CASES) == set(AUDIO_TOWERS.names())


@pytest.mark.parametrize("name,options", [(n, o) for n, opts in REDUCER_CASES.items() for o in opts])
@pytest.mark.parametrize("select", ["patch", "cls_patch"])
def test_counts_equal_the_models_encoded_shapes(tok: Any, name: str, options: dict[str, Any], select: str) -> None:
    cfg = model_config({"type": name, "options": options}, select=select)
    counts = media_token_counts(cfg)
    torch.manual_seed(0)
    model = build_model(cfg, tok).eval()
    assert counts == encoded(model, with_audio=False)
    assert counts.as_dict() == model.media_tokens


@pytest.mark.parametrize(
    "name,options",
    [(n, o) for n, opts in REDUCER_CASES.items() for o in opts if o.get("placement", "after") == "after"],
)
@pytest.mark.parametrize("separators", [True, False])
def test_video_reducer_counts_equal_the_models_encoded_shapes(
    tok: Any, name: str, options: dict[str, Any], separators: bool
) -> None:
    cfg = model_config(
        {"type": "identity"},
        video={"frames": FRAMES, "separators": separators, "reducer": {"type": name, "options": options}},
    )
    counts = media_token_counts(cfg)
    model = build_model(cfg, tok).eval()
    assert counts == encoded(model, with_audio=False)


@pytest.mark.parametrize("name,audio", [(n, a) for n, cases in AUDIO_CASES.items() for a in cases])
def test_audio_counts_equal_the_models_encoded_shapes(tok: Any, name: str, audio: dict[str, Any]) -> None:
    cfg = model_config({"type": "avgpool"}, audio={"type": name, **audio})
    counts = media_token_counts(cfg)
    model = build_model(cfg, tok).eval()
    assert counts.audio == 50 // (50 // audio["tokens_per_second"])  # 1 s window
    assert counts == encoded(model, with_audio=True)


def test_counts_read_local_checkpoint_configs_without_weights(tmp_path: Any) -> None:
    from transformers import CLIPVisionConfig, WhisperConfig

    CLIPVisionConfig(**{**TINY_VISION, "image_size": 48}).save_pretrained(tmp_path / "clip")
    WhisperConfig(max_source_positions=100, d_model=32, encoder_layers=1).save_pretrained(tmp_path / "whisper")
    cfg = model_config(
        {"type": "identity"},
        audio={"path": str(tmp_path / "whisper"), "tokens_per_second": 25},
        path=str(tmp_path / "clip"),
        config={},
    )
    assert media_token_counts(cfg) == TokenCounts(image=36, video=FRAMES * 36 + FRAMES, audio=50, image_size=48)


def test_counts_name_the_field() -> None:
    with pytest.raises(TokenCountError, match=r"model\.audio\.tokens_per_second.*must divide"):
        media_token_counts(
            model_config({"type": "identity"}, audio={**AUDIO_CASES["whisper"][0], "tokens_per_second": 3})
        )
    with pytest.raises(TokenCountError, match=r"model\.vision: image_size 30 is not a multiple of patch_size 8"):
        media_token_counts(model_config({"type": "identity"}, config={**TINY_VISION, "image_size": 30}))
    with pytest.raises(TokenCountError, match=r"model\.vision\.path"):
        media_token_counts(model_config({"type": "identity"}, path="/nonexistent/clip", config={}))


@pytest.mark.parametrize(
    "override, varying",
    [
        ("model.reducer.type=instruct_resample", "model.reducer (InstructResampler)"),
        ("model.video.reducer={type: instruct_resample}", "model.video.reducer (InstructResampler)"),
        ("model.audio={config: {max_source_positions: 100}}", "model.audio (WhisperAudioTower)"),
    ],
)
def test_zero3_refuses_parts_whose_calls_vary_per_rank(tmp_path: Any, override: str, varying: str) -> None:
    from train_fixtures import make_workspace, tiny_config

    from llava_wb.train import ConfigError, load_config
    from llava_wb.train.checks import _check_zero3

    zero3 = tmp_path / "zero3.json"
    zero3.write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    ws = make_workspace(tmp_path / "ws", n=4, shard_size=4)
    cfg = load_config(tiny_config(ws, tmp_path / "run"), [f"train.deepspeed={zero3}", override])
    with pytest.raises(ConfigError, match=rf"ZeRO-3.*{varying.replace('(', '[(]').replace(')', '[)]')}"):
        _check_zero3(cfg)
    _check_zero3(load_config(tiny_config(ws, tmp_path / "run"), [f"train.deepspeed={zero3}"]))  # identity: fine
