"""Contract tests over every entry of every registry: registering a part is enough to test it.

Each test is parametrized over the names registered at import time (``TOWERS``, ``REDUCERS``,
``PROJECTORS``, ``AUDIO_TOWERS``, ``TEMPLATES``, ``MEDIA_DECODERS``, ``STAGES``, and the synthetic
generator's ``TASKS``), as open_clip tests every model config. A vision tower is built from the
same tiny ViT keyword arguments whatever its type, a reducer from its defaults (plus ``ratio`` when
it takes one), a projector from its widths. What cannot be derived (an audio encoder's config, a
sample of each media kind) comes from the tables below, and a test fails for any entry missing
from them, naming it. The contracts: build tiny, forward shapes, ``output_len`` equal to the real
output, gradients reach every parameter that should train (and none that is declared unused, which
is what DDP needs), save/load round trips, metadata present. ``test_every_tower_trains_under_torchrun``
runs two DDP ranks per tower (the unused-parameter contract under a real launcher).
"""

from __future__ import annotations

import importlib
import inspect
import io
import json
from typing import Any

import numpy as np
import pytest
import torch
from train_fixtures import (
    TINY_MODEL,
    make_workspace,
    read_metrics,
    run,
    tiny_config,
    torchrun_cmd,
    write_config,
)

from llava_wb.constants import IGNORE_INDEX
from llava_wb.data.conversation import (
    TEMPLATES,
    build_prompt,
    get_template,
    tokenize_conversation,
)
from llava_wb.data.decode import MEDIA_DECODERS
from llava_wb.data.decoders import DecodedMedia
from llava_wb.data.errors import SampleError
from llava_wb.model import (
    PROJECTORS,
    REDUCERS,
    TOWERS,
    ModelConfig,
    build_model,
    build_projector,
    build_reducer,
    build_tower,
    load_bundle,
    save_bundle,
    set_trainable,
)
from llava_wb.model.audio import AUDIO_TOWERS, build_audio_tower
from llava_wb.model.towers import tower_name_for
from llava_wb.tokenizer import build_demo_tokenizer, demo_corpus
from llava_wb.train.stages import PART_PREFIXES, STAGES, WARMUP_OBJECTIVES

# The same keyword arguments build every registered vision tower (transformers ViT configs share them).
TINY_VIT = dict(
    image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4
)
TINY_LLM = dict(
    model_type="llama",
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=1,
    num_attention_heads=4,
    num_key_value_heads=2,
)
# Per-entry inputs that cannot be derived: every registered name must be here (checked below).
AUDIO_CONFIGS: dict[str, dict[str, Any]] = {
    "whisper": dict(
        d_model=32,
        encoder_layers=1,
        encoder_attention_heads=2,
        encoder_ffn_dim=64,
        max_source_positions=50,
        num_mel_bins=80,
    ),
}
GRIDS = [(1, 4, 4), (2, 4, 4), (1, 3, 5)]
CONVERSATION = [
    {"from": "human", "value": "<image>\nwhat colour is the circle ?"},
    {"from": "gpt", "value": "the circle is red ."},
    {"from": "human", "value": "and the square ?"},
    {"from": "gpt", "value": "blue ."},
]


def media_samples() -> dict[str, tuple[bytes, Any]]:
    """One valid encoded sample per media kind and what its decoded value looks like."""
    from PIL import Image

    from llava_wb.data.audio import encode_audio
    from llava_wb.data.video import encode_mp4

    buf = io.BytesIO()
    Image.fromarray(np.full((40, 24, 3), 120, np.uint8)).save(buf, format="PNG")
    frames = np.random.default_rng(0).integers(0, 255, (8, 32, 32, 3), dtype=np.uint8)
    wave = np.sin(np.linspace(0, 400 * np.pi, 16000)).astype(np.float32)
    return {
        "image": (buf.getvalue(), (3, 336, 336)),
        "video": (encode_mp4(frames, fps=8), (8, 3, 336, 336)),
        "audio": (encode_audio(wave, 16000), (80, 3000)),
    }


@pytest.fixture(scope="module")
def ws(tmp_path_factory: Any) -> dict[str, str]:
    return make_workspace(tmp_path_factory.mktemp("contracts_ws"), n=16, shard_size=8)


@pytest.fixture(scope="module")
def tok() -> Any:
    return build_demo_tokenizer(
        demo_corpus(["what colour is the circle ? the circle is red . and the square ? blue ."])
    )


def reducer_options(name: str) -> dict[str, Any]:
    """Defaults, plus ``ratio=0.5`` for reducers that take a budget (they need one)."""
    takes_ratio = any(
        "ratio" in inspect.signature(c.__init__).parameters for c in REDUCERS.get(name).__mro__ if "__init__" in vars(c)
    )
    return {"ratio": 0.5} if takes_ratio else {}


def reducer_context(reducer: Any, b: int, d: int) -> dict[str, Any]:
    """The instruction an instruction-aware reducer reads (``needs_instruction``), else nothing."""
    if not reducer.needs_instruction:
        return {}
    reducer.bind(d, d)
    query = torch.randn(b, 6, d)
    mask = torch.ones(b, 6, dtype=torch.bool)
    return {"query": query, "query_mask": mask, "project": torch.nn.Linear(d, d)}


def tiny_model_dict(tower: str = "clip", reducer: str = "identity", **vision: Any) -> dict[str, Any]:
    return {
        "vision": {"type": tower, "config": dict(TINY_VIT), **vision},
        "llm": {"config": dict(TINY_LLM)},
        "projector": {"type": "mlp2x_gelu"},
        "reducer": {"type": reducer, "options": reducer_options(reducer)},
        "video": {"frames": 2},
    }


def image_batch(tok: Any, model: Any, n_images: int = 2) -> dict[str, Any]:
    from llava_wb.data.collate import Collator

    gen = torch.Generator().manual_seed(0)
    samples = []
    for i in range(n_images):
        t = tokenize_conversation(CONVERSATION, tok, "vicuna_v1", max_length=None, media_tokens=model.media_tokens)
        samples.append(
            {
                "input_ids": t.input_ids,
                "labels": t.labels,
                "media": {"image": [torch.randn(3, 32, 32, generator=gen)]},
                "id": f"s{i}",
            }
        )
    return Collator(tok.pad_token_id)(samples)


def test_every_registry_is_covered() -> None:
    """The tables above name exactly the registered entries that need one (a new entry fails here)."""
    assert sorted(AUDIO_CONFIGS) == AUDIO_TOWERS.names()
    assert sorted(media_samples()) == MEDIA_DECODERS.names()
    for registry in (TOWERS, REDUCERS, PROJECTORS, AUDIO_TOWERS, TEMPLATES, MEDIA_DECODERS, STAGES):
        assert len(registry) >= 1, registry  # the built-ins were registered by importing the entry points


# ----------------------------------------------------------------------------------- vision towers
@pytest.mark.parametrize("name", TOWERS.names())
def test_tower_metadata(name: str) -> None:
    cls = TOWERS.get(name)
    assert cls.__doc__ and cls.hf_model_type and tower_name_for(cls.hf_model_type) == name
    assert len(cls.image_mean) == len(cls.image_std) == 3 and all(s > 0 for s in cls.image_std)
    tower = build_tower(name, config=dict(TINY_VIT))
    assert tower.config.model_type == cls.hf_model_type
    assert isinstance(tower.encoder_layers(), torch.nn.ModuleList)
    assert len(tower.encoder_layers()) == tower.config.num_hidden_layers == TINY_VIT["num_hidden_layers"]
    for path in cls.unused_modules:  # every declared unused module or parameter exists
        assert any(n == f"model.{path}" or n.startswith(f"model.{path}.") for n, _ in tower.named_parameters()), path


@pytest.mark.parametrize("select", ["patch", "cls_patch"])
@pytest.mark.parametrize("name", TOWERS.names())
def test_tower_forward_shapes(name: str, select: str) -> None:
    if select == "cls_patch" and not TOWERS.get(name).has_cls:
        with pytest.raises(ValueError, match="no CLS token"):
            build_tower(name, config=dict(TINY_VIT), select=select)
        return
    tower = build_tower(name, config=dict(TINY_VIT), select=select)
    rows, cols = tower.grid
    assert (rows, cols) == (4, 4) and tower.hidden_size == 32 and tower.image_size == 32
    out = tower(torch.randn(3, 3, 32, 32))
    assert out.shape == (3, tower.num_prefix_tokens + rows * cols, 32)
    assert tower.embed(torch.randn(3, 3, 32, 32)).shape == (3, int(tower.has_cls) + rows * cols, 32)
    with pytest.raises(ValueError, match="pixel_values"):
        tower(torch.randn(3, 3, 16, 16))


@pytest.mark.parametrize("feature_layer", [-2, -1, 1])
@pytest.mark.parametrize("name", TOWERS.names())
def test_tower_gradients_reach_exactly_the_used_parameters(name: str, feature_layer: int) -> None:
    """Every parameter outside ``unused_parameter_names`` gets a gradient and every one inside gets
    none (the dropped position embedding excepted: it is used, and frozen): DDP's condition."""
    torch.manual_seed(0)
    tower = build_tower(name, config=dict(TINY_VIT), feature_layer=feature_layer)
    if feature_layer == 1:
        tower.drop_position_embeddings()
        assert not tower.position_embedding().any()
    tower(torch.randn(2, 3, 32, 32)).square().sum().backward()
    unused = set(tower.unused_parameter_names())
    no_grad = {n for n, p in tower.named_parameters() if p.grad is None or not p.grad.any()}
    dropped = (
        {n for n, p in tower.named_parameters() if p is tower.position_embedding()} if feature_layer == 1 else set()
    )
    assert no_grad - dropped == unused - dropped
    assert dropped <= unused
    assert len(unused) < len(list(tower.parameters()))


@pytest.mark.parametrize("feature_layer", [-2, -1, 1])
@pytest.mark.parametrize("name", TOWERS.names())
def test_tower_forward_is_the_transformers_hidden_state_without_the_later_blocks(name: str, feature_layer: int) -> None:
    """``forward`` (``embed`` + ``run_layer``, also what merging inside the tower runs) gives the
    transformers model's own ``hidden_states[feature_layer]``, and never runs a block after it."""
    torch.manual_seed(0)
    tower = build_tower(name, config=dict(TINY_VIT), feature_layer=feature_layer, select="patch").eval()
    x = torch.randn(2, 3, 32, 32)
    assert tower.layer_keys(0, tower.embed(x)).shape == tower.embed(x).shape
    with torch.no_grad():
        reference = tower.model(pixel_values=x, output_hidden_states=True).hidden_states[feature_layer]
    later = list(tower.encoder_layers())[tower.layers_run :]
    assert len(later) == TINY_VIT["num_hidden_layers"] - tower.layers_run
    ran: list[int] = []
    handles = [block.register_forward_hook(lambda *_, i=i: ran.append(i)) for i, block in enumerate(later)]
    try:
        out = tower(x)
    finally:
        for h in handles:
            h.remove()
    assert ran == []
    torch.testing.assert_close(out, reference[:, int(tower.has_cls) :], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("metric", ["keys", "features"])
@pytest.mark.parametrize("name", TOWERS.names())
def test_tower_merges_inside(name: str, metric: str) -> None:
    torch.manual_seed(0)
    tower = build_tower(name, config=dict(TINY_VIT))
    reducer = build_reducer("local_merge", {"ratio": 0.5, "placement": "tower", "layers": 1, "metric": metric})
    prefix, reduced = tower.forward_merged(torch.randn(2, 3, 32, 32), reducer, (1, 4, 4))
    assert prefix.shape == (2, tower.num_prefix_tokens, 32)
    assert reduced.tokens.shape == (2, reducer.output_len((1, 4, 4)), 32)
    reduced.tokens.sum().backward()
    assert all(p.grad is not None for p in tower.encoder_layers()[0].parameters())


@pytest.mark.parametrize("name", TOWERS.names())
def test_tower_save_load_round_trip(name: str, tmp_path: Any) -> None:
    torch.manual_seed(0)
    tower = build_tower(name, config=dict(TINY_VIT)).eval()
    tower.model.save_pretrained(tmp_path)
    loaded = build_tower(name, path=str(tmp_path)).eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x), tower(x))


@pytest.mark.parametrize("name", TOWERS.names())
def test_tower_in_a_model_trains_and_round_trips(name: str, tok: Any, tmp_path: Any) -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig.from_dict(tiny_model_dict(name, feature_layer=-2)), tok)
    assert model.tokens_per_image == 16
    set_trainable(model, tower=True, projector=True, llm=True)
    batch = image_batch(tok, model)
    model.train()
    model(**batch).loss.backward()
    frozen = {f"vision_tower.{n}" for n in model.vision_tower.unused_parameter_names()}
    for n, p in model.named_parameters():
        assert (p.grad is not None) == p.requires_grad, n
        assert not (n in frozen and p.requires_grad), n
    model.eval()
    save_bundle(model, tok, tmp_path)
    loaded, _ = load_bundle(tmp_path)
    assert type(loaded.vision_tower) is TOWERS.get(name)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(**batch).logits, model(**batch).logits)


@pytest.mark.slow
@pytest.mark.parametrize("name", TOWERS.names())
def test_every_tower_trains_under_torchrun(name: str, ws: dict[str, str], tmp_path: Any) -> None:
    """Two DDP ranks (``ddp_find_unused_parameters=False``) train the tower from layer -2: a
    trainable parameter the loss never reaches would stop the run."""
    out = tmp_path / "out"
    cfg = tiny_config(ws, out, max_steps=2, save_steps=100)
    cfg["model"]["vision"] = {
        **TINY_MODEL["vision"],
        "type": name,
        "feature_layer": -2,
        "freeze": False,
        "config": {**TINY_MODEL["vision"]["config"], "num_hidden_layers": 3},
    }
    path = write_config(tmp_path / "ddp.yaml", cfg)
    run(
        torchrun_cmd(["-m", "llava_wb.train", str(path), "-q"]),
        timeout=300,
    )
    assert sorted(read_metrics(out)) == [1, 2]
    result = json.loads((out / "result.json").read_text())
    assert result["world_size"] == 2 and result["replicas_in_sync"] is True


# ----------------------------------------------------------------------------------- reducers
@pytest.mark.parametrize("grid", GRIDS, ids=lambda g: "x".join(map(str, g)))
@pytest.mark.parametrize("name", REDUCERS.names())
def test_reducer_contract(name: str, grid: tuple[int, int, int]) -> None:
    cls = REDUCERS.get(name)
    assert cls.__doc__ and isinstance(cls.preserves_order, bool) and cls.placement in ("after", "tower")
    reducer = build_reducer(name, reducer_options(name))
    b, n, d = 2, grid[0] * grid[1] * grid[2], 16
    x = torch.randn(b, n, d, requires_grad=True)
    out = reducer(x, grid, **reducer_context(reducer, b, d))
    m = reducer.output_len(grid)
    assert out.tokens.shape == (b, m, d) and 1 <= m <= n
    assert out.positions.shape == out.sizes.shape == (b, m) and out.group_ids.shape == (b, n)
    assert out.sizes.sum(1).tolist() == [n] * b  # every patch stands in exactly one token
    assert bool((out.group_ids >= 0).all() and (out.group_ids < m).all())
    assert bool((out.positions >= 0).all() and (out.positions < n).all())
    counts = torch.stack([torch.bincount(g, minlength=m) for g in out.group_ids])
    assert torch.equal(counts, out.sizes)  # group ids and sizes tell the same story
    if reducer.preserves_order:
        assert bool((out.positions[:, 1:] > out.positions[:, :-1]).all())
    out.tokens.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("name", REDUCERS.names())
def test_reducer_in_a_model_agrees_with_output_len_and_round_trips(name: str, tok: Any, tmp_path: Any) -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig.from_dict(tiny_model_dict("clip", name)), tok)
    assert model.tokens_per_image == model.vision_tower.num_prefix_tokens + model.reducer.output_len((1, 4, 4))
    batch = image_batch(tok, model)  # the model checks the reducer's real output against tokens_per_image
    set_trainable(model, tower=False, projector=True, llm=False)
    model.train()
    model(**batch).loss.backward()
    assert all(p.grad is not None for p in model.projector.parameters())
    model.eval()
    save_bundle(model, tok, tmp_path)
    loaded, _ = load_bundle(tmp_path)
    assert type(loaded.reducer) is REDUCERS.get(name)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(**batch).logits, model(**batch).logits)


# ----------------------------------------------------------------------------------- projectors
@pytest.mark.parametrize("name", PROJECTORS.names())
def test_projector_contract(name: str) -> None:
    factory = PROJECTORS.get(name)
    assert factory.__doc__
    torch.manual_seed(0)
    proj = build_projector(name, 8, 16)
    x = torch.randn(2, 5, 8)
    y = proj(x)
    assert y.shape == (2, 5, 16)
    y.square().sum().backward()
    assert all(p.grad is not None for p in proj.parameters())
    again = build_projector(name, 8, 16)
    again.load_state_dict(proj.state_dict())
    torch.testing.assert_close(again(x), y)
    with pytest.raises(ValueError, match=f"bad options for projector '{name}'"):
        build_projector(name, 8, 16, {"no_such_option": 1})


# ----------------------------------------------------------------------------------- audio towers
@pytest.mark.parametrize("name", AUDIO_TOWERS.names())
def test_audio_tower_contract(name: str, tmp_path: Any) -> None:
    assert AUDIO_TOWERS.get(name).__doc__
    torch.manual_seed(0)
    tower = build_audio_tower(name, config=dict(AUDIO_CONFIGS[name]), tokens_per_second=10)
    feats = torch.randn(2, tower.n_mels, tower.input_frames)
    out = tower(feats)
    assert out.shape == (2, tower.tokens_per_clip, tower.hidden_size)
    assert tower.tokens_per_clip == round(tower.seconds * 10)
    out.square().sum().backward()
    fixed = {id(p) for p in tower.fixed_parameters()}
    assert all(p.grad is not None for p in tower.parameters() if id(p) not in fixed)
    with pytest.raises(ValueError, match="audio features must be"):
        tower(feats[:, :, :-1])
    tower.model.save_pretrained(tmp_path)
    loaded = build_audio_tower(name, path=str(tmp_path), tokens_per_second=10)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(feats), tower.eval()(feats))


# ----------------------------------------------------------------------------------- templates
@pytest.mark.parametrize("name", TEMPLATES.names())
def test_template_contract(name: str, tok: Any) -> None:
    assert TEMPLATES.get(name).__doc__
    template = get_template(name, tok)
    out = tokenize_conversation(CONVERSATION[:2], tok, template, max_length=None, media_tokens={"image": 5})
    assert len(out.input_ids) == len(out.labels)
    learned = [(i, lab) for i, (i_, lab) in enumerate(zip(out.input_ids, out.labels)) if lab != IGNORE_INDEX]
    assert learned and all(out.input_ids[i] == lab for i, lab in learned)  # labels copy the ids they train
    image_id = tok.convert_tokens_to_ids("<image>")
    assert out.input_ids.count(image_id) == 5 and image_id not in out.labels
    prompt = build_prompt(CONVERSATION[:1], tok, template, max_length=None, media_tokens={"image": 5})
    assert prompt.input_ids == out.input_ids[: len(prompt.input_ids)]  # the prompt is a prefix of training
    assert set(prompt.labels) == {IGNORE_INDEX}


# ----------------------------------------------------------------------------------- media decoders
@pytest.mark.parametrize("kind", MEDIA_DECODERS.names())
def test_media_decoder_contract(kind: str) -> None:
    from llava_wb.data.config import MediaSettings

    data, shape = media_samples()[kind]
    value = MEDIA_DECODERS.get(kind)(data, MediaSettings())
    info = None
    if isinstance(value, DecodedMedia):
        value, info = value.value, value.info
        assert isinstance(info, dict)
    assert tuple(value.shape) == shape and value.dtype == torch.float32 and bool(torch.isfinite(value).all())
    with pytest.raises(SampleError) as err:
        MEDIA_DECODERS.get(kind)(b"not a media file at all" * 4, MediaSettings())
    assert err.value.reason


# ----------------------------------------------------------------------------------- training stages
@pytest.mark.parametrize("name", STAGES.names())
def test_stage_contract(name: str, tok: Any) -> None:
    stage = STAGES.get(name)
    assert stage.name == name and stage.description and stage.objective in ("lm", *WARMUP_OBJECTIVES)
    assert stage.tower or stage.projector or stage.llm or stage.audio_tower
    if stage.objective != "lm":  # a warm-up names the function that trains it, and trains one tower alone
        module, function = WARMUP_OBJECTIVES[stage.objective].split(":")
        assert callable(getattr(importlib.import_module(module), function))
        assert [stage.tower, stage.audio_tower].count(True) == 1 and not (stage.projector or stage.llm)
    with_audio = {**tiny_model_dict(), "audio": {"type": "whisper", "config": AUDIO_CONFIGS["whisper"]}}
    model = build_model(ModelConfig.from_dict(with_audio), tok)
    set_trainable(model, tower=stage.tower, projector=stage.projector, llm=stage.llm, audio=stage.audio_tower)
    parts = (("tower", stage.tower), ("projector", stage.projector), ("llm", stage.llm))
    for part, wanted in (*parts, ("audio_tower", stage.audio_tower)):
        flags = {p.requires_grad for n, p in model.named_parameters() if n.startswith(PART_PREFIXES[part])}
        assert True in flags if wanted else flags == {False}, (part, flags)


# ----------------------------------------------------------------------------------- synthetic tasks
def synthetic_tasks() -> list[str]:
    from data_tools.make_synthetic import TASKS

    return sorted(TASKS)


@pytest.mark.parametrize("name", synthetic_tasks())
def test_synthetic_task_contract(name: str) -> None:
    from data_tools.make_synthetic import SPLIT_STYLE, TASKS, SynthConfig, make_record

    spec = TASKS[name]
    assert spec.modality == name and spec.styles and set(spec.styles) <= {"caption", "qa"}
    cfg = SynthConfig(seed=0, image_size=64, video_frames=4, mix=((name, 1.0),))
    for split in [s for s, style in SPLIT_STYLE.items() if style in spec.styles]:
        record, media = make_record(cfg, split, 0)
        turns = record["conversations"]
        assert len(turns) >= 2 and turns[0]["from"] == "human" and turns[1]["from"] == "gpt"
        for kind in ("image", "video", "audio"):
            placeholders = sum(t["value"].count(f"<{kind}>") for t in turns)
            assert placeholders == (1 if kind in record else 0), (kind, record)
            if kind in record:
                assert media[record[kind]]  # the referenced file exists and is not empty
        meta = record["meta"]
        if SPLIT_STYLE[split] == "qa" and "qtypes" in meta:
            for qtype, answer in zip(meta["qtypes"], meta["answers"]):
                assert answer in spec.vocab[qtype], (qtype, answer)
