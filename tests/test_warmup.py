"""Stage ``tower_warmup``: per-patch labels from bboxes, the stage end to end, and its hand-off to stage 1."""

from __future__ import annotations

import json

import pytest
import torch
from train_fixtures import make_workspace, read_metrics, tiny_config

from llava_wb.data.config import ImageConfig
from llava_wb.data.errors import SampleError
from llava_wb.train import ConfigError, load_config, train
from llava_wb.train.config import WarmupConfig
from llava_wb.train.warmup import PatchLabels

ATTRS = {"colour": ["red", "green", "blue", "yellow"], "shape": ["circle", "square", "triangle"]}


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return make_workspace(tmp_path_factory.mktemp("warmup"), n=48, shard_size=16)


def labeller(aspect: str = "resize") -> PatchLabels:
    return PatchLabels(ImageConfig(size=32, aspect=aspect), grid=4, patch=8, warmup=WarmupConfig(attributes=ATTRS))


def obj(bbox, colour="blue", shape="square", cell=(1, 0)):
    return {"bbox": bbox, "colour": colour, "shape": shape, "cell": list(cell)}


def test_labels_mark_exactly_the_patches_inside_the_bbox():
    # stored 64x64, tower 32x32 (4x4 patches of 8 px): bbox [32, 16, 48, 32] -> [16, 8, 24, 16] = patch (1, 2)
    lab = labeller().labels([obj([32, 16, 48, 32])], stored=(64, 64))
    expect = torch.zeros(16, dtype=torch.long)
    expect[1 * 4 + 2] = 1
    assert torch.equal(lab["colour"] > 0, expect.bool())
    assert (
        lab["colour"][6] == ATTRS["colour"].index("blue") + 1 and lab["shape"][6] == ATTRS["shape"].index("square") + 1
    )
    assert lab["row"][6] == 2 and lab["col"][6] == 1 and int(lab["count"]) == 0


def test_pad_aspect_shifts_boxes_like_the_pixels():
    # stored 64 wide x 32 high, padded to 64x64 (16 px bands top and bottom), then 32x32: y0 = (0 + 16) / 2
    lab = labeller("pad").labels([obj([0, 0, 16, 16])], stored=(64, 32))
    assert (lab["colour"].view(4, 4) > 0).nonzero().tolist() == [[1, 0]]


def test_bad_boxes_and_unknown_classes_name_the_problem():
    with pytest.raises(SampleError, match="bad_bbox"):
        labeller().labels([obj([10, 10, 80, 20])], stored=(64, 64))
    with pytest.raises(SampleError, match="purple"):
        labeller().labels([obj([0, 0, 16, 16], colour="purple")], stored=(64, 64))


def warmup_config(ws, out, **train):
    cfg = tiny_config(ws, out, stage="tower_warmup", max_steps=6, learning_rate=3e-3, logging_steps=2, **train)
    cfg["train"]["warmup"] = {"attributes": ATTRS, "eval_sources": [ws["shards"]]}
    cfg["data"]["batch_size"] = 8
    return cfg


def test_warmup_trains_saves_a_tower_that_stage_one_loads(ws, tmp_path):
    result = train(load_config(warmup_config(ws, tmp_path / "tower")))
    assert result["stage"] == "tower_warmup" and result["global_step"] == 6
    assert set(result["heldout_accuracy"]) == {"colour", "shape", "row", "col", "count"}
    rows = read_metrics(tmp_path / "tower")
    assert sorted(rows) == [2, 4, 6] and all("acc/shape" in r for r in rows.values())
    assert (tmp_path / "tower" / "resolved_config.yaml").is_file()
    assert result["skips"]["skipped"] == {}  # text-only samples are left out, not skipped

    # stage 1 loads the tower by path, like a pretrained CLIP, and keeps it frozen
    cfg = tiny_config(ws, tmp_path / "stage1", stage="pretrain", max_steps=2)
    cfg["model"]["vision"] = {
        **{k: v for k, v in cfg["model"]["vision"].items() if k != "config"},
        "path": result["final_dir"],
        "freeze": True,
    }
    cfg["model"]["reducer"] = {"type": "avgpool"}
    stage1 = train(load_config(cfg))
    assert stage1["tokens_per_image"] == 4 and stage1["trainable_parameters"]["tower"] == 0
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "tower" / "final" / "model.safetensors"))
    bundle = load_file(str(tmp_path / "stage1" / "final" / "model.safetensors"))
    name = "embeddings.patch_embedding.weight"
    assert torch.equal(saved[name], bundle[f"vision_tower.model.{name}"])


def test_warmup_config_errors_name_the_field(ws, tmp_path):
    cfg = warmup_config(ws, tmp_path / "a")
    cfg["train"]["warmup"]["attributes"] = {}
    with pytest.raises(ConfigError, match="train.warmup.attributes"):
        train(load_config(cfg))
    cfg = warmup_config(ws, tmp_path / "c")
    cfg["train"]["bf16"] = True  # the warm-up loop has no mixed precision: never ignored silently
    with pytest.raises(ConfigError, match=r"train\.bf16: the tower_warmup stage trains in fp32"):
        train(load_config(cfg))
    cfg = warmup_config(ws, tmp_path / "b")
    cfg["train"]["warmup"]["min_overlap"] = 0
    with pytest.raises(ConfigError, match="train.warmup.min_overlap"):
        load_config(cfg)
    cfg = warmup_config(ws, tmp_path / "c", resume=True)
    with pytest.raises(ConfigError, match="does not resume"):
        train(load_config(cfg))


def test_config_base_inherits_and_merges(tmp_path, ws):
    from llava_wb.train.config import read_yaml

    base = tiny_config(ws, tmp_path / "run")
    import yaml

    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    (tmp_path / "child.yaml").write_text("base: base.yaml\ntrain: {max_steps: 3}\nmodel: {reducer: {type: avgpool}}\n")
    cfg = load_config(tmp_path / "child.yaml")
    assert cfg.train.max_steps == 3 and cfg.train.learning_rate == base["train"]["learning_rate"]
    assert cfg.model.reducer.type == "avgpool" and cfg.model.projector.type == "mlp2x_gelu"
    (tmp_path / "loop.yaml").write_text("base: loop2.yaml\n")
    (tmp_path / "loop2.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        read_yaml(tmp_path / "loop.yaml")
    (tmp_path / "orphan.yaml").write_text("base: missing.yaml\n")
    with pytest.raises(ConfigError, match="missing.yaml"):
        read_yaml(tmp_path / "orphan.yaml")


def test_demo_configs_chain_the_stages():
    from train_fixtures import ROOT

    tower, pre, main = (
        load_config(ROOT / "configs" / f) for f in ("demo_tower.yaml", "demo_pretrain.yaml", "demo.yaml")
    )
    assert (tower.train.stage, pre.train.stage, main.train.stage) == ("tower_warmup", "pretrain", "finetune")
    assert pre.model.vision.path == f"{tower.train.output_dir}/final" == main.model.vision.path
    audio = load_config(ROOT / "configs" / "demo_audio.yaml")
    assert audio.train.stage == "audio_warmup" and audio.model.audio.path is None and tower.model.audio is None
    assert pre.model.audio.path == f"{audio.train.output_dir}/final" == main.model.audio.path
    assert pre.model.audio.freeze and main.model.audio.freeze and audio.model.audio.config == pre.model.audio.config
    assert main.train.init_from == pre.train.output_dir
    assert [s.template for s in main.data.sources] == [None, "plain"]
    assert main.model.llm.config == pre.model.llm.config and main.model.reducer.type == "avgpool"


def test_sources_can_carry_their_own_template(tmp_path):
    """Captions (plain) mixed into instructions (vicuna_v1): each sample is formatted by its source's template."""
    from data_tools.convert_to_wds import convert
    from data_tools.make_synthetic import generate
    from llava_wb.data.config import DataConfig
    from llava_wb.data.loader import build_train_loader
    from llava_wb.tokenizer import build_demo_tokenizer, demo_corpus

    data = generate(tmp_path / "data", n_pretrain=24, n_instruct=24, n_heldout=0, progress=False)
    for split in ("pretrain", "instruct"):
        convert([data["files"][split]], [data["media_root"]], tmp_path / split, shard_size=8, workers=1, progress=False)
    records = [r for s in ("pretrain", "instruct") for r in json.loads(open(data["files"][s]).read())]
    tok = build_demo_tokenizer(demo_corpus(records=records))
    cfg = DataConfig.from_dict(
        {
            "sources": [
                {"path": str(tmp_path / "instruct"), "name": "qa"},
                {"path": str(tmp_path / "pretrain"), "name": "cap", "template": "plain"},
            ],
            "template": "vicuna_v1",
            "batch_size": 8,
            "num_workers": 0,
            "epoch_mode": "exact",
            "max_length": 256,
            "image": {"size": 64},
        }
    )
    seen = set()
    for batch in build_train_loader(cfg, tok, media_tokens={"image": 4}):
        for ids, sid in zip(batch["input_ids"], batch["id"]):
            text = tok.decode(ids, skip_special_tokens=True).lower()
            seen.add(sid.split("-")[0])
            assert ("user" in text) == sid.startswith("instruct"), (sid, text[:80])
    assert seen == {"pretrain", "instruct"}
