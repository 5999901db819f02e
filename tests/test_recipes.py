"""``recipes.chain``: every path of the four demo stages comes from the ``ChainPaths`` given, none from
``$DEMO_RUN`` or its ``runs/demo`` default, so one process can train several chains side by side."""

from __future__ import annotations

import json
import os

import pytest

from recipes.chain import STAGES, ChainPaths, load_stage, stage_overrides


def _strings(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, (str, os.PathLike)):
        yield str(value)


@pytest.mark.parametrize("stage", list(STAGES))
def test_every_stage_path_comes_from_the_chain_paths(stage, tmp_path, monkeypatch):
    monkeypatch.setenv("DEMO_RUN", str(tmp_path / "leaked"))  # what another chain of the process set
    paths = ChainPaths(
        data=tmp_path / "data dir",
        tower=tmp_path / "t:0",
        pretrain=tmp_path / "p",
        train=tmp_path / "f",
        audio=tmp_path / "a",
    )
    cfg = load_stage(stage, paths).to_dict()
    text = json.dumps(cfg)
    assert "leaked" not in text and "runs/demo" not in text
    assert cfg["train"]["output_dir"] == str(paths.output(stage)) and cfg["tokenizer"] == str(paths.data / "tokenizer")
    sources = {s["name"]: s["path"] for s in cfg["data"]["sources"]}
    assert set(sources.values()) <= {str(paths.shards(s)) for s in ("instruct", "pretrain")} and sources
    assert sources.get("captions", str(paths.shards("pretrain"))) == str(paths.shards("pretrain"))
    if stage == "tower":
        assert cfg["train"]["warmup"]["eval_sources"] == [str(paths.shards("heldout"))]
    else:
        assert cfg["model"]["vision"]["path"] == str(paths.tower / "final")
    if stage == "audio":
        assert cfg["train"]["audio_warmup"]["eval_sources"] == [str(paths.shards("heldout"))]
        assert cfg["model"]["audio"]["path"] is None and cfg["model"]["audio"]["freeze"] is False
    if stage in ("pretrain", "finetune"):  # the warmed-up audio tower, frozen like the vision tower
        assert cfg["model"]["audio"]["path"] == str(paths.audio / "final") and cfg["model"]["audio"]["freeze"]
    if stage == "finetune":
        assert cfg["train"]["init_from"] == str(paths.pretrain)
        weights = {s["name"]: s.get("weight") for s in cfg["data"]["sources"]}
        assert weights == {"instruct": 4.0, "captions": 1.0}  # the config's weights kept, only paths replaced


def test_demo_layout_and_unknown_stage(tmp_path):
    paths = ChainPaths.under(tmp_path / "demo")
    assert paths.data == (tmp_path / "demo").resolve() and paths.train == paths.data / "train"
    assert paths.audio == paths.data / "audio"
    with pytest.raises(ValueError, match="tower -> audio -> pretrain -> finetune"):
        stage_overrides("eval", paths)


def test_a_chain_without_audio_warmup_trains_a_random_audio_tower(tmp_path):
    """Benchmarks that predate the audio warm-up keep their recipe: no audio folder, the tower trains."""
    paths = ChainPaths(data=tmp_path / "d", tower=tmp_path / "t", pretrain=tmp_path / "p", train=tmp_path / "f")
    for stage in ("pretrain", "finetune"):
        audio = load_stage(stage, paths).model.audio
        assert audio.path is None and audio.freeze is False and audio.config["d_model"] == 128
    with pytest.raises(ValueError, match="no audio stage"):
        paths.output("audio")
