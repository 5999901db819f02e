"""Video benchmark: decoders, visual tokens per clip, and the step time of a video batch.

    python -m benchmarks.bench_video [--quick] [--out DIR] [--parts a,b,c] [--gpu-only]

(a) frames/s of decord (0.6.0) vs decord2 vs PyAV on the same clips, and whether they sample the
    same, correct frames (``benchmarks.video_decoders``).
(b) visual tokens per 8/16/32-frame clip at CLIP ViT-L/14-336 shapes (576 patches per frame) with
    ``identity``, ``avgpool`` 2x2x2 and ``local_merge`` 2x2x2 (r = 7N/8), one separator per time
    slice, and what that costs a Vicuna-7B (``llava_wb.budget``); audio tokens per clip too.
(c) training step time (forward, backward, AdamW) of a batch of 8-frame clips with 576 tokens per
    frame (``identity``) vs 72 (``local_merge`` 2x2x2): a 24 x 24 patch grid as CLIP-L/336 gives,
    a narrow frozen tower and a mid-size LLaMA on the CPU; on a GPU the realistic shape of
    ``bench_train`` (CLIP-L/336 + a 1.1B LLaMA, bf16) when one is present.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import Section, machine_info, results_dir, write_results
from benchmarks.train_shapes import CPU_MID, step_seconds

ROOT = Path(__file__).resolve().parent.parent
CLIP_REDUCERS = {
    "identity": ("identity", {}),
    "avgpool 2x2x2": ("avgpool", {"window": [2, 2, 2]}),
    "local_merge 2x2x2": ("local_merge", {"ratio": 0.875, "window": [2, 2, 2]}),
}
CPU_SHAPE = {"vision": CPU_MID.vision, "llm": CPU_MID.llm}


# ----------------------------------------------------------------------------- (b)
def part_b() -> tuple[list[Section], dict[str, Any]]:
    from llava_wb.budget import CLIP_L14_336, VICUNA_7B, WHISPER_LARGE_ENCODER, estimate

    rows, raw = [], []
    for frames in (8, 16, 32):
        base = None
        for name, (red, opts) in CLIP_REDUCERS.items():
            b = estimate(f"{name}, {frames} frames", CLIP_L14_336, VICUNA_7B, red, opts, frames=frames, separators=True)
            base = base or b
            rows.append(
                [
                    frames,
                    name,
                    b.visual_tokens,
                    round(b.visual_tokens / frames, 1),
                    b.seq_len,
                    round(b.llm_flops_train / 1e12, 1),
                    round(b.llm_flops_train / base.llm_flops_train, 2),
                    round(b.kv_cache_bytes / 2**20),
                    round(b.tower_flops_forward / 1e9),
                ]
            )
            raw.append({"frames": frames, "reducer": name, **b.__dict__})
    video = Section(
        title="(b) Visual tokens per clip (CLIP ViT-L/14-336, Vicuna-7B)",
        explain=(
            "`llava_wb.budget.estimate` with one separator per time slice (`model.video.separators`: 1 per frame "
            "for identity, 1 per 2 frames for 2x2x2 windows) and 128 text tokens; training TFLOPs per sample of "
            "the LLM (3x forward), x = ratio to identity at the same frame count; the tower runs on every frame."
        ),
        headers=[
            "frames",
            "reducer",
            "visual tokens",
            "per frame",
            "seq len",
            "LLM TFLOPs train",
            "x identity",
            "KV cache MiB",
            "tower GFLOPs",
        ],
        rows=rows,
    )
    arows, araw = [], []
    for seconds in (10, 30, 60):
        for tps in (25, 5):
            audio = dict(WHISPER_LARGE_ENCODER, tokens_per_second=tps)
            b = estimate(f"{seconds}s", CLIP_L14_336, VICUNA_7B, images=0, audio_seconds=seconds, audio=audio)
            arows.append(
                [seconds, tps, b.audio_tokens, round(b.llm_flops_train / 1e12, 2), round(b.audio_flops_forward / 1e9)]
            )
            araw.append({"seconds": seconds, "tokens_per_second": tps, **b.__dict__})
    audio = Section(
        title="(b, audio) Audio tokens per clip (Whisper-large encoder, Vicuna-7B)",
        explain=(
            "Audio is cut into 30 s windows (the encoder's input), 50 encoder frames/s pooled to `tokens_per_second`; "
            "128 text tokens."
        ),
        headers=["seconds", "tokens/s", "audio tokens", "LLM TFLOPs train", "encoder GFLOPs"],
        rows=arows,
    )
    return [video, audio], {"video": raw, "audio": araw}


# ----------------------------------------------------------------------------- (c)
def step_times(
    shape: dict[str, Any],
    reducer: tuple[str, dict],
    *,
    frames: int,
    batch: int,
    text: int,
    steps: int,
    warmup: int,
    device: str,
    dtype: Any = None,
) -> dict[str, Any]:
    """Median seconds of a full training step on ``batch`` clips of ``frames`` frames."""
    import torch

    from llava_wb.model import ModelConfig, build_model
    from llava_wb.tokenizer import build_demo_tokenizer, demo_corpus

    tok = build_demo_tokenizer(demo_corpus(["which way does it move"]))
    cfg = ModelConfig.from_dict(
        {
            "vision": {"type": "clip", "config": dict(shape["vision"]), "freeze": True},
            "llm": {"config": dict(shape["llm"])},
            "reducer": {"type": "identity"},
            "video": {"frames": frames, "reducer": {"type": reducer[0], "options": reducer[1]}},
        }
    )
    torch.manual_seed(0)
    model = build_model(cfg, tok).to(device)
    if dtype is not None:
        model = model.to(dtype)
    model.train()
    per_video = model.tokens_per_video
    ids = torch.randint(10, len(tok), (batch, per_video + text), device=device)
    ids[:, :per_video] = model.placeholder_id("video")
    labels = ids.clone()
    labels[:, : per_video + text // 2] = -100
    size = shape["vision"]["image_size"]
    video = torch.randn(batch, frames, 3, size, size, device=device, dtype=dtype or torch.float32)
    batch_in = {
        "input_ids": ids,
        "labels": labels,
        "attention_mask": torch.ones_like(ids),
        "video_values": video,
        "video_counts": torch.ones(batch, dtype=torch.long, device=device),
    }
    times = step_seconds(model, batch_in, steps=steps, warmup=warmup)
    return {
        "tokens_per_video": per_video,
        "tokens_per_frame": round((per_video - model.video_slices) / frames, 1),
        "seq_len": per_video + text,
        "median_s": statistics.median(times),
        "times": times,
    }


def part_c(quick: bool, gpu: bool) -> tuple[Section, dict[str, Any]]:
    import torch

    from benchmarks.train_shapes import CLIP_L14_336, LLAMA_1B, TINY_LLM, TINY_VISION

    runs: list[tuple[str, str, dict[str, Any], Any, int]] = []
    if not gpu:
        shape = CPU_SHAPE if not quick else {"vision": dict(TINY_VISION), "llm": dict(TINY_LLM)}
        runs.append(("cpu", f"CPU, {torch.get_num_threads()} threads, fp32", shape, None, 1))
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        runs.append(
            (
                "cuda",
                f"{name}, bf16, CLIP-L/336 + 1.1B LLaMA",
                {"vision": CLIP_L14_336, "llm": LLAMA_1B},
                torch.bfloat16,
                4,
            )
        )
    rows, raw = [], []
    for device, label, shape, dtype, batch in runs:
        results = {}
        for name in ("identity", "local_merge 2x2x2"):
            results[name] = step_times(
                shape,
                CLIP_REDUCERS[name],
                frames=8,
                batch=batch,
                text=64,
                steps=1 if quick else 3,
                warmup=1,
                device=device,
                dtype=dtype,
            )
        ratio = results["local_merge 2x2x2"]["median_s"] / results["identity"]["median_s"]
        for name, r in results.items():
            rows.append(
                [
                    label,
                    name,
                    batch,
                    r["tokens_per_frame"],
                    r["seq_len"],
                    round(r["median_s"], 3),
                    round(r["median_s"] / results["identity"]["median_s"], 3),
                ]
            )
        raw.append({"device": label, "results": results, "ratio": ratio})
    section = Section(
        title="(c) Training step time of a video batch: 576 vs 72 tokens per frame",
        explain=(
            "8 frames per clip, 64 text tokens, forward + backward + AdamW step, tower frozen; median of the "
            "timed steps after one warm-up step. CPU: a 24 x 24 patch grid (336 px, 14 px patches) through a "
            "narrow 2-layer tower and a 512-wide 4-layer LLaMA, batch 1. GPU (when present): CLIP-L/336 and the "
            "1.1B LLaMA of bench_train, bf16, batch 4."
        ),
        headers=["device", "reducer", "batch", "tokens/frame", "seq len", "step s (median)", "x identity"],
        rows=rows,
        notes=[f"{r['device']}: step time ratio 72/576 tokens per frame = {r['ratio']:.3f}" for r in raw],
    )
    return section, {"runs": raw}


# ----------------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> list[str]:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_video",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="tiny shapes and clips (smoke test; numbers meaningless)")
    p.add_argument("--out", default=None, help="results folder (default benchmarks/results; --quick: runs/bench_quick)")
    p.add_argument("--parts", default="a,b,c")
    p.add_argument(
        "--gpu-only", action="store_true", help="part (c) on the GPU only (device runs); writes video_gpu.md"
    )
    p.add_argument("--no-progress", action="store_true", help="(accepted for run_all)")
    args = p.parse_args(argv)
    args.out = results_dir(args.out, args.quick)
    parts = set(args.parts.split(","))
    sections, raw = [], {"quick": args.quick}
    if args.gpu_only:
        parts = {"c"}
    if "a" in parts:
        from benchmarks.video_decoders import part_decoders

        s, raw["a"] = part_decoders(args.quick)
        sections.append(s)
    if "b" in parts:
        ss, raw["b"] = part_b()
        sections += ss
    if "c" in parts:
        s, raw["c"] = part_c(args.quick, args.gpu_only)
        sections.append(s)
    intro = (
        "Video decoding, token counts per clip and the step time of video batches. GPU rows of (c) need a lent "
        "GPU (`python -m benchmarks.bench_video --gpu-only`)."
    )
    if args.quick:
        intro = "QUICK MODE: tiny shapes and clips, the numbers are meaningless.\n\n" + intro
    name = "video_gpu" if args.gpu_only else "video"
    paths = write_results(
        args.out, name, title="Video benchmark", intro=intro, sections=sections, raw=raw, machine=machine_info()
    )
    print(paths["md"])
    return [paths["md"], paths["json"]]


if __name__ == "__main__":
    main()
