"""``recipes.chain``: every path of the three demo stages comes from the ``ChainPaths`` given, none from
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
        data=tmp_path / "data dir", tower=tmp_path / "t:0", pretrain=tmp_path / "p", train=tmp_path / "f"
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
    if stage == "finetune":
        assert cfg["train"]["init_from"] == str(paths.pretrain)
        weights = {s["name"]: s.get("weight") for s in cfg["data"]["sources"]}
        assert weights == {"instruct": 4.0, "captions": 1.0}  # the config's weights kept, only paths replaced


def test_demo_layout_and_unknown_stage(tmp_path):
    paths = ChainPaths.under(tmp_path / "demo")
    assert paths.data == (tmp_path / "demo").resolve() and paths.train == paths.data / "train"
    with pytest.raises(ValueError, match="tower -> pretrain -> finetune"):
        stage_overrides("eval", paths)
