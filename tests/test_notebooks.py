"""Every notebook runs headless under papermill with tiny parameters; the demo runs end to end; each
notebook and its jupytext percent script (``notebooks/NN_name.py``) hold the same cells; on a fresh
checkout 01 converts a sample it makes and 04 says what to run first."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jupytext
import nbformat
import pytest
from papermill.exceptions import PapermillExecutionError

from llava_wb.notebook_runner import NOTEBOOKS, run_notebook

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cells(path):
    """(type, source, tags) of every cell, as jupytext reads the file (either format)."""
    return [(c.cell_type, c.source, c.metadata.get("tags", [])) for c in jupytext.read(path).cells]


def test_every_notebook_is_paired_with_a_percent_script():
    notebooks = {p.stem for p in NOTEBOOKS.glob("*.ipynb")}
    scripts = {p.stem for p in NOTEBOOKS.glob("*.py")}
    assert notebooks and notebooks == scripts, (sorted(notebooks ^ scripts), "run `jupytext --sync notebooks/*`")
    config = (NOTEBOOKS / "jupytext.toml").read_text(encoding="utf-8")
    assert 'formats = "ipynb,py:percent"' in config
    for stem in sorted(scripts):
        assert (
            jupytext.read(NOTEBOOKS / f"{stem}.py").metadata["jupytext"]["text_representation"]["format_name"]
            == "percent"
        ), stem


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.name)
def test_notebook_and_script_do_not_drift(path):
    script = path.with_suffix(".py")
    assert _cells(path) == _cells(script), (
        f"{path.name} and {script.name} differ: edit one and run `jupytext --sync notebooks/{path.name}`"
    )


def test_the_drift_test_sees_a_changed_cell(tmp_path):
    src = NOTEBOOKS / "04_evaluate.py"
    changed = tmp_path / "04_evaluate.py"
    changed.write_text(src.read_text(encoding="utf-8").replace("N_EXAMPLES = 12", "N_EXAMPLES = 13"), encoding="utf-8")
    assert _cells(changed) != _cells(NOTEBOOKS / "04_evaluate.ipynb")
    untagged = tmp_path / "untagged.py"
    untagged.write_text(src.read_text(encoding="utf-8").replace('# %% tags=["parameters"]', "# %%"), encoding="utf-8")
    assert _cells(untagged) != _cells(NOTEBOOKS / "04_evaluate.ipynb")


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.name)
def test_committed_notebooks_are_clean_and_parameterized(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "commit notebooks without outputs"
    assert sum("parameters" in c.metadata.get("tags", []) for c in code) == 1
    assert "def train" not in "".join(c.source for c in code), "notebooks import training logic"


def test_convert_notebook_runs_headless(tmp_path):
    from data_tools.make_synthetic import generate

    data = generate(tmp_path / "data", n_pretrain=0, n_instruct=40, n_heldout=0, progress=False)
    out = tmp_path / "shards"
    executed = run_notebook(
        "01_convert_shards.ipynb",
        tmp_path / "01.ipynb",
        {
            "INPUT": [str(data["files"]["instruct"])],
            "MEDIA_ROOTS": [str(data["media_root"])],
            "OUTPUT_DIR": str(out),
            "SHARD_SIZE": 16,
            "WORKERS": 1,
            "N_SHOW": 4,
        },
    )
    metrics = json.loads((out / "convert_metrics.json").read_text())
    assert metrics["converted"] + metrics["rejected"] == 40 and metrics["verified"] is True
    nb = nbformat.read(executed, as_version=4)
    assert any(o.get("output_type") == "display_data" for c in nb.cells for o in c.get("outputs", []))


@pytest.mark.parametrize(
    "image, anchor, seed", [("chelsea", "first", 0), ("synthetic", "typical", 0), ("astronaut", "random", 5)]
)
def test_merge_notebook_runs_headless_and_saves_overlays(tmp_path, image, anchor, seed):
    out = tmp_path / "viz"
    executed = run_notebook(
        "02_token_merging.ipynb",
        tmp_path / "02.ipynb",
        {
            "IMAGE": image,
            "SIZE": 112,
            "PATCH": 14,
            "RATIO": 0.5,
            "WINDOW": [1, 2, 2],
            "FRAMES": 2,
            "OUT_DIR": str(out),
            "ANCHOR": anchor,
            "SEED": seed,
        },
    )
    assert (out / f"merge_{image}_r0.5.png").stat().st_size > 10_000 and (out / "merge_clip.png").exists()
    nb = nbformat.read(executed, as_version=4)
    text = "".join(o.get("text", "") + json.dumps(o.get("data", {})) for c in nb.cells for o in c.get("outputs", []))
    assert "local_merge r=0.75" in text and "Vicuna" not in text  # the budget table rendered
    assert "application/vnd.jupyter.widget-view+json" in text and "image/png" in text  # the explorer and its PNG
    # resampling on a long needle clip: the needle's frame alone, then the clip, one row per question
    assert (out / "resample_image.png").exists() and (out / "resample_clip.png").exists()
    assert "needle: the " in text and " only" in text


def test_merge_notebook_with_a_tower_inside_placement(tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    tower = tmp_path / "tower"
    CLIPVisionModel(
        CLIPVisionConfig(
            image_size=64,
            patch_size=8,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
        )
    ).save_pretrained(tower)
    out = tmp_path / "viz"
    run_notebook(
        "02_token_merging.ipynb",
        tmp_path / "02.ipynb",
        {
            "IMAGE": "synthetic",
            "SIZE": 64,
            "PATCH": 8,
            "RATIO": 0.5,
            "WINDOW": [1, 2, 2],
            "FRAMES": 2,
            "PLACEMENT": "tower",
            "TOWER_DIR": str(tower),
            "OUT_DIR": str(out),
        },
    )
    assert (out / "merge_synthetic_r0.5.png").exists()


def test_demo_quick_end_to_end(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "recipes.demo", "--out", str(tmp_path / "demo"), "--quick", "--workers", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    summary = json.loads((tmp_path / "demo" / "data_summary.json").read_text())
    assert summary["stream"]["samples"] == summary["data"]["heldout"]["records"] == 150
    for split in ("pretrain", "instruct", "heldout"):
        assert (tmp_path / "demo" / f"01_convert_{split}.ipynb").exists()
    metrics = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    assert metrics["train"]["global_step"] == 6 and metrics["eval"]["overall"]["n"] == 40
    assert metrics["audio_warmup"]["global_step"] == 4 and set(metrics["audio_warmup"]["heldout_accuracy"]) == {
        "event",
        "onset",
        "count",
    }
    for name in (
        "03_train_audio.ipynb",
        "audio/final/config.json",
        "03_train.ipynb",
        "04_evaluate.ipynb",
        "train/final/config.json",
        "train/training.png",
        "eval/eval.json",
    ):
        assert (tmp_path / "demo" / name).exists(), name


def test_evaluate_notebook_runs_headless(tmp_path):
    from tiny import tiny_model

    from data_tools.convert_to_wds import convert
    from data_tools.make_synthetic import generate
    from llava_wb.model.bundle import save_bundle
    from llava_wb.tokenizer import build_demo_tokenizer, demo_corpus

    data = generate(tmp_path / "data", n_pretrain=0, n_instruct=0, n_heldout=12, progress=False)
    convert([data["files"]["heldout"]], [data["media_root"]], tmp_path / "shards", shard_size=6, progress=False)
    records = json.loads(open(data["files"]["heldout"]).read())
    tok = build_demo_tokenizer(demo_corpus(records=records))
    model = tiny_model(tok)
    save_bundle(model, tok, tmp_path / "model")
    run_notebook(
        "04_evaluate.ipynb",
        tmp_path / "04.ipynb",
        {
            "MODEL_DIR": str(tmp_path / "model"),
            "SHARDS": [str(tmp_path / "shards")],
            "OUT_DIR": str(tmp_path / "eval"),
            "BATCH_SIZE": 8,
            "MAX_NEW_TOKENS": 2,
        },
    )
    result = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert result["overall"]["n"] == sum(len(r["meta"]["qtypes"]) for r in records)
    assert (tmp_path / "eval" / "eval.md").read_text().startswith("| question type")


def test_train_notebook_runs_headless_in_process(tmp_path):
    from train_fixtures import make_workspace, tiny_config, write_config

    from data_tools.convert_to_wds import convert
    from data_tools.make_synthetic import generate

    ws = make_workspace(tmp_path / "ws", n=48)
    held = generate(tmp_path / "held", n_pretrain=0, n_instruct=0, n_heldout=8, progress=False)
    convert([held["files"]["heldout"]], [held["media_root"]], tmp_path / "held_shards", shard_size=8, progress=False)
    config = write_config(tmp_path / "run.yaml", tiny_config(ws, tmp_path / "run", max_steps=4))
    run_notebook(
        "03_train.ipynb",
        tmp_path / "03.ipynb",
        {
            "CONFIG": str(config),
            "OVERRIDES": [],
            "NPROC": 1,
            "EVAL_SHARDS": [str(tmp_path / "held_shards")],
            "EVAL_BATCH_SIZE": 8,
        },
    )
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["train"]["global_step"] == 4 and metrics["eval"]["overall"]["n"] > 0
    assert (tmp_path / "run" / "training.png").exists() and (tmp_path / "run" / "final" / "config.json").exists()


def _fresh_checkout(tmp_path):
    """A kernel working folder whose ``../runs`` is empty, as in a fresh clone (the defaults name ``../runs/...``)."""
    cwd = tmp_path / "checkout" / "notebooks"
    cwd.mkdir(parents=True)
    return cwd


def test_convert_notebook_defaults_on_a_fresh_checkout_convert_a_sample(tmp_path):
    cwd = _fresh_checkout(tmp_path)
    executed = run_notebook("01_convert_shards.ipynb", tmp_path / "01.ipynb", {"WORKERS": 1}, cwd=cwd)
    shards = tmp_path / "checkout" / "runs" / "sample" / "shards"
    metrics = json.loads((shards / "convert_metrics.json").read_text())
    assert metrics["converted"] + metrics["rejected"] == 200 and metrics["verified"] is True
    assert not (tmp_path / "checkout" / "runs" / "demo").exists()  # the demo's folders are never written
    text = "".join(o.get("text", "") for c in nbformat.read(executed, as_version=4).cells for o in c.get("outputs", []))
    assert "do not exist" in text and "make demo" in text and "synthetic sample of 200 records" in text


def test_convert_notebook_without_sample_says_what_to_run(tmp_path):
    cwd = _fresh_checkout(tmp_path)
    with pytest.raises(PapermillExecutionError, match=r"do not exist: run `make demo`") as err:
        run_notebook("01_convert_shards.ipynb", tmp_path / "01.ipynb", {"SAMPLE_DIR": None}, cwd=cwd)
    assert "../runs/demo/data/instruct.json" in str(err.value)


def test_evaluate_notebook_defaults_on_a_fresh_checkout_say_what_to_run(tmp_path):
    cwd = _fresh_checkout(tmp_path)
    with pytest.raises(
        PapermillExecutionError, match=r"no trained model at \.\./runs/demo/train/final: run `make demo`"
    ):
        run_notebook("04_evaluate.ipynb", tmp_path / "04.ipynb", cwd=cwd)


def test_evaluate_notebook_without_shards_says_what_to_run(tmp_path):
    from tiny import tiny_model

    from llava_wb.model.bundle import save_bundle
    from llava_wb.tokenizer import build_demo_tokenizer, demo_corpus

    tok = build_demo_tokenizer(demo_corpus(records=[]))
    save_bundle(tiny_model(tok), tok, tmp_path / "model")
    with pytest.raises(PapermillExecutionError, match=r"no held-out shards at .*missing.*run `make demo`"):
        run_notebook(
            "04_evaluate.ipynb",
            tmp_path / "04.ipynb",
            {"MODEL_DIR": str(tmp_path / "model"), "SHARDS": [str(tmp_path / "missing")]},
        )
