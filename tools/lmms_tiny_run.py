"""The lmms-eval acceptance check of docs/eval.md on a tiny run instead of the demo's (30+ min) model.

``prepare BASE``: synthetic data with images, video, audio and text (256 instruct, 48 held-out
records), converted to shards, a demo tokenizer, and ``BASE/config.yaml``: the demo's architecture
features at toy size (CLIP-like tower, avgpool reducer 2x2x2, 4-frame video, Whisper-like audio
tower, 2-layer LLaMA), to train with ``python -m llava_wb.train BASE/config.yaml``.
``compare BASE``: llava_wb's evaluator against the samples lmms-eval logged (``--log_samples`` into
``BASE/lmms_out``) for the task in ``BASE/task``: identical predictions per question.
"""

from __future__ import annotations

import argparse
import glob
import json
from pathlib import Path

import yaml

MIX = {"image": 0.4, "video": 0.25, "audio": 0.25, "text": 0.1}
MODEL = {
    "vision": {
        "type": "clip",
        "freeze": False,
        "config": {
            "image_size": 32,
            "patch_size": 8,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
        },
    },
    "projector": {"type": "mlp2x_gelu"},
    "reducer": {"type": "avgpool", "options": {"window": [2, 2, 2]}},
    "video": {"frames": 4},
    "audio": {
        "config": {
            "d_model": 32,
            "encoder_layers": 1,
            "encoder_attention_heads": 2,
            "encoder_ffn_dim": 64,
            "max_source_positions": 100,
            "num_mel_bins": 80,
        },
        "tokens_per_second": 10,
    },
    "llm": {
        "config": {
            "model_type": "llama",
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "max_position_embeddings": 512,
        }
    },
}


def prepare(base: Path, steps: int) -> None:
    from data_tools.convert_to_wds import convert
    from data_tools.make_synthetic import generate
    from llava_wb.tokenizer import build_demo_tokenizer, demo_corpus
    from recipes.demo import stream_records

    data = generate(
        base / "data",
        n_pretrain=0,
        n_instruct=256,
        n_heldout=48,
        mix=MIX,
        progress=False,
        image_size=32,
        video_frames=4,
    )
    for split in ("instruct", "heldout"):
        s = convert(
            [data["files"][split]], [data["media_root"]], base / split, shard_size=32, workers=1, progress=False
        )
        print(f"{split}: {s.converted} samples, {s.rejected} rejected")
    build_demo_tokenizer(demo_corpus(records=stream_records(data["files"].values()))).save_pretrained(
        base / "tokenizer"
    )
    cfg = {
        "tokenizer": str(base / "tokenizer"),
        "model": MODEL,
        "data": {
            "sources": [str(base / "instruct")],
            "template": "vicuna_v1",
            "max_length": 256,
            "batch_size": 8,
            "num_workers": 1,
            "shuffle_buffer": 64,
            "seed": 0,
            "image": {"size": 32},
        },
        "train": {
            "output_dir": str(base / "run"),
            "stage": "finetune",
            "learning_rate": 3e-3,
            "warmup_ratio": 0.1,
            "lr_scheduler_type": "cosine",
            "max_steps": steps,
            "logging_steps": 10,
            "save_steps": 100000,
            "report_to": [],
            "seed": 0,
        },
    }
    (base / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    print(f"wrote {base / 'config.yaml'}")


def compare(base: Path) -> int:
    from llava_wb.eval.evaluate import evaluate, image_config_for
    from llava_wb.model.bundle import load_bundle

    model, tok = load_bundle(base / "run" / "final")
    ours = evaluate(model, tok, [str(base / "heldout")], image=image_config_for(model), progress=False)
    want = {(p["id"], p["turn"]): p["prediction"] for p in ours.predictions}
    docs = [json.loads(line) for line in (base / "task" / "questions.jsonl").read_text().splitlines()]
    (samples,) = glob.glob(str(base / "lmms_out" / "*" / "*_samples_llava_wb_heldout.jsonl"))
    got = {}
    for line in Path(samples).read_text().splitlines():
        s = json.loads(line)
        got[(docs[s["doc_id"]]["id"], docs[s["doc_id"]]["turn"])] = s["filtered_resps"]
    same = sum(got.get(k) == v for k, v in want.items())
    print(ours.to_markdown())
    print(f"questions: evaluator {len(want)}, lmms-eval {len(got)}; identical predictions: {same}")
    return 0 if same == len(want) == len(got) else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=["prepare", "compare"])
    p.add_argument("base", type=Path)
    p.add_argument("--steps", type=int, default=800)
    args = p.parse_args()
    if args.action == "prepare":
        prepare(args.base, args.steps)
        return 0
    return compare(args.base)


if __name__ == "__main__":
    raise SystemExit(main())
