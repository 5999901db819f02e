"""The main job on the embedded default data: ``python -m recipes.demo --out runs/demo`` (``make demo``).

Steps, each an executed notebook in the run folder: synthetic LLaVA-format data -> 01 converts each
split to shards -> (a streamed, tokenized epoch of the held-out shards as a data check) -> 03
four times, the stages of ``recipes.chain``: ``configs/demo_tower.yaml`` (supervised vision tower
warm-up, ``tower/``), ``demo_audio.yaml`` (supervised audio tower warm-up, ``audio/``),
``demo_pretrain.yaml`` (captions, ``pretrain/``), ``demo.yaml`` (instructions, ``train/``) -> 04
evaluates the final model on the held-out shards. Every path a stage reads or writes is passed to
it as an override (``recipes.chain.stage_overrides``); nothing is set in the environment. Results:
``metrics.json`` (training summary, the warm-ups' accuracy, held-out accuracy
per question type beside the majority baseline), ``train/`` (checkpoints, final model, plots,
TensorBoard), ``eval/``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from recipes.chain import SPLITS, ChainPaths, config_path, stage_overrides, template

DEMO_MIX = {"image": 0.46, "video": 0.33, "audio": 0.15, "text": 0.06}  # modality weights of the synthetic data


def make_data(out: Path, *, quick: bool, seed: int, workers: int = 1) -> dict:
    from data_tools.make_synthetic import generate

    # more instruction records than the generator's default 4000: shape questions generalise with
    # them; over half of the records are videos, audio clips and text-only questions (video motion
    # questions generalised at 75% with 3,000 clips)
    sizes = (
        {"n_pretrain": 300, "n_instruct": 600, "n_heldout": 150} if quick else {"n_instruct": 16000, "n_heldout": 600}
    )
    return generate(out / "data", seed=seed, progress=True, mix=DEMO_MIX, workers=workers, **sizes)


def convert_splits(out: Path, data: dict, *, shard_size: int, workers: int) -> dict[str, Path]:
    from llava_wb.notebook_runner import run_notebook

    shards = {}
    for split in SPLITS:
        dest = out / "shards" / split
        run_notebook(
            "01_convert_shards.ipynb",
            out / f"01_convert_{split}.ipynb",
            {
                "INPUT": [str(Path(data["files"][split]).resolve())],
                "MEDIA_ROOTS": [str(Path(data["media_root"]).resolve())],
                "OUTPUT_DIR": str(dest.resolve()),
                "SHARD_SIZE": shard_size,
                "WORKERS": workers,
                "N_SHOW": 8,
            },
        )
        shards[split] = dest
        print(f"[demo] {split}: shards in {dest}, executed notebook {out / f'01_convert_{split}.ipynb'}")
    return shards


def stream_records(paths):
    """LLaVA records one at a time (never the whole file in memory)."""
    from data_tools.records import iter_records

    for raw in iter_records([str(p) for p in paths]):
        if raw.text is not None:
            yield json.loads(raw.text)


def demo_facts():
    """Placeholder tokens per image/video/audio clip, frames and audio window of the demo model, from
    its configs (the towers' shapes from ``demo_tower.yaml`` and ``demo_audio.yaml``: the warmed-up
    towers that stage 1 loads do not exist yet)."""
    from llava_wb.train import load_config
    from llava_wb.train.checks import predict_visual_tokens

    cfg = load_config(config_path("finetune"))
    cfg.model.vision = load_config(config_path("tower")).model.vision
    cfg.model.audio = load_config(config_path("audio")).model.audio
    facts = predict_visual_tokens(cfg)
    return {
        "media_tokens": facts.media_tokens,
        "image_size": facts.image_size,
        "frames": cfg.model.video.frames,
        "audio_seconds": cfg.model.audio.config["max_source_positions"] / 50.0,
    }


def stream_epoch(out: Path, data: dict, shards: Path, *, workers: int) -> dict:
    from llava_wb.data.config import DataConfig
    from llava_wb.data.loader import build_train_loader
    from llava_wb.tokenizer import build_demo_tokenizer, demo_corpus

    tok = build_demo_tokenizer(demo_corpus(records=stream_records(data["files"].values())))
    tok.save_pretrained(out / "tokenizer")
    facts = demo_facts()
    cfg = DataConfig.from_dict(
        {
            "sources": [str(shards)],
            "batch_size": 16,
            "num_workers": workers,
            "epoch_mode": "exact",
            "template": "vicuna_v1",
            "max_length": 256,
            "image": {"size": facts["image_size"]},
            "video": {"num_frames": facts["frames"]},
            "audio": {"seconds": facts["audio_seconds"]},
        }
    )
    loader = build_train_loader(cfg, tok, media_tokens=facts["media_tokens"])
    t0, n, tokens = time.perf_counter(), 0, 0
    for batch in loader:
        n += batch["input_ids"].shape[0]
        tokens += int(batch["attention_mask"].sum())
    dt = time.perf_counter() - t0
    summary = {
        "samples": n,
        "seconds": round(dt, 2),
        "samples_per_s": round(n / dt, 1),
        "tokens": tokens,
        "skips": loader.skip_state(),
    }
    print(f"[demo] streamed {n} tokenized samples in {dt:.1f}s ({n / dt:.0f}/s), {tokens} tokens")
    print(loader.skip_summary())
    return summary


# (stage, executed notebook name, quick-mode overrides): stage 0 warms up the vision and the audio
# tower, stage 1 aligns them to the LLM on captions, stage 2 tunes on instructions (the main job, evaluated).
STAGES = (
    ("tower", "03_train_tower.ipynb", ["train.max_steps=4", "data.batch_size=16", "train.logging_steps=2"]),
    ("audio", "03_train_audio.ipynb", ["train.max_steps=4", "data.batch_size=16", "train.logging_steps=2"]),
    ("pretrain", "03_train_pretrain.ipynb", ["train.max_steps=3", "data.batch_size=8", "train.logging_steps=1"]),
    (
        "finetune",
        "03_train.ipynb",
        ["train.max_steps=6", "train.save_steps=3", "train.logging_steps=1", "data.batch_size=8"],
    ),
)


def train_and_evaluate(out: Path, shards: dict[str, Path], *, quick: bool, seed: int = 0) -> dict:
    from llava_wb.notebook_runner import run_notebook

    paths = ChainPaths.under(out)
    heldout = [str(shards["heldout"].resolve())]
    for stage, notebook, quick_overrides in STAGES:
        overrides = [*stage_overrides(stage, paths), "train.overwrite=true", *(quick_overrides if quick else [])]
        if seed:  # one seed for everything: the data above, initialisation and the loader's order
            overrides += [f"train.seed={seed}", f"data.seed={seed}"]
        main_job = stage == "finetune"
        run_notebook(
            "03_train.ipynb",
            out / notebook,
            {
                "CONFIG": str(config_path(stage)),
                "OVERRIDES": overrides,
                "NPROC": 1,
                "EVAL_SHARDS": heldout if main_job else [],
                "EVAL_LIMIT": 40 if quick else 300,
            },
        )  # 04 scores all
        print(f"[demo] {stage} ({config_path(stage).name}): executed notebook {out / notebook}")
    run_notebook(
        "04_evaluate.ipynb",
        out / "04_evaluate.ipynb",
        {
            "MODEL_DIR": str(paths.train / "final"),
            "SHARDS": heldout,
            "TEMPLATE": template(),
            "OUT_DIR": str((out / "eval").resolve()),
            "LIMIT": 40 if quick else None,
        },
    )
    with open(paths.train / "metrics.json", encoding="utf-8") as f:
        metrics = json.load(f)
    with open(paths.tower / "result.json", encoding="utf-8") as f:
        metrics["tower_warmup"] = json.load(f)
    with open(paths.output("audio") / "result.json", encoding="utf-8") as f:
        metrics["audio_warmup"] = json.load(f)
    with open(out / "eval" / "eval.json", encoding="utf-8") as f:  # the whole held-out split (04)
        full = json.load(f)
    metrics["eval_during_training"] = metrics.get("eval")  # 03's first questions only
    metrics["eval"] = {"overall": full["overall"], "per_type": full["per_type"]}
    return metrics


def print_accuracy(per_type: dict) -> None:
    print("[demo] held-out exact match per question type (majority baseline beside it):")
    print(f"  {'type':<10} {'n':>5} {'model':>7} {'majority':>9}")
    for t, r in per_type.items():
        print(f"  {t:<10} {r['n']:>5} {100 * r['accuracy']:>6.1f}% {100 * r['majority_accuracy']:>8.1f}%")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/demo", help="run folder (default: runs/demo)")
    p.add_argument("--quick", action="store_true", help="tiny sizes, for tests")
    p.add_argument("--seed", type=int, default=0, help="seeds the data, the model initialisation and the data order")
    p.add_argument("--workers", type=int, default=2, help="data generation, conversion and data-check worker processes")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data = make_data(out, quick=args.quick, seed=args.seed, workers=args.workers)
    shards = convert_splits(out, data, shard_size=100 if args.quick else 500, workers=args.workers)
    # the training shards are checked as training streams them (skips counted and summarised)
    summary = {"data": data["counts"], "stream": stream_epoch(out, data, shards["heldout"], workers=args.workers)}
    with open(out / "data_summary.json", "w") as f:
        json.dump(summary, f, indent=1)
    metrics = train_and_evaluate(out, shards, quick=args.quick, seed=args.seed)
    metrics["data"] = summary
    metrics["seconds"] = round(time.perf_counter() - t0, 1)
    with open(out / "metrics.json", "w") as f:
        json.dump(metrics, f, indent=1, default=str)
    print_accuracy(metrics["eval"]["per_type"])
    print(f"[demo] done in {metrics['seconds']}s; metrics in {out / 'metrics.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
