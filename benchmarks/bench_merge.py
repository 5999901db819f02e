"""Token merging benchmark: merge cost vs the tower, the LLaVA-1.5-7B budget, accuracy per reducer.

    python -m benchmarks.bench_merge [--quick] [--out DIR] [--parts a,b,c,d] [--seeds 0,1,2] [--steps N]
    python -m benchmarks.bench_merge --gpu-only      # on a lent GPU: (a) and (d) there, merge_gpu.md

(a) merge time as a fraction of the vision tower's forward at CLIP ViT-L/14-336 shapes (576 tokens,
    dim 1024, random weights, CPU threads as given), for ``local_merge``, ``tome_sd`` and ``avgpool``;
    plus the tower forward with ``local_merge`` placed inside its last 4 layers.
(b) the token budget (``llava_wb.budget``) for LLaVA-1.5-7B at merge ratios 0, 0.5, 0.75.
(c) held-out accuracy of the demo model (``configs/demo*.yaml``: warmed-up tower, 3 stages) with
    ``identity`` (64 tokens), ``avgpool``, ``tome_sd`` and ``local_merge`` (16 tokens each; the
    merges use 4x4 windows, so one destination per image quadrant; ``local_merge+orig_pos`` also
    gives the LLM the kept tokens' raster indices as position ids, ``local_merge typical`` takes each
    window's medoid as its destination instead of its first patch; the ``2x2`` variants merge every
    source, into the most similar destination of an adjacent window (``local_merge nb1``) or of any
    window (``tome_sd``), one token per window) under identical training budgets,
    per question type, mean +- std over seeds; and a control whose tower has no absolute position
    embeddings and is warmed up without the row/column heads, so its features cannot carry their
    own position and only the token order can. Runs are cached in ``runs/bench_cache/merge`` and a
    rerun continues where it stopped.
(d) training step time (forward, backward, AdamW) with 576 vs 144 visual tokens (``identity`` vs
    ``local_merge`` r = 0.75, and ``avgpool`` 2x2): ``train_shapes.CPU_MID`` on the CPU, and on a GPU
    ``train_shapes.REALISTIC`` (CLIP-L/336 + a 1.1B LLaMA, bf16 autocast) when one is present.

The trainings are cached per run and claimed while they run, so the same command started N times
fills the grid N runs at a time (on a small machine give each ``OMP_NUM_THREADS=1``).
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import RunCache, Section, claim, machine_info, results_dir, run_plan, write_results
from recipes import chain
from recipes.chain import ChainPaths

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "runs" / "bench_cache" / "merge"
QTYPES = ("colour", "shape", "position", "relation", "count")
C_REDUCERS = {  # name -> model.reducer for part (c)
    "identity": {"type": "identity", "options": {}},
    "avgpool": {"type": "avgpool", "options": {"window": [1, 2, 2]}},
    "tome_sd": {"type": "tome_sd", "options": {"tokens": 16, "window": [1, 4, 4]}},
    "local_merge": {"type": "local_merge", "options": {"tokens": 16, "window": [1, 4, 4]}},
    "local_merge+orig_pos": {
        "type": "local_merge",
        "options": {"tokens": 16, "window": [1, 4, 4], "position_ids": "original"},
    },
    # each window's medoid as its destination instead of its first patch (which may sit on an object's edge)
    "local_merge typical": {
        "type": "local_merge",
        "options": {"tokens": 16, "window": [1, 4, 4], "destination": "typical"},
    },
    # 2x2 windows: every source merges (r = 3N/4), into the most similar destination of its own or an
    # adjacent window (local_merge) or of any window (tome_sd); one token per window, in raster order
    "tome_sd 2x2": {"type": "tome_sd", "options": {"tokens": 16, "window": [1, 2, 2]}},
    "local_merge 2x2 nb1": {"type": "local_merge", "options": {"tokens": 16, "window": [1, 2, 2], "neighbours": 1}},
}


# ----------------------------------------------------------------------------- (a)
def part_a(quick: bool, repeats: int, device: str = "cpu") -> tuple[Section, dict[str, Any]]:
    import torch

    from llava_wb.model.merging import local_merge, tome_sd_merge
    from llava_wb.model.reducers import build_reducer
    from llava_wb.model.towers import build_tower

    shape = dict(
        image_size=336,
        patch_size=14,
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
    )
    if quick:
        shape = dict(
            image_size=112,
            patch_size=14,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=3,
            num_attention_heads=4,
        )
    cuda = device.startswith("cuda")
    dtype = torch.bfloat16 if cuda else torch.float32  # a GPU tower runs in bf16, as in training
    torch.manual_seed(0)
    tower = build_tower("clip", config=shape, feature_layer=-2).eval().to(device, dtype)
    grid = (1, *tower.grid)
    pix = torch.randn(1, 3, shape["image_size"], shape["image_size"], device=device, dtype=dtype)
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def timed(fn, reps):
        out = []
        for _ in range(reps):
            sync()
            t = time.perf_counter()
            fn()
            sync()
            out.append(time.perf_counter() - t)
        return statistics.median(out)

    with torch.no_grad():
        tower(pix)  # warm-up
        t_tower = timed(lambda: tower(pix), repeats)
        feats = tower(pix)[:, :]
        n = feats.shape[1]
        r = n * 3 // 4
        merges = {
            "local_merge (2x2 windows, r=0.75N)": lambda: local_merge(feats, feats, grid, (1, 2, 2), r),
            "local_merge (4x4 windows, r=0.75N)": lambda: local_merge(feats, feats, grid, (1, 4, 4), r),
            "tome_sd (2x2 windows, r=0.5N)": lambda: tome_sd_merge(feats, feats, grid, (1, 2, 2), n // 2),
            "avgpool 2x2": lambda: build_reducer("avgpool", {"window": [1, 2, 2]})(feats, grid),
        }
        t_merge = {name: timed(fn, 5 * repeats) for name, fn in merges.items()}
        inside = (
            build_reducer("local_merge", {"ratio": 0.75, "placement": "tower", "layers": 1 if quick else 4})
            .eval()
            .to(device)
        )
        t_inside = timed(lambda: tower.forward_merged(pix, inside, grid), repeats)
    rows = [[name, f"{1e3 * t:.2f}", f"{100 * t / t_tower:.3f}%"] for name, t in t_merge.items()]
    rows.append(["tower forward, 1 image (reference)", f"{1e3 * t_tower:.0f}", "100%"])
    rows.append(
        [
            f"tower forward with local_merge r=0.75 in its last {inside.layers} layers",
            f"{1e3 * t_inside:.0f}",
            f"{100 * t_inside / t_tower:.1f}%",
        ]
    )
    worst = max(t_merge.values()) / t_tower
    where = f"{torch.cuda.get_device_name(0)}, bf16" if cuda else f"CPU, {torch.get_num_threads()} torch threads"
    section = Section(
        title=f"(a) Merge time vs the vision tower forward ({'GPU' if cuda else 'CPU'})",
        explain=f"CLIP ViT-L/14-336 shapes ({n} patch tokens, dim {feats.shape[-1]}), random weights, one image, "
        f"{where}; medians of {repeats} tower runs and {5 * repeats} merge runs"
        f"{' (device synchronised around each)' if cuda else ''}. Target: merge <= 2% of the tower forward.",
        headers=["operation", "ms", "share of tower forward"],
        rows=rows,
        notes=[f"worst merge / tower = {100 * worst:.3f}% (target <= 2%: {'met' if worst <= 0.02 else 'NOT met'})"],
    )
    raw = {
        "device": where,
        "tower_seconds": t_tower,
        "merge_seconds": t_merge,
        "inside_seconds": t_inside,
        "tokens": n,
        "threads": torch.get_num_threads(),
        "worst_fraction": worst,
    }
    return section, raw


# ----------------------------------------------------------------------------- (b)
def part_b() -> tuple[Section, dict[str, Any]]:
    from llava_wb import budget

    rows = budget.budget_table(
        budget.CLIP_L14_336,
        budget.VICUNA_7B,
        {
            "ratio 0 (identity, 576)": ("identity", {}),
            "ratio 0.5 (local_merge, 288)": ("local_merge", {"ratio": 0.5}),
            "ratio 0.75 (local_merge, 144)": ("local_merge", {"ratio": 0.75}),
            "ratio 0.75, inside the tower's last 4 layers": (
                "local_merge",
                {"ratio": 0.75, "placement": "tower", "layers": 4},
            ),
        },
        text_tokens=128,
    )
    section = Section(
        title="(b) Token budget, LLaVA-1.5-7B shapes",
        explain="CLIP ViT-L/14-336 (feature layer -2) + Vicuna-7B, one image and 128 text tokens per sample; "
        "LLM FLOPs per sample (training = 3x forward), KV cache in bf16.",
        headers=list(budget.TABLE_HEADERS),
        rows=budget.table_rows(rows),
    )
    return section, {"rows": budget.as_dicts(rows)}


# ----------------------------------------------------------------------------- (c)
def prepare_data(cache: Path, quick: bool) -> Path:
    """Synthetic demo data, shards and tokenizer (as ``make demo`` makes them), cached."""
    from data_tools.convert_to_wds import convert
    from data_tools.make_synthetic import generate
    from llava_wb.tokenizer import build_demo_tokenizer, demo_corpus

    run = cache / ("data_quick" if quick else "data")
    if (run / "tokenizer" / "tokenizer_config.json").is_file():
        return run
    sizes = dict(n_pretrain=120, n_instruct=240, n_heldout=60) if quick else dict(n_instruct=8000)
    data = generate(run / "data", progress=False, **sizes)
    for split in ("pretrain", "instruct", "heldout"):
        convert(
            [data["files"][split]],
            [data["media_root"]],
            run / "shards" / split,
            shard_size=500,
            workers=2,
            progress=False,
            overwrite=True,
        )
    records = [r for s in ("pretrain", "instruct", "heldout") for r in json.loads(Path(data["files"][s]).read_text())]
    build_demo_tokenizer(demo_corpus(records=records)).save_pretrained(run / "tokenizer")
    return run


# one loader worker, as when the results were first made (the demo configs have 2 since issue 5):
# the worker count sets the order of the samples, so it keeps the cached runs comparable
BENCH_OVERRIDES = ("train.overwrite=true", "train.report_to=none", "train.save_steps=100000", "data.num_workers=1")


# The recipe the accuracy tables were measured with (before the demo packed and sampled 4 frames per
# clip): padded batches of 32 and 8-frame clips, so cached runs and new ones stay comparable.
RECIPE_MEASURED = ("data.packing=null", "data.batch_size=32", "model.video.frames=8")


def train_stage(stage: str, paths: ChainPaths, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """One stage of ``recipes.chain`` in this process, with the benchmarks' settings."""
    pinned = RECIPE_MEASURED if stage != "tower" else ()  # the warm-up keeps its own batch of images
    return chain.train_stage(stage, paths, [*BENCH_OVERRIDES, *pinned, *overrides])


def one_run(data: Path, work: Path, variant: str, reducer: str, seed: int, steps: dict[str, int]) -> dict[str, Any]:
    """Warm-up (cached per variant and seed) -> pretrain -> finetune -> held-out eval."""
    from llava_wb.eval.evaluate import evaluate, image_config_for
    from llava_wb.model.bundle import load_bundle

    vision = [] if variant == "pos" else ["model.vision.position_embeddings=false"]
    run = work / f"{variant}_seed{seed}" / reducer
    paths = ChainPaths(
        data=data, tower=work / f"{variant}_seed{seed}" / "tower", pretrain=run / "pretrain", train=run / "train"
    )
    with claim(paths.tower.with_name("tower.lock")):  # processes sharing the cache train it once
        if not (paths.tower / "result.json").is_file():
            warm = ["train.warmup.weights={row: 0, col: 0, count: 0.5}"] if variant == "nopos" else []
            train_stage(
                "tower",
                paths,
                [f"train.seed={seed}", f"data.seed={seed}", f"train.max_steps={steps['tower']}", *vision, *warm],
            )
    red = C_REDUCERS[reducer]
    # images only: no audio tower, no video separators (the demo configs have both since issue 5)
    common = [
        "model.audio=null",
        "model.video.separators=false",
        f"model.reducer.type={red['type']}",
        f"model.reducer.options={json.dumps(red['options'])}",
        f"train.seed={seed}",
        f"data.seed={seed}",
        *vision,
    ]
    t0 = time.perf_counter()
    train_stage("pretrain", paths, [f"train.max_steps={steps['pretrain']}", *common])
    result = train_stage("finetune", paths, [f"train.max_steps={steps['finetune']}", *common])
    seconds = time.perf_counter() - t0
    model, tok = load_bundle(paths.train / "final")
    ev = evaluate(
        model,
        tok,
        [str(paths.shards("heldout"))],
        image=image_config_for(model),
        template=chain.template(),
        batch_size=64,
        progress=False,
    )
    # training is chaotic in the float order: a rerun at another commit or thread count is another draw
    return {
        "per_type": {t: ev.per_type[t]["accuracy"] for t in ev.per_type},
        "overall": ev.overall["accuracy"],
        "tokens_per_image": result["tokens_per_image"],
        "train_seconds": round(seconds, 1),
        "commit": code_commit(),
        "torch_threads": machine_info()["torch_threads"],
    }


@functools.lru_cache(maxsize=1)
def code_commit() -> str | None:
    """The checkout's commit when this process started (``main`` asks first): the code its runs ran."""
    return machine_info()["git"]


def part_c(
    quick: bool,
    seeds: list[int],
    control_seeds: list[int],
    steps: dict[str, int],
    cache: Path,
    reducers: Sequence[str] = tuple(C_REDUCERS),
    train: bool = True,
) -> tuple[list[Section], dict[str, Any]]:
    with claim(cache / f"data{'_quick' if quick else ''}.lock"):  # processes sharing the cache: one prepares it
        data = prepare_data(cache, quick)
    work = cache / ("runs_quick" if quick else f"runs_{steps['finetune']}")
    done = RunCache(work / "results.json")
    # seed by seed, the control right after the main runs of its seed: an interrupted run has both
    plan = [
        (v, r, s)
        for s in sorted(set(seeds) | set(control_seeds))
        for v, ss in (("pos", seeds), ("nopos", control_seeds))
        if s in ss
        for r in reducers
    ]
    if train:
        run_plan(
            [(f"{v}/{r}/{s}", lambda v=v, r=r, s=s: one_run(data, work, v, r, s, steps)) for v, r, s in plan],
            done,
            work / "claims",
            "bench_merge",
        )
    sections = []
    summary: dict[str, Any] = {}
    for variant, title in (
        ("pos", "(c) Held-out accuracy per reducer (tower with position embeddings)"),
        ("nopos", "(c, control) Tower without absolute position embeddings"),
    ):
        rows, stats = [], {}
        for reducer in C_REDUCERS:
            runs = [v for k, v in done.items() if k.startswith(f"{variant}/{reducer}/")]
            if not runs:
                continue
            cells, stats[reducer] = [], {}
            for t in (*QTYPES, "overall"):
                vals = [100 * (r["overall"] if t == "overall" else r["per_type"].get(t, float("nan"))) for r in runs]
                mean, std = statistics.mean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0
                stats[reducer][t] = {"mean": mean, "std": std, "values": vals}
                cells.append(f"{mean:.1f} ± {std:.1f}" if len(vals) > 1 else f"{mean:.1f}")
            rows.append([reducer, runs[0]["tokens_per_image"], len(runs), *cells])
        if not rows:
            continue
        notes = verdicts(stats)
        made = collections.Counter(
            v.get("commit", "unrecorded") + (f", {v['torch_threads']} thread(s)" if "torch_threads" in v else "")
            for k, v in done.items()
            if k.startswith(f"{variant}/")
        )
        sections.append(
            Section(
                title=title,
                explain=(
                    f"Demo model (tower warm-up {steps['tower']} steps, pretrain {steps['pretrain']}, finetune {steps['finetune']}; "
                    "same data, seeds and steps for every reducer), exact match on the held-out split in %, mean ± std over seeds "
                    "(one seed: the single value). Runs by the commit and torch threads they trained with: "
                    + ", ".join(f"{k}: {n}" for k, n in sorted(made.items()))
                    + "."
                ),
                headers=["reducer", "tokens/image", "seeds", *QTYPES, "overall"],
                rows=rows,
                notes=notes,
            )
        )
        summary[variant] = stats
    return sections, {"runs": done, "summary": summary, "steps": steps}


def verdicts(stats: dict[str, Any]) -> list[str]:
    """The acceptance comparisons, stated with the measured numbers."""
    notes = []
    for local in [r for r in stats if r.startswith("local_merge")]:
        if "identity" in stats:
            keep = stats[local]["overall"]["mean"] / max(stats["identity"]["overall"]["mean"], 1e-9)
            notes.append(f"{local} keeps {100 * keep:.1f}% of identity's overall accuracy (target >= 97%)")
        rival = "tome_sd 2x2" if "2x2" in local else "tome_sd"  # the same windows and budget
        if rival in stats:
            for t in ("position", "relation"):
                lm, ts = stats[local][t], stats[rival][t]
                gap, spread = lm["mean"] - ts["mean"], max(lm["std"], ts["std"])
                notes.append(
                    f"{t}: {local} - {rival} = {gap:+.1f} points"
                    + (f"; larger std {spread:.1f} ({gap / spread:.1f} std)" if spread > 0 else " (one seed: no std)")
                )
    return notes


# ----------------------------------------------------------------------------- (d)
D_REDUCERS = {  # name -> (reducer, options, visual tokens per 24 x 24 grid)
    "identity": ("identity", {}, 576),
    "local_merge r=0.75": ("local_merge", {"ratio": 0.75}, 144),
    "avgpool 2x2": ("avgpool", {"window": [1, 2, 2]}, 144),
}


def part_d(quick: bool, gpu_only: bool) -> tuple[Section, dict[str, Any]]:
    """Training step time with 576 vs 144 visual tokens: CPU_MID on the CPU, REALISTIC on a GPU."""
    import dataclasses

    import torch

    from benchmarks.train_shapes import (
        CPU_MID,
        REALISTIC,
        TINY,
        make_batch,
        step_seconds,
    )
    from llava_wb.model import ModelConfig, build_model
    from llava_wb.tokenizer import build_demo_tokenizer, demo_corpus

    runs = []  # (device, label, shape)
    if not gpu_only:
        runs.append(("cpu", f"CPU, {torch.get_num_threads()} threads, fp32", TINY if quick else CPU_MID))
    if torch.cuda.is_available():
        runs.append(("cuda", f"{torch.cuda.get_device_name(0)}, bf16 autocast", TINY if quick else REALISTIC))
    tok = build_demo_tokenizer(demo_corpus(["a picture of a cat"]))
    rows, raw = [], []
    for device, label, shape in runs:
        results = {}
        for name, (red, opts, tokens) in D_REDUCERS.items():
            torch.manual_seed(0)
            spec = {**shape.model_dict(), "reducer": {"type": red, "options": opts}}
            with torch.device(device):
                model = build_model(ModelConfig.from_dict(spec), tok).train()
            if not quick:  # the counts this part is about, derived by the model from the reducer
                assert model.tokens_per_image == tokens, (name, model.tokens_per_image, tokens)
            batch = make_batch(model, shape, len(tok), device)
            times = step_seconds(model, batch, steps=shape.steps, warmup=shape.warmup, amp=device == "cuda")
            results[name] = {
                "visual_tokens": model.tokens_per_image,
                "seq_len": int(batch["input_ids"].shape[1]),
                "median_s": statistics.median(times),
                "times": times,
            }
            del model, batch
            if device == "cuda":
                torch.cuda.empty_cache()
        base = results["identity"]["median_s"]
        for name, r in results.items():
            rows.append(
                [
                    label,
                    name,
                    r["visual_tokens"],
                    f"{shape.batch_size} x {r['seq_len']}",
                    round(r["median_s"], 3),
                    round(r["median_s"] / base, 3),
                ]
            )
        raw.append(
            {
                "device": label,
                "shape": dataclasses.asdict(shape),
                "results": results,
                "ratio": results["local_merge r=0.75"]["median_s"] / base,
            }
        )
    notes = [
        f"{r['device']}: step time ratio 144/576 visual tokens (local_merge) = {r['ratio']:.3f}"
        + ("" if r["device"].startswith("CPU") else " (target <= 0.45 on an H100)")
        for r in raw
    ]
    if not torch.cuda.is_available():
        notes.append(
            "No GPU on this machine: the H100 row (target: ratio <= 0.45) needs "
            "`python -m benchmarks.bench_merge --gpu-only` on a lent GPU."
        )
    if quick:
        notes.append("QUICK: tiny shapes, numbers meaningless.")
    section = Section(
        title="(d) Training step time with 576 vs 144 visual tokens",
        explain=(
            f"One image and {CPU_MID.text_tokens} text tokens per sample (labels on the last "
            f"{CPU_MID.answer_tokens}), forward + backward + AdamW, tower frozen, projector + LLM train; median of "
            "the timed steps after warm-up, device synchronised around each step. CPU: "
            f"{CPU_MID.name}, batch {CPU_MID.batch_size}. GPU (when present): {REALISTIC.name} (bench_train's "
            f"realistic shape), batch {REALISTIC.batch_size}, bf16 autocast over fp32 weights, SDPA."
        ),
        headers=["device", "reducer", "visual tokens", "batch x seq", "step s (median)", "x identity"],
        rows=rows,
        notes=notes,
    )
    return section, {"runs": raw}


# ----------------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> list[str]:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_merge",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="tiny shapes and runs (smoke test; numbers meaningless)")
    p.add_argument("--out", default=None, help="results folder (default benchmarks/results; --quick: runs/bench_quick)")
    p.add_argument("--cache", default=str(CACHE))
    p.add_argument("--parts", default="a,b,c,d")
    p.add_argument(
        "--gpu-only",
        action="store_true",
        help="(a) and (d) on the GPU only (a lent device machine); writes merge_gpu.md",
    )
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--control-seeds", default="0", help="seeds of the no-position-embedding control")
    p.add_argument(
        "--steps",
        type=int,
        default=1000,
        help="finetune steps per run (pretrain 200, warm-up 400); about 5 min per run on 2 CPU cores",
    )
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--reducers", default=",".join(C_REDUCERS), help="part (c) reducers to run (cached runs are reported)"
    )
    p.add_argument("--report-only", action="store_true", help="part (c): report the cached runs, train nothing")
    p.add_argument("--no-progress", action="store_true", help="(accepted for run_all; training logs stay)")
    args = p.parse_args(argv)
    args.out = results_dir(args.out, args.quick)
    code_commit()  # before any training: a commit made meanwhile is not the code these runs ran
    parts = set(args.parts.split(","))
    seeds = [int(s) for s in args.seeds.split(",") if s != ""]
    control = [int(s) for s in args.control_seeds.split(",") if s != ""]
    steps = {"tower": 400, "pretrain": 200, "finetune": args.steps}
    if args.quick:
        seeds, control, steps = seeds[:2], control[:1], {"tower": 3, "pretrain": 2, "finetune": 3}
    if args.gpu_only:
        import torch

        if not torch.cuda.is_available():
            p.error("--gpu-only needs a CUDA device; none is visible")
        parts = {"a", "d"}
    sections, raw = [], {"quick": args.quick}
    if "a" in parts:
        s, raw["a"] = part_a(args.quick, 1 if args.quick else args.repeats, "cuda" if args.gpu_only else "cpu")
        sections.append(s)
    if "b" in parts:
        s, raw["b"] = part_b()
        sections.append(s)
    if "c" in parts:
        unknown = set(args.reducers.split(",")) - set(C_REDUCERS)
        if unknown:
            p.error(f"unknown --reducers {sorted(unknown)}; known: {', '.join(C_REDUCERS)}")
        cs, raw["c"] = part_c(
            args.quick, seeds, control, steps, Path(args.cache), args.reducers.split(","), train=not args.report_only
        )
        sections += cs
    if "d" in parts:
        s, raw["d"] = part_d(args.quick, args.gpu_only)
        sections.append(s)
    intro = "Order-preserving local merging against ToMe-SD, average pooling and no reduction. " + (
        "GPU rows of (a) and (d) only; the CPU parts are in merge.md."
        if args.gpu_only
        else "GPU rows ((a) on a GPU and (d), the H100 step time at 576 vs 144 visual tokens) need a lent GPU "
        "(`python -m benchmarks.bench_merge --gpu-only` writes merge_gpu.md); none was lent when this file "
        "was written."
    )
    if "c" in parts:
        intro += (
            f" Part (c) here: seeds {seeds} (control: {control}), finetune {steps['finetune']} steps per run; "
            "the acceptance plan is 3 seeds (`--seeds 0,1,2`), cached runs are reused."
        )
    if args.quick:
        intro = "QUICK MODE: tiny shapes and runs, the numbers are meaningless.\n\n" + intro
    paths = write_results(
        args.out,
        "merge_gpu" if args.gpu_only else "merge",
        title="Token merging benchmark",
        intro=intro,
        sections=sections,
        raw=raw,
        machine=machine_info(),
    )
    print(paths["md"])
    return [paths["md"], paths["json"]]


if __name__ == "__main__":
    main()
