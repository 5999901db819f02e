"""Run configs: YAML + overrides, env expansion, validation before any work, stages and LR groups.

Everything here is in-process and cheap: no model is built and no training step runs.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from train_fixtures import ROOT, demo_run_layout, make_workspace, tiny_config, write_config

from llava_wb.train import ConfigError, load_config
from llava_wb.train.checks import check_run_config
from llava_wb.train.cli import main as cli_main
from llava_wb.train.stages import param_groups, trainable_parts


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return make_workspace(tmp_path_factory.mktemp("train_cfg"), n=32, shard_size=16)


def test_demo_config_loads_with_overrides():
    cfg = load_config(
        ROOT / "configs" / "demo.yaml",
        [
            "train.max_steps=20",
            "data.batch_size=4",
            "data.sources=[a, b]",
            "model.llm.config.hidden_size=64",
            "train.report_to=none",
            "train.projector_lr=1e-3",
        ],
    )
    assert cfg.train.max_steps == 20 and cfg.data.batch_size == 4
    assert [s.path for s in cfg.data.sources] == ["a", "b"]
    assert cfg.model.llm.config["hidden_size"] == 64
    assert cfg.train.report_to == [] and cfg.train.projector_lr == 1e-3


@pytest.mark.parametrize(
    "override, field",
    [
        ("train.max_stepz=3", "train.max_stepz"),
        ("data.batchsize=3", "data.batchsize"),
        ("model.vision.feture_layer=-2", "model.vision.feture_layer"),
        ("train.lora.rank=4", "train.lora.rank"),
        ("trian.max_steps=3", "trian"),
    ],
)
def test_unknown_override_key_names_the_field(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(ROOT / "configs" / "demo.yaml", [override])


def test_bad_values_name_the_field():
    with pytest.raises(ConfigError, match=r"train\.max_steps"):
        load_config(ROOT / "configs" / "demo.yaml", ["train.max_steps=0"])
    with pytest.raises(ConfigError, match=r"train\.bf16"):
        load_config(ROOT / "configs" / "demo.yaml", ["train.bf16=maybe"])
    with pytest.raises(ConfigError, match=r"train\.report_to"):
        load_config(ROOT / "configs" / "demo.yaml", ["train.report_to=[tensorbord]"])


def test_llava15_recipes_take_paths_from_the_environment(monkeypatch):
    monkeypatch.setenv("CLIP_PATH", "/ckpt/clip-336")
    monkeypatch.setenv("VICUNA_PATH", "/ckpt/vicuna-7b")
    monkeypatch.setenv("PRETRAIN_SHARDS", "/data/lcs558k")
    monkeypatch.setenv("FINETUNE_SHARDS", "/data/mix665k")
    pre = load_config(ROOT / "configs" / "llava15_7b_pretrain.yaml")
    fin = load_config(ROOT / "configs" / "llava15_7b_finetune.yaml")
    assert pre.model.vision.path == "/ckpt/clip-336" and pre.model.llm.path == "/ckpt/vicuna-7b"
    assert (pre.train.stage, pre.train.learning_rate, pre.train.global_batch_size) == ("pretrain", 1e-3, 256)
    assert (fin.train.stage, fin.train.learning_rate, fin.train.global_batch_size) == ("finetune", 2e-5, 128)
    assert pre.train.deepspeed.endswith("zero2.json") and fin.train.deepspeed.endswith("zero3.json")
    for cfg in (pre, fin):
        assert cfg.data.max_length == 2048 and cfg.train.lr_scheduler_type == "cosine"
        assert cfg.train.warmup_ratio == 0.03 and cfg.train.bf16 is True and cfg.train.gradient_checkpointing
        assert cfg.model.vision.feature_layer == -2 and cfg.model.projector.type == "mlp2x_gelu"
    assert fin.train.init_from == "runs/llava15_7b_pretrain"
    monkeypatch.delenv("CLIP_PATH")
    with pytest.raises(ConfigError, match=r"model\.vision\.path.*CLIP_PATH"):
        load_config(ROOT / "configs" / "llava15_7b_pretrain.yaml")


@pytest.mark.parametrize(
    "override, pattern",
    [
        ("model.vision.type=clipp", r"model\.vision\.type.*'clipp'.*known: clip"),
        ("model.projector.type=mlp3x", r"model\.projector\.type.*'mlp3x'.*known"),
        ("model.reducer.type=tome9", r"model\.reducer.*'tome9'"),
        ("data.template=vicuna_v9", r"data\.template.*'vicuna_v9'.*known"),
        ("train.stage=pretrian", r"train\.stage.*'pretrian'.*known: audio_warmup, finetune, pretrain"),
        ("data.max_length=16", r"data\.max_length=16.*tokens_per_image=16"),
        ("data.image.size=64", r"data\.image\.size=64.*32x32"),
        ("train.lr_scheduler_type=cosine_wobble", r"train\.lr_scheduler_type"),
        ("train.lr_scheduler_type=warmup_stable_decay", r"train\.lr_scheduler_kwargs.*num_decay_steps"),
        ("train.lr_scheduler_kwargs={num_cycles: 2, wobble: 1}", r"train\.lr_scheduler_kwargs.*wobble"),
        ("train.deepspeed=missing.json", r"train\.deepspeed"),
        (f"train.deepspeed={ROOT / 'configs/deepspeed/zero2.json'}", r"train\.deepspeed needs a launcher"),
        ("train.init_from=/nonexistent/run", r"train\.init_from"),
    ],
)
def test_bad_configs_fail_naming_the_field(ws, tmp_path, monkeypatch, override, pattern):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    cfg = load_config(tiny_config(ws, tmp_path / "run"), [override])
    with pytest.raises(ConfigError, match=pattern):
        check_run_config(cfg)


@pytest.mark.parametrize(
    "overrides, pattern",
    [
        (["train.decay_ratio=0.2"], r"train\.decay_ratio.*warmup_stable_decay.*'cosine'"),
        (
            ["train.lr_scheduler_type=warmup_stable_decay", "train.decay_ratio=0.2", "train.warmup_ratio=0.9"],
            r"warmup_ratio \+ train\.decay_ratio = 1\.1",
        ),
    ],
)
def test_decay_ratio_needs_its_schedule(ws, tmp_path, overrides, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(tiny_config(ws, tmp_path / "run"), overrides)


def test_cli_rejects_bad_config_before_any_work(ws, tmp_path, capsys):
    config = write_config(tmp_path / "run.yaml", tiny_config(ws, tmp_path / "run"))
    assert cli_main([str(config), "model.vision.type=clipp"]) == 2
    assert "model.vision.type" in capsys.readouterr().err
    assert cli_main([str(config), "data.max_length=10"]) == 2
    err = capsys.readouterr().err
    assert "data.max_length" in err and "tokens_per_image" in err
    assert not (tmp_path / "run").exists()  # nothing was created: the checks ran first
    assert cli_main([str(config), "--check"]) == 0
    assert "tokens_per_image=16" in capsys.readouterr().out


def test_stages_choose_trainable_parts(ws, tmp_path):
    base = tiny_config(ws, tmp_path / "run")
    parts = lambda *o: trainable_parts(load_config(base, list(o)))  # noqa: E731
    no_audio = {"audio_tower": False}
    assert parts("train.stage=pretrain", "model.vision.freeze=true") == {
        "tower": False,
        "projector": True,
        "llm": False,
        **no_audio,
    }
    assert parts("train.stage=finetune", "model.vision.freeze=true") == {
        "tower": False,
        "projector": True,
        "llm": True,
        **no_audio,
    }
    assert parts("train.stage=finetune")["tower"] is True  # model.vision.freeze=false in the tiny config
    assert parts("train.stage=pretrain", "train.trainable.tower=false", "train.trainable.llm=true") == {
        "tower": False,
        "projector": True,
        "llm": True,
        **no_audio,
    }
    audio = ["model.audio={config: {d_model: 32, encoder_layers: 1, max_source_positions: 100}}"]
    assert parts("train.stage=pretrain", *audio)["audio_tower"] is True  # trained from scratch unless frozen
    assert parts("train.stage=pretrain", *audio, "model.audio.freeze=true")["audio_tower"] is False


def test_param_groups_give_projector_and_tower_their_own_lr(ws, tmp_path):
    cfg = load_config(
        tiny_config(ws, tmp_path / "run"), ["train.projector_lr=0.5", "train.tower_lr=0.25", "train.weight_decay=0.1"]
    )
    model = torch.nn.Module()
    model.vision_tower = torch.nn.Linear(2, 2)
    model.projector = torch.nn.Linear(2, 2)
    model.language_model = torch.nn.Linear(2, 2)
    decay = {n for n, _ in model.named_parameters() if n.endswith("weight")}
    groups = {g["name"]: g for g in param_groups(model, cfg.train, decay)}
    assert {n: g["lr"] for n, g in groups.items()} == {
        "llm": cfg.train.learning_rate,
        "llm_no_decay": cfg.train.learning_rate,
        "projector": 0.5,
        "projector_no_decay": 0.5,
        "tower": 0.25,
        "tower_no_decay": 0.25,
    }
    assert groups["llm"]["weight_decay"] == 0.1 and groups["llm_no_decay"]["weight_decay"] == 0.0


def test_resolved_config_round_trips(ws, tmp_path):
    cfg = load_config(tiny_config(ws, tmp_path / "run"), ["train.lora.enabled=true"])
    path = cfg.save(tmp_path / "resolved_config.yaml")
    again = load_config(path)
    assert again.to_dict() == cfg.to_dict()


def test_train_package_imports_without_torch():
    code = (
        "import sys, llava_wb.train, llava_wb.train.config; "
        "heavy = [m for m in ('torch', 'transformers', 'deepspeed') if m in sys.modules]; assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_demo_stage_configs_pass_the_checks(ws, tmp_path, monkeypatch):
    """The four demo stages under $DEMO_RUN: warm-ups on the 8x8 patches and the audio tower's 20 tokens
    per clip, then 2x2 pooling (16 tokens) with both towers loaded from the warm-ups' folders."""
    from transformers import CLIPVisionModel

    run = demo_run_layout(ws, tmp_path / "demo")
    monkeypatch.setenv("DEMO_RUN", str(run))
    tower = load_config(ROOT / "configs" / "demo_tower.yaml")
    assert check_run_config(tower).image_size == 64  # the heads see all 8x8 patches; the reducer is unused
    with pytest.raises(ConfigError, match=r"model\.vision\.path"):
        check_run_config(load_config(ROOT / "configs" / "demo_pretrain.yaml"))
    CLIPVisionModel._from_config(CLIPVisionModel.config_class(**tower.model.vision.config)).save_pretrained(
        run / "tower" / "final"
    )
    with pytest.raises(ConfigError, match=r"model\.audio\.path"):  # stage 0b's tower is not there yet
        check_run_config(load_config(ROOT / "configs" / "demo_pretrain.yaml"))
    audio = load_config(ROOT / "configs" / "demo_audio.yaml")
    assert check_run_config(audio).tokens_per_audio == 20
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    WhisperEncoder(WhisperConfig(**audio.model.audio.config)).save_pretrained(run / "audio" / "final")
    facts = check_run_config(load_config(ROOT / "configs" / "demo_pretrain.yaml"))
    assert facts.tokens_per_image == 16 and facts.image_size == 64 and facts.tokens_per_audio == 20
    with pytest.raises(ConfigError, match=r"train\.init_from"):
        check_run_config(load_config(ROOT / "configs" / "demo.yaml"))
    assert (
        check_run_config(load_config(ROOT / "configs" / "demo.yaml", ["train.init_from=null"])).tokens_per_image == 16
    )


def test_llava15_pretrain_recipe_checks_against_local_checkpoint_configs(ws, tmp_path, monkeypatch):
    """Config-only stand-ins for CLIP ViT-L/14-336 and vicuna-7b: 576 tokens fit in 2048."""
    from transformers import CLIPVisionConfig, LlamaConfig

    CLIPVisionConfig(
        image_size=336,
        patch_size=14,
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        intermediate_size=4096,
    ).save_pretrained(tmp_path / "clip")
    LlamaConfig(hidden_size=4096, num_hidden_layers=32).save_pretrained(tmp_path / "vicuna")
    monkeypatch.setenv("CLIP_PATH", str(tmp_path / "clip"))
    monkeypatch.setenv("VICUNA_PATH", str(tmp_path / "vicuna"))
    monkeypatch.setenv("PRETRAIN_SHARDS", ws["shards"])
    monkeypatch.setenv("LOCAL_RANK", "0")  # as under a launcher (the recipe uses DeepSpeed)
    monkeypatch.chdir(ROOT)  # the recipe names configs/deepspeed/zero2.json relative to the repo root
    cfg = load_config(ROOT / "configs" / "llava15_7b_pretrain.yaml", [f"train.output_dir={tmp_path / 'out'}"])
    assert check_run_config(cfg).tokens_per_image == 576
    with pytest.raises(ConfigError, match=r"data\.max_length=512.*tokens_per_image=576"):
        check_run_config(load_config(ROOT / "configs" / "llava15_7b_pretrain.yaml", ["data.max_length=512"]))
    with pytest.raises(ConfigError, match=r"data\.epoch_mode"):
        check_run_config(load_config(ROOT / "configs" / "llava15_7b_pretrain.yaml", ["data.epoch_mode=exact"]))


def test_tokenizer_without_media_tokens_or_pad_gets_them(ws, tmp_path):
    """A LLaMA-style tokenizer (no <image>, no pad): the placeholders become special tokens and pad = unk."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from llava_wb.data.conversation import special_token_id
    from llava_wb.train.run import load_tokenizer

    backend = Tokenizer(models.WordLevel(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.train_from_iterator(
        ["what colour is it"], trainers.WordLevelTrainer(special_tokens=["<unk>", "<s>", "</s>"])
    )
    PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    ).save_pretrained(tmp_path / "plain")
    cfg = tiny_config(ws, tmp_path / "run")
    cfg["tokenizer"] = str(tmp_path / "plain")
    tok = load_tokenizer(load_config(cfg))
    ids = [special_token_id(tok, t) for t in ("<image>", "<video>", "<audio>")]
    assert len(set(ids)) == 3 and min(ids) >= 7 and tok.pad_token == "<unk>"


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_config_file_loads_and_round_trips(path, monkeypatch):
    """Every YAML in configs/ loads as it is (base:, ${VAR:-default}, 1.0e-3) and its resolved form reads back."""
    for name in ("CLIP_PATH", "VICUNA_PATH", "PRETRAIN_SHARDS", "FINETUNE_SHARDS"):
        monkeypatch.setenv(name, f"/ckpt/{name.lower()}")
    cfg = load_config(path)
    assert cfg.train.learning_rate > 0 and cfg.model.llm.config.get("model_type") or cfg.model.llm.path
    assert type(cfg).from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    "override, pattern",
    [
        (
            "data.sources=[{path: a, weight: 0}]",
            r"data\.sources\[0\]\.weight: Input should be greater than 0 \(got 0\)",
        ),
        ("data.image.aspect=squash", r"data\.image\.aspect: Input should be 'pad' or 'resize' \(got 'squash'\)"),
        ("model.video.frames=0", r"model\.video\.frames"),
        ("model.vision.freeze=maybe", r"model\.vision\.freeze"),
        ("model.audio={config: {}, tokens_per_second: 0}", r"model\.audio\.tokens_per_second"),
        ("model.audio.projector.typo=1", r"unknown field\(s\) model\.audio\.projector\.typo; known: options, type"),
        ("train.learning_rate=abc", r"train\.learning_rate"),
        ("train.warmup_ratio=1.5", r"train\.warmup_ratio"),
        ("data.sources.7.path=x", r"override 'data\.sources\.7\.path'"),
        ("train.grad_accum=2", r"train\.global_batch_size or train\.grad_accum, not both"),
    ],
)
def test_type_and_bound_errors_name_the_field(override, pattern):
    overrides = [override] + (["train.global_batch_size=8"] if "grad_accum" in override else [])
    with pytest.raises(ConfigError, match=pattern):
        load_config(ROOT / "configs" / "demo.yaml", overrides)


def test_yaml_1_1_scientific_notation_and_list_index_overrides(tmp_path):
    """``1e-3`` (no dot) is a string in YAML 1.1; the loader reads it as a number, in files and overrides."""
    (tmp_path / "child.yaml").write_text(f"base: {ROOT / 'configs' / 'demo.yaml'}\ntrain: {{learning_rate: 1e-3}}\n")
    cfg = load_config(tmp_path / "child.yaml", ["model.llm.config.rope_theta=1e4", "data.sources.1.weight=2"])
    assert cfg.train.learning_rate == 1e-3 and cfg.model.llm.config["rope_theta"] == 1e4
    assert [s.weight for s in cfg.data.sources] == [4.0, 2.0]
