"""Instruction-aware resampling benchmark: resampler cost vs the tower, needle recall and needle accuracy.

    python -m benchmarks.bench_resample [--quick] [--out DIR] [--parts a,b,c,d] [--seeds 0,1,2] [--steps N]
                                        [--cache DIR] [--train-grid] [--budgets 1/4,1/8,1/16]

(a) ``instruct_resample`` time as a fraction of the vision tower forward at CLIP ViT-L/14-336 shapes
    (576 patch tokens of dim 1024, random weights, CPU threads as given), for budgets 1/4, 1/8, 1/16 of
    the visual tokens, one image and an 8-frame clip; the instruction is 32 tokens of LLaVA-1.5-7B's
    width (4096), and the resampler's cost includes the projector call it makes (``mlp2x_gelu``
    1024 -> 4096 on every token) to score relevance; both are shown apart.
(b) needle-token recall at budgets 1/4, 1/8, 1/16 of the demo tower's 8x8 = 64 patches, on the needle
    records of the held-out split (``data_tools.synth_needle``): the needle's patches are those that
    its box covers by >= 50% (mapped to patches exactly as the tower warm-up does,
    ``llava_wb.train.warmup.PatchLabels`` with ``min_overlap=0.5``); a patch is *kept* when it survives
    as a token at its own position (not merged into another), *unmixed* when that token holds no
    other patch. The demo model is trained once (tower warm-up, pretrain, finetune; identity reducer,
    images + needles + text) and each reducer is swapped in at inference: ``instruct_resample``
    (zero-parameter mode), ``instruct_resample blind`` (the same with relevance weight 0: distinctiveness
    alone, the instruction-blind control), ``local_merge`` (windows adapted to the budget: 2x2 / 2x4 / 4x4, one
    token per window, sources may join an adjacent window's destination), ``local_merge 8x8`` (one
    window: the K-1 sources least like the top-left patch stay; an instruction-blind saliency
    control) and ``avgpool`` (the same windows as ``local_merge``).
(c) held-out accuracy on the needle questions at the same budgets. Default (cheap): the
    identity-trained model of (b) with each reducer swapped in at inference, no retraining (labelled
    so). ``--train-grid``: one training per reducer, budget and seed (3 seeds for the acceptance),
    cached in ``runs/bench_cache/resample`` and resumable like ``bench_merge`` part (c).
(d) needle-token recall in long clips (``data_tools.synth_needle_clip``: 32 frames, 8 sampled, the
    needle in one of them; 8 x 8 x 8 = 512 tokens per clip) at the same budgets, the models of (b) with
    each reducer swapped in as the video reducer: ``instruct_resample`` (with temporal novelty),
    its blind control, ``local_merge`` and ``avgpool`` with (t, h, w) windows 1x2x2 / 2x2x2 / 2x2x4.
    Recall only: the models were trained on images.

The trainings are cached per run and claimed while they run, so the same command started N times
fills the grid N runs at a time (on a small machine give each ``OMP_NUM_THREADS=1``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import (
    RunCache,
    Section,
    claim,
    clip_tower,
    machine_info,
    median_seconds,
    results_dir,
    run_plan,
    write_results,
)
from benchmarks.needle_recall import load_metas, measure
from recipes import chain
from recipes.chain import ChainPaths

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "runs" / "bench_cache" / "resample"
MIX = {"image": 0.5, "needle": 0.45, "text": 0.05}
BUDGETS = ("1/4", "1/8", "1/16")
NEEDLE_QTYPES = ("needle_colour", "needle_position")
SWAP_REDUCERS = ("instruct_resample", "instruct_resample blind", "local_merge", "local_merge 8x8", "avgpool")
CLIP_REDUCERS = ("instruct_resample", "instruct_resample blind", "local_merge", "avgpool")
CLIP_WINDOWS = {"1/4": [1, 2, 2], "1/8": [2, 2, 2], "1/16": [2, 2, 4]}  # (t, h, w) windows of the clip reducers
CLIP_GRID = (8, 8, 8)  # the bench model's 8 sampled frames of 8 x 8 patches
GRID_REDUCERS = ("instruct_resample", "local_merge", "avgpool")
# tower warm-up labels for the needle images: 4x4 layout cells, up to 10 objects
WARMUP = ["train.warmup.cell_grid=4", "train.warmup.max_objects=10"]
# images only: no audio tower, no video separators (the demo configs have both since issue 5)
IMAGES_ONLY = ["model.audio=null", "model.video.separators=false"]


def code_version() -> str:
    """A hash of the reducers' source: cached measurements record it; swapped ones are redone when it
    changes (trained ones are kept, since retraining takes hours: delete their entries to redo them)."""
    import hashlib

    src = b"".join((ROOT / "llava_wb" / "model" / f).read_bytes() for f in ("reducers.py", "merging.py", "resample.py"))
    return hashlib.sha1(src).hexdigest()[:10]


def fraction(budget: str) -> float:
    num, den = budget.split("/")
    return int(num) / int(den)


def windows_for(keep: int, grid: tuple[int, int]) -> list[int]:
    """A ``(1, sh, sw)`` window giving ``keep`` windows on an ``h x w`` grid (2x2, then 2x4, 4x4, ...)."""
    h, w = grid
    sh = sw = 1
    while (h // sh) * (w // sw) > keep:
        if sw <= sh:
            sw *= 2
        else:
            sh *= 2
    if (h // sh) * (w // sw) != keep or h % sh or w % sw:
        raise ValueError(f"no window gives {keep} tokens on a {h}x{w} grid")
    return [1, sh, sw]


def reducer_spec(name: str, keep: int, grid: tuple[int, int] = (8, 8)) -> tuple[str, dict[str, Any]]:
    """``(type, options)`` of a reducer of the benchmark that keeps ``keep`` tokens of the grid."""
    if name == "identity":
        return "identity", {}
    if name == "instruct_resample":
        return "instruct_resample", {"tokens": keep}
    if name == "instruct_resample blind":
        return "instruct_resample", {"tokens": keep, "relevance": 0.0}
    if name == "instruct_resample learned":  # --train-grid only (swapped in untrained it equals the zero mode)
        return "instruct_resample", {"tokens": keep, "mode": "learned"}
    if name == "local_merge":
        return "local_merge", {"tokens": keep, "window": windows_for(keep, grid), "neighbours": 1}
    if name == "local_merge 8x8":
        return "local_merge", {"tokens": keep, "window": [1, *grid]}
    if name == "avgpool":
        return "avgpool", {"window": windows_for(keep, grid)}
    raise ValueError(f"unknown reducer {name!r}")


def clip_reducer_spec(name: str, budget: str) -> tuple[str, dict[str, Any]]:
    """``(type, options)`` of a clip reducer of part (d) at ``budget`` of the clip's 512 tokens."""
    keep = int(round(CLIP_GRID[0] * CLIP_GRID[1] * CLIP_GRID[2] * fraction(budget)))
    if name.startswith("instruct_resample"):
        return reducer_spec(name, keep)
    if name == "local_merge":
        return "local_merge", {"tokens": keep, "window": CLIP_WINDOWS[budget], "neighbours": 1}
    if name == "avgpool":
        return "avgpool", {"window": CLIP_WINDOWS[budget]}
    raise ValueError(f"unknown clip reducer {name!r}")


# ----------------------------------------------------------------------------- (a)
def part_a(quick: bool, repeats: int) -> tuple[Section, dict[str, Any]]:
    import torch

    from llava_wb.model.projectors import build_projector
    from llava_wb.model.reducers import build_reducer

    tower = clip_tower(quick)
    size, (gh, gw) = tower.image_size, tower.grid
    d_llm, q_len, frames = (256 if quick else 4096), 32, 8
    seq_len = gh * gw + 128  # LLaVA-1.5's sequence: the image's tokens and the text around them
    torch.manual_seed(0)
    projector = build_projector("mlp2x_gelu", tower.hidden_size, d_llm).eval()
    query = torch.randn(1, seq_len, d_llm)  # the whole sequence is handed in; its question is 32 tokens
    query_mask = torch.zeros(1, seq_len, dtype=torch.bool)
    query_mask[0, 40 : 40 + q_len] = True
    rows, raw = (
        [],
        {
            "threads": torch.get_num_threads(),
            "tokens_per_frame": gh * gw,
            "dim": tower.hidden_size,
            "llm_dim": d_llm,
            "query_tokens": q_len,
            "sequence_tokens": seq_len,
            "inputs": {},
        },
    )
    worst = worst_own = 0.0
    with torch.no_grad():
        for label, t in (("1 image", 1), (f"{frames}-frame clip", frames)):
            pix = torch.randn(t, 3, size, size)
            tower(pix[:1])  # warm-up
            t_tower = median_seconds(lambda: tower(pix), repeats if t == 1 else 1)
            feats = tower(pix).reshape(1, t * gh * gw, -1)
            n, grid = feats.shape[1], (t, gh, gw)
            reps = (5 if t == 1 else 2) * repeats
            projected = projector(feats)  # also the warm-up
            t_proj_all = median_seconds(lambda: projector(feats), reps)
            entry = {"tower_seconds": t_tower, "projector_all_seconds": t_proj_all, "tokens": n, "budgets": {}}
            for budget in BUDGETS:
                keep = int(round(n * fraction(budget)))
                red = build_reducer("instruct_resample", {"tokens": keep}).eval()
                full = lambda: red(feats, grid, query=query, query_mask=query_mask, project=projector)  # noqa: E731

                # the resampler's own work: the projection handed in ready-made
                def own():
                    return red(feats, grid, query=query, query_mask=query_mask, project=lambda x: projected)

                full(), own()
                t_red, t_own = median_seconds(full, reps), median_seconds(own, 3 * reps)
                t_kept = median_seconds(lambda: projector(feats[:, :keep]), reps)
                share, share_own = t_red / t_tower, t_own / t_tower
                worst, worst_own = max(worst, share), max(worst_own, share_own)
                rows.append(
                    [
                        label,
                        budget,
                        f"{n} -> {keep}",
                        f"{1e3 * t_red:.1f}",
                        f"{100 * share:.2f}%",
                        f"{1e3 * t_own:.1f}",
                        f"{100 * share_own:.3f}%",
                        f"{1e3 * t_proj_all:.1f}",
                        f"{1e3 * t_kept:.1f}",
                        f"{1e3 * t_tower:.0f}",
                    ]
                )
                entry["budgets"][budget] = {
                    "keep": keep,
                    "resample_seconds": t_red,
                    "own_seconds": t_own,
                    "projector_kept_seconds": t_kept,
                    "fraction": share,
                    "own_fraction": share_own,
                }
            raw["inputs"][label] = entry
    raw["worst_fraction"], raw["worst_own_fraction"] = worst, worst_own
    # multiply-adds per token: projector vs the tower up to its -2 feature layer (12 d^2 + 2 N d per layer)
    d, layers = tower.hidden_size, tower.model.config.num_hidden_layers - 1
    proj_macs, tower_macs = d * d_llm + d_llm * d_llm, layers * (12 * d * d + 2 * (gh * gw + 1) * d)
    head_macs = d * d_llm
    section = Section(
        title="(a) Resampler time vs the vision tower forward (CPU)",
        explain=(
            f"{'Tiny quick shapes' if quick else 'CLIP ViT-L/14-336 shapes'} ({gh * gw} patch tokens per frame, "
            f"dim {tower.hidden_size}), random weights, {torch.get_num_threads()} torch thread(s); instruction of "
            f"{q_len} tokens of width {d_llm}{'' if quick else ' (LLaVA-1.5-7B)'} inside a sequence of {seq_len} "
            "(the model hands the resampler the whole sequence and its instruction mask). "
            "`instruct_resample` (zero mode) "
            "= the projector minus its last layer on every token (the last layer is pulled back onto the "
            'instruction instead) + relevance + distinctiveness + top-K + merge of the rest; "without projector" '
            "times the same call with the projection handed in ready-made (the resampler's own work). For comparison, the projector on all N tokens, and on "
            "the K kept tokens (which every model runs after any reducer). Medians of a few runs (the clip's "
            "tower: one run). Target: resampler <= 3% of the tower forward."
        ),
        headers=[
            "input",
            "budget",
            "tokens",
            "resampler ms",
            "share of tower",
            "without projector ms",
            "share without projector",
            "projector on all N ms",
            "projector on K ms",
            "tower ms",
        ],
        rows=rows,
        notes=[
            f"worst resampler / tower = {100 * worst:.2f}% (target <= 3%: {'met' if worst <= 0.03 else 'NOT met'}); "
            f"without the projector call {100 * worst_own:.3f}%",
            f"the whole projector is {proj_macs / 1e6:.1f} M multiply-adds per token, its first layer (all the "
            f"resampler runs on every token) {head_macs / 1e6:.1f} M, the tower's {layers} layers up to the -2 "
            f"feature layer about {tower_macs / 1e6:.1f} M: projecting every token would cost "
            f"{100 * proj_macs / tower_macs:.1f}% of the tower in FLOPs on any hardware, the first layer "
            f'{100 * head_macs / tower_macs:.1f}%; the scoring, top-K and merge themselves are the "without '
            'projector" column',
        ],
    )
    return section, raw


# ----------------------------------------------------------------------------- data and training
def prepare_data(cache: Path, quick: bool) -> Path:
    """Images + needles + text (``MIX``), shards per split plus ``heldout_needle`` (the needle records
    of the held-out split) and the demo tokenizer; cached."""
    from data_tools.convert_to_wds import convert
    from data_tools.make_synthetic import generate
    from llava_wb.tokenizer import build_demo_tokenizer, demo_corpus

    run = cache / ("data_quick" if quick else "data")
    if (run / "tokenizer" / "tokenizer_config.json").is_file():
        return run
    sizes = (
        dict(n_pretrain=60, n_instruct=120, n_heldout=60)
        if quick
        else dict(n_pretrain=2000, n_instruct=8000, n_heldout=800)
    )
    data = generate(run / "data", progress=False, mix=MIX, **sizes)
    files = dict(data["files"])
    heldout = json.loads(Path(files["heldout"]).read_text(encoding="utf-8"))
    files["heldout_needle"] = str(run / "data" / "heldout_needle.json")
    Path(files["heldout_needle"]).write_text(
        json.dumps([r for r in heldout if r["meta"]["modality"] == "needle"]), encoding="utf-8"
    )
    for split in ("pretrain", "instruct", "heldout", "heldout_needle"):
        convert(
            [files[split]],
            [data["media_root"]],
            run / "shards" / split,
            shard_size=500,
            workers=1,
            progress=False,
            overwrite=True,
        )
    records = [r for s in ("pretrain", "instruct", "heldout") for r in json.loads(Path(files[s]).read_text())]
    build_demo_tokenizer(demo_corpus(records=records)).save_pretrained(run / "tokenizer")
    return run


def prepare_clips(data: Path, quick: bool) -> Path:
    """Held-out long needle clips (``data_tools.synth_needle_clip``) and their shards, beside ``data``;
    the output folder of the generator (records, ``dataset_info.json``), cached."""
    from data_tools.convert_to_wds import convert
    from data_tools.make_synthetic import generate

    gen, shards = data / "clips", data / "shards" / "heldout_clip"
    if not (shards / "index.json").is_file():
        made = generate(
            gen,
            n_pretrain=0,
            n_instruct=0,
            n_heldout=8 if quick else 240,
            seed=7,
            progress=False,
            mix={"needle_clip": 1.0},
        )
        convert(
            [made["files"]["heldout"]],
            [made["media_root"]],
            shards,
            shard_size=500,
            workers=1,
            progress=False,
            overwrite=True,
        )
    return gen


def train_model(
    data: Path, work: Path, name: str, budget: str | None, seed: int, steps: dict[str, int]
) -> dict[str, Any]:
    """Tower warm-up (cached per warm-up steps and seed, beside ``work``) -> pretrain -> finetune with
    reducer ``name`` at ``budget`` (cached in ``work``); returns the run folder and timings."""
    from benchmarks.bench_merge import train_stage

    tower = work.parent / f"towers{'_quick' if work.name.endswith('quick') else ''}" / f"t{steps['tower']}_seed{seed}"
    run = work / f"seed{seed}" / (name.replace(" ", "_") + ("" if budget is None else "_" + budget.replace("/", "-")))
    paths = ChainPaths(data=data, tower=tower, pretrain=run / "pretrain", train=run / "train")
    with claim(tower.with_name(tower.name + ".lock")):  # processes sharing the cache train it once
        if not (tower / "result.json").is_file():
            train_stage(
                "tower",
                paths,
                [f"train.seed={seed}", f"data.seed={seed}", f"train.max_steps={steps['tower']}", *WARMUP],
            )
    tower_seconds = json.loads((tower / "result.json").read_text())["seconds"]
    kind, options = reducer_spec(name, 64 if budget is None else int(round(64 * fraction(budget))))
    done = run / "done.json"
    with claim(run.with_name(run.name + ".lock")):
        _train_run(paths, done, kind, options, seed, steps)
    return {"run": str(run), "tower_seconds": tower_seconds, **json.loads(done.read_text())}


def _train_run(
    paths: ChainPaths, done: Path, kind: str, options: dict[str, Any], seed: int, steps: dict[str, int]
) -> None:
    from benchmarks.bench_merge import train_stage

    if not done.is_file():
        common = [
            *IMAGES_ONLY,
            f"model.reducer.type={kind}",
            f"model.reducer.options={json.dumps(options)}",
            f"train.seed={seed}",
            f"data.seed={seed}",
        ]
        t0 = time.perf_counter()
        train_stage("pretrain", paths, [f"train.max_steps={steps['pretrain']}", *common])
        result = train_stage("finetune", paths, [f"train.max_steps={steps['finetune']}", *common])
        done.write_text(
            json.dumps(
                {
                    "train_seconds": round(time.perf_counter() - t0, 1),
                    "tokens_per_image": result["tokens_per_image"],
                    "steps": steps,
                }
            )
        )


# ----------------------------------------------------------------------------- recall and accuracy
def template() -> str:
    """The demo's conversation template (what the trained models were tuned with)."""
    return chain.template()


def measure_needles(
    model: Any, tok: Any, data: Path, metas: dict[str, Any], swap: tuple[str, dict[str, Any]] | None
) -> dict[str, Any]:
    """Needle accuracy and recall on ``heldout_needle`` (``benchmarks.needle_recall``)."""
    return measure(model, tok, data / "shards" / "heldout_needle", metas, swap, "image", template())


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}"


# ----------------------------------------------------------------------------- (b) and cheap (c)
def swapped(
    data: Path, work: Path, seeds: list[int], steps: dict[str, int], budgets: Sequence[str], done: RunCache
) -> dict[str, Any]:
    """Train identity per seed (cached), then measure every reducer swapped in at every budget."""
    metas = load_metas(data / "data", "heldout_needle")
    out: dict[str, Any] = {}
    for seed in seeds:
        specs = {
            f"swap/{seed}/{name}/{budget or 'all'}": reducer_spec(
                name, 64 if budget is None else int(round(64 * fraction(budget)))
            )
            for name, budget in [("identity", None)] + [(r, b) for b in budgets for r in SWAP_REDUCERS]
        }
        out.update(
            swap_into_identity(
                data,
                work,
                seed,
                steps,
                specs,
                done,
                lambda model, tok, spec: measure_needles(model, tok, data, metas, spec),
            )
        )
    return out


def clip_recall(
    data: Path, clips: Path, work: Path, seeds: list[int], steps: dict[str, int], budgets: Sequence[str], done: RunCache
) -> dict[str, Any]:
    """Part (d): the identity models of (b) on long needle clips, each clip reducer swapped in as the
    video reducer at each budget of the clip's 512 tokens; recall only (the models never saw a clip)."""
    metas = load_metas(clips, "heldout", "video", frames=CLIP_GRID[0])
    out: dict[str, Any] = {}
    for seed in seeds:
        specs = {f"clip/{seed}/{name}/{b}": clip_reducer_spec(name, b) for b in budgets for name in CLIP_REDUCERS}
        out.update(
            swap_into_identity(
                data,
                work,
                seed,
                steps,
                specs,
                done,
                lambda model, tok, spec: measure(
                    model, tok, data / "shards" / "heldout_clip", metas, spec, "video", template()
                ),
            )
        )
    return out


def swap_into_identity(
    data: Path,
    work: Path,
    seed: int,
    steps: dict[str, int],
    specs: dict[str, tuple[str, dict[str, Any]]],
    done: RunCache,
    measure_fn: Any,
) -> dict[str, Any]:
    """``measure_fn(model, tok, spec)`` for each key's reducer spec on seed ``seed``'s identity model
    (trained once, cached), stored in ``done`` under the key; redone when the reducers' code or the
    spec changed since."""
    from llava_wb.model.bundle import load_bundle

    info = train_model(data, work, "identity", None, seed, steps)
    loaded: list[Any] = []

    def one(spec: tuple[str, dict[str, Any]]) -> dict[str, Any]:
        if not loaded:
            loaded.extend(load_bundle(Path(info["run"]) / "train" / "final"))
        return {
            **measure_fn(*loaded, spec),
            "spec": list(spec),
            "code": code_version(),
            "train_seconds": info["train_seconds"],
            "tower_seconds": info["tower_seconds"],
        }

    def stale(key: str) -> bool:
        return done[key].get("code") != code_version() or done[key].get("spec") != list(specs[key])

    run_plan(
        [(key, lambda spec=spec: one(spec)) for key, spec in specs.items()],
        done,
        work / "claims",
        "bench_resample",
        stale,
    )
    return {key: done[key] for key in specs}


def table_d(results: dict[str, Any], seeds: list[int], budgets: Sequence[str]) -> Section:
    t, h, w = CLIP_GRID
    section = recall_table(
        results,
        seeds,
        budgets,
        "clip",
        CLIP_REDUCERS,
        t * h * w,
        "(d) Needle-token recall in long clips (identity-trained model, video reducer swapped in)",
        f"Held-out needle clips (`data_tools.synth_needle_clip`: 32 frames, {t} sampled uniformly; the needle shows "
        "in one segment, so in one sampled frame; the other shapes stay all along)",
    )
    windows = ", ".join(f"{b}: {'x'.join(map(str, CLIP_WINDOWS[b]))}" for b in budgets)
    section.notes = [
        *section.notes,
        f"(t, h, w) windows of local_merge and avgpool per budget: {windows}; "
        "instruct_resample adds temporal novelty (weight 0.5) to its scores on clips",
    ]
    return section


def table_b(results: dict[str, Any], seeds: list[int], budgets: Sequence[str]) -> Section:
    return recall_table(
        results,
        seeds,
        budgets,
        "swap",
        SWAP_REDUCERS,
        64,
        "(b) Needle-token recall per budget (identity-trained demo model, reducer swapped in at inference)",
        "Held-out needle questions",
    )


def recall_table(
    results: dict[str, Any],
    seeds: list[int],
    budgets: Sequence[str],
    prefix: str,
    reducers: Sequence[str],
    n: int,
    title: str,
    what: str,
) -> Section:
    """Recall rows of ``results[f"{prefix}/{seed}/{reducer}/{budget}"]`` for ``n`` visual tokens per item."""
    rows = []
    for budget in budgets:
        keep = int(round(n * fraction(budget)))
        for name in reducers:
            runs = [results[k] for s in seeds if (k := f"{prefix}/{s}/{name}/{budget}") in results]
            if not runs:
                continue
            avg = {
                f: statistics.mean(r[f] for r in runs)
                for f in (
                    "recall_kept",
                    "recall_unmixed",
                    "needle_share",
                    "hit_rate",
                    "kept_on_objects",
                    "object_patch_fraction",
                )
            }
            pooled = name == "avgpool"  # every token averages a window: no patch is kept as its own token
            rows.append(
                [
                    budget,
                    name,
                    keep,
                    _pct(None if pooled else avg["recall_kept"]),
                    _pct(None if pooled else avg["recall_unmixed"]),
                    _pct(avg["needle_share"]),
                    _pct(None if pooled else avg["hit_rate"]),
                    _pct(avg["kept_on_objects"]),
                    f"{100 * keep / n:.1f}",
                ]
            )
    first = next((v for k, v in results.items() if k.startswith(prefix + "/")), {})
    notes = []
    for budget in budgets:
        runs = [results[k] for s in seeds if (k := f"{prefix}/{s}/instruct_resample/{budget}") in results]
        if runs:
            on, base = (statistics.mean(r[f] for r in runs) for f in ("kept_on_objects", "object_patch_fraction"))
            kept = statistics.mean(r["recall_kept"] for r in runs)
            rand = fraction(budget)
            notes.append(
                f"{budget}: instruct_resample keeps needle patches at {100 * kept:.1f}% vs {100 * rand:.1f}% for a "
                f"random choice, and object patches at {100 * on:.1f}% of its tokens vs {100 * base:.1f}% of all "
                "patches: its selection "
                + (
                    "prefers the needle"
                    if kept > 1.5 * rand
                    else "does not prefer the needle"
                    if kept >= rand
                    else "ranks the needle BELOW a random choice"
                )
                + "."
            )
    return Section(
        title=title,
        explain=(
            f"{what} ({first.get('questions', 0)} per row; each question conditions "
            "`instruct_resample` on its own prompt). Needle patches: >= 50% inside the needle's box "
            f"({first.get('needle_patches_per_question', 0):.1f} per needle on average, of {n}). "
            "recall kept = share of needle patches that survive as a token at their own position; unmixed = "
            "kept and holding no other patch; needle share = mean fraction of needle patches in the token "
            "each needle patch ends up in (applies to every reducer); hit = questions with >= 1 needle patch "
            "kept; kept on objects = share of output tokens whose patch lies on any object (>= 50%), against "
            f"{100 * first.get('object_patch_fraction', 0):.1f}% of all patches; random = recall of a uniform "
            "random choice of K patches. Mean over seeds "
            f"{seeds}."
        ),
        headers=[
            "budget",
            "reducer",
            "tokens",
            "recall kept %",
            "recall unmixed %",
            "needle share %",
            "hit %",
            "kept on objects %",
            "random recall %",
        ],
        rows=rows,
        notes=notes,
    )


def table_c_swap(results: dict[str, Any], seeds: list[int], budgets: Sequence[str]) -> Section:
    rows, stats = [], {}

    def add(budget: str, name: str, keys: list[str]) -> None:
        runs = [results[k] for k in keys if k in results]
        if not runs:
            return
        vals = {
            t: [100 * (r["overall"] if t == "overall" else r["accuracy"].get(t, float("nan"))) for r in runs]
            for t in (*NEEDLE_QTYPES, "overall")
        }
        stats[(budget, name)] = statistics.mean(vals["overall"])
        rows.append([budget, name, runs[0]["tokens"], len(runs), *(_mean_std(v) for v in vals.values())])

    add("-", "identity", [f"swap/{s}/identity/all" for s in seeds])
    for budget in budgets:
        for name in SWAP_REDUCERS:
            add(budget, name, [f"swap/{s}/{name}/{budget}" for s in seeds])
    base = stats.get(("-", "identity"))
    for row in rows:
        key = (row[0], row[1])
        row.append(f"{100 * stats[key] / base:.1f}%" if base else "n/a")
    notes = acceptance(stats, base, budgets)
    first = next((v for k, v in results.items() if k.endswith("/identity/all")), {})
    majority = first.get("majority", {})
    notes.append(
        "majority-answer baselines: "
        + ", ".join(f"{t} {100 * majority[t]:.1f}%" for t in NEEDLE_QTYPES if t in majority)
    )
    for t in NEEDLE_QTYPES:
        if t in majority and t in first.get("accuracy", {}) and first["accuracy"][t] < majority[t] + 0.05:
            notes.append(
                f"identity answers {t} at {100 * first['accuracy'][t]:.1f}%, within 5 points of the majority "
                f"answer: the model has not learned {t} at this training budget, so its column compares "
                "nothing (train longer: --tower-steps, --steps)"
            )
    return Section(
        title="(c) Needle accuracy per budget: swapped at inference, trained with identity",
        explain=(
            "NOT the acceptance protocol (that trains each reducer at its budget: `--train-grid`). The model "
            "of (b), trained with all 64 tokens, answers the held-out needle questions with each reducer "
            "swapped in at inference; exact match in %, mean ± std over seeds (one seed: the value)."
        ),
        headers=["budget", "reducer", "tokens", "seeds", *NEEDLE_QTYPES, "overall", "of identity"],
        rows=rows,
        notes=notes,
    )


def acceptance(stats: dict[tuple[str, str], float], base: float | None, budgets: Sequence[str]) -> list[str]:
    notes = []
    for name in ("instruct_resample", "instruct_resample learned"):
        if "1/8" not in budgets or ("1/8", name) not in stats:
            continue
        ir = stats[("1/8", name)]
        if base:
            notes.append(
                f"1/8: {name} keeps {100 * ir / base:.1f}% of identity's accuracy "
                f"(target >= 95%: {'met' if ir >= 0.95 * base else 'NOT met'})"
            )
        if ("1/8", "avgpool") in stats:
            gap = ir - stats[("1/8", "avgpool")]
            notes.append(
                f"1/8: {name} - avgpool = {gap:+.1f} points (target >= +10: {'met' if gap >= 10 else 'NOT met'})"
            )
    return notes


def _mean_std(vals: list[float]) -> str:
    mean = statistics.mean(vals)
    return f"{mean:.1f} ± {statistics.stdev(vals):.1f}" if len(vals) > 1 else f"{mean:.1f}"


# ----------------------------------------------------------------------------- (c) trained grid
def train_grid(
    data: Path,
    work: Path,
    seeds: list[int],
    steps: dict[str, int],
    budgets: Sequence[str],
    reducers: Sequence[str],
    done: RunCache,
) -> Section:
    from llava_wb.model.bundle import load_bundle

    metas = load_metas(data / "data", "heldout_needle")

    def one(name: str, budget: str | None, seed: int) -> dict[str, Any]:
        info = train_model(data, work, name, budget, seed, steps)
        model, tok = load_bundle(Path(info["run"]) / "train" / "final")
        keep = 64 if budget is None else int(round(64 * fraction(budget)))
        return {
            **measure_needles(model, tok, data, metas, None),
            "train_seconds": info["train_seconds"],
            "tower_seconds": info["tower_seconds"],
            "spec": list(reducer_spec(name, keep)),
            "code": code_version(),
        }

    plan = [(r, b, s) for s in seeds for r, b in [("identity", None)] + [(r, b) for b in budgets for r in reducers]]
    run_plan(
        [(f"train/{s}/{r}/{b or 'all'}", lambda r=r, b=b, s=s: one(r, b, s)) for r, b, s in plan],
        done,
        work / "claims",
        "bench_resample",
    )
    rows, stats, per_seed = [], {}, []
    for budget, name in [("-", "identity")] + [(b, r) for b in budgets for r in reducers]:
        keys = [f"train/{s}/{name}/{'all' if budget == '-' else budget}" for s in seeds]
        runs = [done[k] for k in keys if k in done]
        if not runs:
            continue
        vals = {
            t: [100 * (r["overall"] if t == "overall" else r["accuracy"].get(t, float("nan"))) for r in runs]
            for t in (*NEEDLE_QTYPES, "overall")
        }
        label = "identity" if budget == "-" else f"{budget} {name}"
        per_seed.append(
            f"{label}: " + ", ".join(f"{o:.1f} ({p:.1f})" for o, p in zip(vals["overall"], vals[NEEDLE_QTYPES[1]]))
        )
        stats[(budget, name)] = statistics.mean(vals["overall"])
        recall = None if name in ("avgpool", "identity") else statistics.mean(r["recall_kept"] for r in runs)
        rows.append(
            [
                budget,
                name,
                runs[0]["tokens"],
                len(runs),
                *(_mean_std(v) for v in vals.values()),
                _pct(recall),
                f"{statistics.mean(r['train_seconds'] for r in runs):.0f}",
            ]
        )
    base = stats.get(("-", "identity"))
    return Section(
        title="(c, trained) Needle accuracy per budget, each reducer trained at its budget",
        explain=(
            f"One demo training per reducer, budget and seed (tower warm-up {steps['tower']} steps per seed, "
            f"pretrain {steps['pretrain']}, finetune {steps['finetune']}, same data and seeds for every reducer); "
            "exact match on the held-out needle questions in %, mean ± std over seeds; recall kept as in (b); "
            "train s = pretrain + finetune wall seconds per run (the warm-up is shared by a seed's runs)."
        ),
        headers=["budget", "reducer", "tokens", "seeds", *NEEDLE_QTYPES, "overall", "recall kept %", "train s"],
        rows=rows,
        notes=acceptance(stats, base, budgets)
        + [
            f"overall per seed {seeds}, {NEEDLE_QTYPES[1]} in brackets: " + "; ".join(per_seed),
            "the majority answer to needle_position is right about half the time (baselines under (c)): "
            "a model near 50% there has not learned where the needle is",
        ],
    )


# ----------------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> list[str]:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_resample",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="tiny shapes and runs (smoke test; numbers meaningless)")
    p.add_argument("--out", default=None, help="results folder (default benchmarks/results; --quick: runs/bench_quick)")
    p.add_argument("--cache", default=str(CACHE))
    p.add_argument(
        "--parts",
        default="a,b,c,d",
        help="a: time, b: recall, c: accuracy (swapped; --train-grid: trained), d: recall in long clips",
    )
    p.add_argument("--seeds", default="0,1,2", help="seeds of the --train-grid runs")
    p.add_argument(
        "--swap-seeds", default="0", help="seeds of the identity model(s) that (b) and (c) swap reducers into"
    )
    p.add_argument("--budgets", default=",".join(BUDGETS))
    p.add_argument("--grid-budgets", default=None, help="budgets of --train-grid (default: --budgets)")
    p.add_argument(
        "--steps",
        type=int,
        default=1500,
        help="finetune steps per run (at 600 the identity model answers needle_position at its majority rate)",
    )
    p.add_argument("--pretrain-steps", type=int, default=200)
    p.add_argument(
        "--tower-steps",
        type=int,
        default=1000,
        help="tower warm-up steps (once per seed; 400 leaves small shapes at ~70%% per-patch accuracy)",
    )
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--train-grid",
        action="store_true",
        help="(c): train every reducer at every budget and seed (expensive; cached and resumable)",
    )
    p.add_argument(
        "--grid-reducers",
        default=",".join(GRID_REDUCERS),
        help="reducers of --train-grid (also: 'local_merge 8x8', 'instruct_resample learned')",
    )
    p.add_argument("--no-progress", action="store_true", help="(accepted for run_all; training logs stay)")
    args = p.parse_args(argv)
    args.out = results_dir(args.out, args.quick)
    parts = set(args.parts.split(","))
    if not parts or parts - {"a", "b", "c", "d"}:
        p.error(f"--parts takes a comma-separated subset of a,b,c,d; got {args.parts!r}")
    if args.train_grid and "c" not in parts:
        p.error("--train-grid is part (c): add c to --parts")
    seeds = [int(s) for s in args.seeds.split(",") if s != ""]
    swap_seeds = [int(s) for s in args.swap_seeds.split(",") if s != ""]
    budgets = [b for b in args.budgets.split(",") if b]
    grid_budgets = budgets if args.grid_budgets is None else [b for b in args.grid_budgets.split(",") if b]
    if set(budgets + grid_budgets) - set(BUDGETS):
        p.error(f"--budgets and --grid-budgets must be among {', '.join(BUDGETS)}")
    reducers = [r for r in args.grid_reducers.split(",") if r]
    known = (*SWAP_REDUCERS, "instruct_resample learned")
    if set(reducers) - set(known):
        p.error(f"--grid-reducers must be among {', '.join(known)}")
    steps = {"tower": args.tower_steps, "pretrain": args.pretrain_steps, "finetune": args.steps}
    if args.quick:
        seeds, swap_seeds, steps = seeds[:1], swap_seeds[:1], {"tower": 3, "pretrain": 2, "finetune": 3}
        grid_budgets = [b for b in grid_budgets if b == "1/8"] or grid_budgets[:1]
    sections, raw = [], {"quick": args.quick, "steps": steps}
    if "a" in parts:
        s, raw["a"] = part_a(args.quick, 1 if args.quick else args.repeats)
        sections.append(s)
    if parts & {"b", "c", "d"}:
        cache = Path(args.cache)
        with claim(cache / f"data{'_quick' if args.quick else ''}.lock"):  # one process prepares it
            data = prepare_data(cache, args.quick)
        work = cache / (
            "runs_quick" if args.quick else f"runs_t{steps['tower']}_p{steps['pretrain']}_f{steps['finetune']}"
        )
        work.mkdir(parents=True, exist_ok=True)
        done = RunCache(work / "results.json")
        results = swapped(data, work, swap_seeds, steps, budgets, done) if parts & {"b", "c"} else {}
        raw["swap"] = results
        if "d" in parts:
            with claim(cache / f"clips{'_quick' if args.quick else ''}.lock"):
                clips = prepare_clips(data, args.quick)
            raw["clip"] = clip_recall(data, clips, work, swap_seeds, steps, budgets, done)
        if "b" in parts:
            sections.append(table_b(results, swap_seeds, budgets))
        if "c" in parts:
            sections.append(table_c_swap(results, swap_seeds, budgets))
            if args.train_grid:
                sections.append(train_grid(data, work, seeds, steps, grid_budgets, reducers, done))
                chosen = {
                    f"train/{s}/{r}/{b}"
                    for s in seeds
                    for r, b in [("identity", "all")] + [(r, b) for b in grid_budgets for r in reducers]
                }
                raw["train_grid"] = {k: v for k, v in done.items() if k in chosen}
        if "d" in parts:
            sections.append(table_d(raw["clip"], swap_seeds, budgets))
    intro = (
        "`instruct_resample` (issue 6) against `local_merge`, `avgpool` and no reduction on needle questions: "
        "one small object among 6-10 answers the question (`data_tools.synth_needle`). "
        f"Demo training: tower warm-up {steps['tower']} steps, pretrain {steps['pretrain']}, finetune "
        f"{steps['finetune']}, data mix {MIX}. CPU only; no GPU rows."
    )
    if args.train_grid:
        intro += f" Trained grid: seeds {seeds}, budgets {grid_budgets}, reducers {reducers}."
    else:
        intro += (
            " The trained grid of the acceptance (one training per reducer, budget and seed) is behind "
            "`--train-grid` and was not run for this file."
        )
    if args.quick:
        intro = "QUICK MODE: tiny shapes and runs, the numbers are meaningless.\n\n" + intro
    paths = write_results(
        args.out,
        "resample",
        title="Instruction-aware resampling benchmark",
        intro=intro,
        sections=sections,
        raw=raw,
        machine=machine_info(),
    )
    print(paths["md"])
    return [paths["md"], paths["json"]]


if __name__ == "__main__":
    main()
