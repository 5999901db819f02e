"""``LlavaWBConfig`` carries the run's ``ModelConfig`` as one field; a config.json written before
that (flat fields such as ``reducer_type``) still loads into it."""

from __future__ import annotations

from llava_wb.model.llava import LlavaWBConfig


def test_flat_fields_of_an_older_bundle_fill_the_nested_model_config() -> None:
    old = {
        "model_type": "llava_wb",
        "vision_tower_type": "siglip",
        "vision_feature_layer": -1,
        "vision_feature_select": "patch",
        "reducer_type": "avgpool",
        "reducer_options": {"window": [2, 2, 1]},
        "projector_type": "linear",
        "projector_options": {},
        "video_frames": 4,
        "video_separators": False,
        "video_reducer_type": None,
        "video_reducer_options": None,
        "audio_tokens_per_second": 10.0,
        "image_token_id": 5,
    }
    config = LlavaWBConfig.from_dict(old)
    parts = config.parts
    assert (parts.vision.type, parts.vision.feature_layer, parts.reducer.type, parts.projector.type) == (
        "siglip",
        -1,
        "avgpool",
        "linear",
    )
    assert parts.reducer.options == {"window": [2, 2, 1]} and parts.video.frames == 4 and not parts.video.separators
    assert parts.video.reducer is None and config.image_token_id == 5
    saved = config.to_dict()
    assert saved["model_config"]["reducer"] == {"type": "avgpool", "options": {"window": [2, 2, 1]}}
    assert not {"reducer_type", "vision_tower_type", "video_frames"} & set(saved)  # one field, no flat copy
    assert LlavaWBConfig.from_dict(saved).parts == parts


def test_defaults_without_a_model_config() -> None:
    config = LlavaWBConfig()
    assert (config.reducer_type, config.video_frames, config.video_reducer_type) == ("identity", 8, None)
    assert config.model_config is None
