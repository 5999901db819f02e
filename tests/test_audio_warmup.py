"""Stage ``audio_warmup``: per-token event labels from a clip's meta, the stage end to end on real
audio shards, and its hand-off to stage 1 (the tower loaded by path, frozen)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny import TINY_WHISPER
from train_fixtures import make_workspace, tiny_config

from data_tools.convert_to_wds import convert
from data_tools.make_synthetic import generate
from llava_wb.data.config import MediaSettings
from llava_wb.data.errors import SampleError
from llava_wb.train import ConfigError, load_config, train
from llava_wb.train.audio_warmup import ClipLabels
from llava_wb.train.config import AudioWarmupConfig

W = AudioWarmupConfig(attribute="pitch", classes=["low", "high"], max_events=4)


def labeller(tokens: int = 20, seconds: float = 2.0) -> ClipLabels:
    return ClipLabels(MediaSettings(), tokens=tokens, seconds=seconds, warmup=W)


def test_labels_mark_the_tokens_an_event_covers_and_its_first_token():
    # tokens of 0.1 s; a beep 0.25-0.45 s covers half of token 2, all of 3, half of 4; one 1.0-1.12 s
    # covers all of token 10 and a fifth of 11
    lab = labeller().labels({"pitch": "high", "onsets": [0.25, 1.0], "durations": [0.2, 0.12]})
    assert lab["event"].nonzero().flatten().tolist() == [2, 3, 4, 10]
    assert set(lab["event"][[2, 3, 4, 10]].tolist()) == {W.classes.index("high") + 1}
    assert lab["onset"].nonzero().flatten().tolist() == [2, 10] and int(lab["count"]) == 1


def test_events_after_the_window_are_not_heard():
    lab = labeller(seconds=1.0, tokens=10).labels({"pitch": "low", "onsets": [0.1, 1.5], "durations": [0.2, 0.2]})
    assert int(lab["count"]) == 0 and lab["onset"].sum() == 1 and set(lab["event"].tolist()) == {0, 1}


@pytest.mark.parametrize(
    "meta, match",
    [
        ({"pitch": "high", "onsets": [0.1]}, "missing_field"),
        ({"pitch": "mid", "onsets": [0.1], "durations": [0.2]}, "'mid' is not one of"),
        ({"pitch": "low", "onsets": [0.1, 0.5], "durations": [0.2]}, "same length"),
        ({"pitch": "low", "onsets": [0.1], "durations": [0]}, "durations > 0"),
        ({"pitch": "low", "onsets": [float("nan")], "durations": [0.1]}, "finite"),
        ({"pitch": "low", "onsets": [0.1 * i for i in range(5)], "durations": [0.05] * 5}, "max_events is 4"),
        ({"pitch": "low", "onsets": [3.0], "durations": [0.1]}, "0 events start inside"),
        (None, "missing_field"),
    ],
)
def test_bad_event_labels_name_the_problem(meta, match):
    with pytest.raises(SampleError, match=match):
        labeller().labels(meta)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 15), st.integers(1, 4)), min_size=1, max_size=4),
    st.sampled_from(["low", "high"]),
)
def test_one_onset_token_per_event_and_every_covered_token_labelled(plan, pitch):
    """Events on a 0.025 s grid, each starting one token after the previous one ends: the onsets count
    the events, every token an event covers wholly is labelled and no token it misses is."""
    onsets, durations, t = [], [], 0.0
    for gap, length in plan:
        onsets.append(round(t + gap * 0.025, 6))
        durations.append(length * 0.05)
        t = onsets[-1] + durations[-1] + 0.1
    if t > 2.0:
        return
    lab = labeller().labels({"pitch": pitch, "onsets": onsets, "durations": durations})
    assert int(lab["onset"].sum()) == len(onsets) == int(lab["count"]) + 1
    for k in range(20):
        a, b = 0.1 * k, 0.1 * (k + 1)
        covered = sum(max(0.0, min(b, o + d) - max(a, o)) for o, d in zip(onsets, durations))
        if covered >= 0.1 - 1e-9:
            assert lab["event"][k] == W.classes.index(pitch) + 1
        if covered == 0:
            assert lab["event"][k] == 0


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> dict[str, Any]:
    """The tiny workspace (tokenizer) plus shards that hold audio clips among other samples."""
    base = tmp_path_factory.mktemp("audio_warmup")
    ws = make_workspace(base / "ws", n=16, shard_size=16)
    mix = {"image": 0.3, "audio": 0.6, "text": 0.1}
    data = generate(base / "data", n_pretrain=0, n_instruct=48, n_heldout=0, mix=mix, progress=False, image_size=32)
    convert([data["files"]["instruct"]], [data["media_root"]], base / "av", shard_size=16, workers=1, progress=False)
    return {**ws, "av": str(base / "av")}


def audio_config(ws: dict[str, Any], out: Path, **train: Any) -> dict[str, Any]:
    cfg = tiny_config(ws, out, stage="audio_warmup", max_steps=4, learning_rate=3e-3, logging_steps=2, **train)
    cfg["model"]["audio"] = {"type": "whisper", "config": TINY_WHISPER, "tokens_per_second": 10}
    cfg["data"].update(sources=[ws["av"]], batch_size=8)
    cfg["train"]["audio_warmup"] = {"attribute": "pitch", "classes": ["low", "high"], "eval_sources": [ws["av"]]}
    return cfg


def test_audio_warmup_trains_saves_a_tower_that_stage_one_loads_frozen(ws, tmp_path):
    result = train(load_config(audio_config(ws, tmp_path / "audio")))
    assert result["stage"] == "audio_warmup" and result["global_step"] == 4
    assert set(result["heldout_accuracy"]) == {"event", "onset", "count"}
    assert result["unlabelled_samples"] > 0 and result["skips"]["skipped"] == {}  # images, text: left out
    assert (tmp_path / "audio" / "final" / "config.json").is_file()

    cfg = tiny_config(ws, tmp_path / "stage1", stage="pretrain", max_steps=2)
    cfg["model"]["audio"] = {"type": "whisper", "path": result["final_dir"], "tokens_per_second": 10, "freeze": True}
    cfg["data"]["sources"] = [ws["av"]]
    stage1 = train(load_config(cfg))
    assert stage1["trainable_parameters"]["audio_tower"] == 0
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "audio" / "final" / "model.safetensors"))
    bundle = load_file(str(tmp_path / "stage1" / "final" / "model.safetensors"))
    name = "conv1.weight"
    assert torch.equal(saved[name], bundle[f"audio_tower.model.{name}"])


def test_sources_without_audio_clips_fail_instead_of_looping(ws, tmp_path):
    cfg = audio_config(ws, tmp_path / "none")
    cfg["data"]["sources"] = [ws["shards"]]  # images and text only
    cfg["train"]["audio_warmup"]["eval_sources"] = []
    with pytest.raises(ValueError, match="audio_warmup: a whole pass over data.sources held no sample"):
        train(load_config(cfg))


def test_audio_warmup_config_errors_name_the_field(ws, tmp_path):
    cfg = audio_config(ws, tmp_path / "a")
    cfg["train"]["audio_warmup"]["classes"] = []
    with pytest.raises(ConfigError, match="train.audio_warmup.classes"):
        train(load_config(cfg))
    cfg = audio_config(ws, tmp_path / "b")
    cfg["model"].pop("audio")
    with pytest.raises(ConfigError, match="model.audio"):
        train(load_config(cfg))
    cfg = audio_config(ws, tmp_path / "c")
    cfg["train"]["audio_warmup"]["classes"] = ["low", "low"]
    with pytest.raises(ConfigError, match="distinct"):
        load_config(cfg)
