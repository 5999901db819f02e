"""Training-step benchmark: where a step's time goes (CPU, demo config) and GPU throughput + MFU.

    python -m benchmarks.bench_train [--quick] [--out benchmarks/results] [--gpu-only | --cpu-only]
                                     [--steps N] [--threads 2,1] [--gpu-batch 16] [--grad-ckpt]

Writes ``<out>/train.md`` and ``<out>/train.json`` (``--quick``: tiny sizes, default out
``runs/bench_quick``; the numbers mean nothing there).

(1) CPU, ``configs/demo.yaml`` model and data settings (tiny CLIP-like tower, trained; tiny LLaMA;
    streaming loader with its 2 workers over synthetic shards): each step is timed phase by phase
    (``split_step``): data wait, tower forward, reducer + projector forward, splice + LLM forward +
    loss, one backward split at the moment the gradient reaches the tower output (a tensor hook),
    optimizer step. The same batches are then replayed from memory to show what the loader's
    workers cost the compute on 2 cores. Runs at torch's default thread count and at 1 thread.
(2) GPU, only when ``torch.cuda.is_available()``: ``train_shapes.REALISTIC`` (CLIP ViT-L/14-336,
    frozen, + LLaMA-1.1B, random init, SDPA) on a synthetic batch resident on the device, bf16
    autocast over fp32 weights (what ``llava_wb.train`` does with ``bf16``) and pure bf16 weights;
    samples/s, LLM tokens/s, peak memory, MFU (formula in ``train_shapes.FLOPS_FORMULA``).
    ``--quick`` runs this code path at ``train_shapes.TINY`` (on CPU when there is no GPU).

A part not measured in a run (``--gpu-only``, ``--cpu-only``, no GPU) keeps its earlier result from
``<out>/train.json`` when there is one, marked as such: run ``--gpu-only`` on a lent GPU machine and
the CPU section stays.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from benchmarks.common import (
    DEFAULT_CACHE,
    ROOT,
    CpuMeter,
    Section,
    machine_info,
    machine_line,
    results_dir,
    write_results,
)
from benchmarks.train_shapes import gpu_section, kept_note, measure_gpu

NAME = "train"
PHASES = {
    "data_wait": "data wait (blocked on the loader's next batch)",
    "tower_fwd": "vision tower forward",
    "proj_fwd": "reducer + projector forward",
    "llm_fwd": "splice + LLM forward + loss",
    "bwd_llm": "backward, loss -> projector input (LLM + projector)",
    "bwd_tower": "backward, tower (from the tower output's gradient to the end)",
    "optim": "optimizer step + zero_grad",
    "step": "whole step (sum of the above)",
}


def _say(msg: str) -> None:
    print(f"[bench_train] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- one timed step
def split_step(
    model: Any,
    batch: dict[str, Any],
    opt: Any,
    sync: Callable[[], None],
    amp: Callable[[], Any] = contextlib.nullcontext,
) -> dict[str, float]:
    """One training step with ``model.forward``'s computation done part by part; seconds per phase.

    ``sync`` runs before every clock read (``torch.cuda.synchronize`` on a GPU)."""
    import torch

    from llava_wb.data.conversation import IGNORE_INDEX

    def now() -> float:
        sync()
        return time.perf_counter()

    t: dict[str, float] = {}
    marks = [now()]

    def lap(phase: str) -> None:
        marks.append(now())
        t[phase] = marks[-1] - marks[-2]

    with amp():
        tower, pv = model.vision_tower, batch.get("pixel_values")
        n_img = 0 if pv is None else int(pv.shape[0])
        if pv is None:  # as LlavaWBForCausalLM.embed_inputs in training: one blank image, weight 0
            pv = torch.zeros(1, 3, tower.image_size, tower.image_size, device=batch["input_ids"].device)
        feats = tower(pv)
        lap("tower_fwd")
        k = tower.num_prefix_tokens
        reduced = model.reducer(feats[:, k:], grid=model.image_grid).tokens
        tokens = torch.cat([feats[:, :k], reduced], dim=1) if k else reduced
        visual = model.projector(tokens.to(next(model.projector.parameters()).dtype))
        assert visual.shape[1] == model.tokens_per_image
        lap("proj_fwd")
        ids, am = batch["input_ids"], batch["attention_mask"]
        mask = model.check_placeholders(ids, n_img, batch.get("image_counts"))
        emb = model.get_input_embeddings()(ids)
        if n_img:
            emb = emb.masked_scatter(mask.unsqueeze(-1), visual.to(emb.dtype))
        else:
            emb = emb + 0.0 * visual.sum().to(emb.dtype)
        labels = batch["labels"].masked_fill(mask, IGNORE_INDEX)
        pos = (am.long().cumsum(-1) - 1).clamp_min(0)
        loss = model.language_model(inputs_embeds=emb, attention_mask=am, position_ids=pos, labels=labels).loss
    lap("llm_fwd")
    reached: list[float] = []
    if feats.requires_grad:  # the tower trains: note when its output's gradient is complete
        feats.register_hook(lambda grad: reached.append(now()))
    loss.backward()
    end = now()
    t["bwd_llm"] = (reached[0] if reached else end) - marks[-1]
    t["bwd_tower"] = end - reached[0] if reached else 0.0
    opt.step()
    opt.zero_grad(set_to_none=True)
    t["optim"] = now() - end
    t["loss"] = float(loss.detach())
    return t


def _counts(batch: dict[str, Any], tokens_per_image: int) -> dict[str, float]:
    pv = batch.get("pixel_values")
    return {
        "samples": float(batch["input_ids"].shape[0]),
        "llm_tokens": float(batch["attention_mask"].sum()),
        "visual_tokens": float(0 if pv is None else pv.shape[0] * tokens_per_image),
    }


def summarize(steps: list[dict[str, float]]) -> dict[str, Any]:
    """Median ms per phase over steps; rates over the summed step time of all steps."""
    for s in steps:
        s["step"] = sum(s.get(p, 0.0) for p in PHASES if p != "step")
    total = sum(s["step"] for s in steps)
    out = {
        "steps": len(steps),
        "median_ms": {p: 1e3 * statistics.median(s.get(p, 0.0) for s in steps) for p in PHASES},
        "samples_per_s": sum(s["samples"] for s in steps) / total,
        "llm_tokens_per_s": sum(s["llm_tokens"] for s in steps) / total,
        "visual_tokens_per_sample": sum(s["visual_tokens"] for s in steps) / sum(s["samples"] for s in steps),
        "per_step": steps,
    }
    out["p90_step_ms"] = 1e3 * sorted(s["step"] for s in steps)[int(0.9 * (len(steps) - 1))]
    return out


# ----------------------------------------------------------------------------- (1) CPU, demo config
def prepare_demo(quick: bool, cache: str) -> tuple[str, str, str]:
    """Synthetic instruct shards (demo generator defaults: 64 px PNG), their tokenizer and an untrained
    tower of the demo's shape, cached (nothing read from ``runs/demo``)."""
    from benchmarks.fixtures import _cached
    from data_tools.convert_to_wds import convert
    from data_tools.make_synthetic import GENERATOR_VERSION, generate
    from llava_wb.tokenizer import build_demo_tokenizer, demo_corpus
    from recipes.chain import save_untrained_tower

    n, shard = (160, 40) if quick else (2400, 300)
    params = {"n": n, "shard": shard, "generator": GENERATOR_VERSION, "seed": 0}
    root = Path(cache) / f"train-synth-n{n}"

    def build(folder: Path) -> dict[str, Any]:
        data = generate(folder / "data", n_pretrain=0, n_instruct=n, n_heldout=0, seed=0, progress=False)
        convert(
            [data["files"]["instruct"]],
            [data["media_root"]],
            folder / "shards",
            shard_size=shard,
            workers=2,
            progress=False,
        )
        records = json.loads(Path(data["files"]["instruct"]).read_text(encoding="utf-8"))
        build_demo_tokenizer(demo_corpus(records=records)).save_pretrained(str(folder / "tokenizer"))
        return {"records": n}

    _cached(root, params, build)
    tower = Path(cache) / "demo-tower-untrained"  # the demo tower's shape; its weights do not change a step's time
    _cached(tower, {"config": "demo_tower.yaml", "seed": 0}, lambda folder: {"path": str(save_untrained_tower(folder))})
    return str(root / "shards"), str(root / "tokenizer"), str(tower)


def measure_cpu(quick: bool, cache: str, config: str, warmup: int, steps: int, threads: list[int]) -> dict[str, Any]:
    """Part (1), once per torch thread count: streaming steps, then the same batches from memory."""
    import torch

    from benchmarks.fixtures import load_tokenizer
    from llava_wb.data.loader import build_train_loader
    from llava_wb.model import build_model
    from llava_wb.train.config import load_config
    from llava_wb.train.stages import apply_stage, param_groups

    shards, tok_dir, tower = prepare_demo(quick, cache)
    cfg = load_config(
        config,
        [
            f"tokenizer={tok_dir}",
            f"data.sources=[{shards}]",
            f"model.vision.path={tower}",
            "model.audio.path=null",  # an untrained audio tower of the demo's shape, frozen like the demo's
            "train.init_from=null",
            # the step split reads padded batches (attention_mask); packing is bench_packing's subject
            "data.packing=null",
            "data.batch_size=16",
        ],
    )
    tok = load_tokenizer(tok_dir)
    out: dict[str, Any] = {
        "run": True,
        "measured_on": machine_line(machine_info()),
        "config": config,
        "batch_size": cfg.data.batch_size,
        "num_workers": cfg.data.num_workers,
        "warmup": warmup,
        "default_threads": torch.get_num_threads(),
        "runs": {},
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset"),
    }
    for n in dict.fromkeys(t or torch.get_num_threads() for t in threads):
        torch.set_num_threads(n)
        torch.manual_seed(0)
        model = build_model(cfg.model, tok).train()
        out["trainable_parameters"] = apply_stage(model, cfg)
        try:  # the HF Trainer's default optimizer (adamw_torch_fused); plain AdamW where fused is missing
            opt = torch.optim.AdamW(param_groups(model, cfg.train, set()), fused=True)
        except (RuntimeError, TypeError):
            opt = torch.optim.AdamW(param_groups(model, cfg.train, set()))
        out["optimizer"] = type(opt).__name__ + (" (fused)" if opt.defaults.get("fused") else "")
        tpi = out["tokens_per_image"] = model.tokens_per_image
        loader = build_train_loader(cfg.data, tok, media_tokens={"image": tpi})
        kept, streamed, load0 = [], [], os.getloadavg()
        _say(
            f"CPU: {n} torch thread(s), batch {cfg.data.batch_size}, {cfg.data.num_workers} workers, "
            f"{warmup} warm-up + {steps} steps"
        )
        with CpuMeter() as meter:
            it = iter(loader)
            for i in range(warmup + steps):
                t0 = time.perf_counter()
                try:
                    batch = next(it)
                except StopIteration:  # epoch end: the next epoch starts fresh workers
                    it = iter(loader)
                    batch = next(it)
                wait = time.perf_counter() - t0
                t = split_step(model, batch, opt, lambda: None)
                if i >= warmup:
                    streamed.append({"data_wait": wait, **t, **_counts(batch, tpi)})
                    kept.append(batch)
            it.close()
        replay = [{"data_wait": 0.0, **split_step(model, b, opt, lambda: None), **_counts(b, tpi)} for b in kept]
        out["runs"][str(n)] = {
            "torch_threads": n,
            "other_share": meter.other_share,
            "loadavg_before": load0,
            "loadavg_after": os.getloadavg(),
            "streaming": summarize(streamed),
            "in_memory": summarize(replay),
        }
    torch.set_num_threads(out["default_threads"])
    return out


# ----------------------------------------------------------------------------- report
def sections(raw: dict[str, Any], machine: dict[str, Any]) -> list[Section]:
    out, cpu, gpu = [], raw["cpu"], raw["gpu"]
    if not cpu["run"]:
        out.append(Section("(1) CPU, demo config", "Not measured.", ["part", "status"], [["(1)", cpu["reason"]]]))
    else:
        runs = list(cpu["runs"].values())
        head, rows = ["phase"], [[PHASES[p]] for p in PHASES]
        for r in runs:
            n, s, m = r["torch_threads"], r["streaming"]["median_ms"], r["in_memory"]["median_ms"]
            head += [f"streaming, {n} thr (ms)", "share", f"in memory, {n} thr (ms)"]
            for row, p in zip(rows, PHASES):
                row += [s[p], f"{s[p] / s['step']:.0%}", m[p]]
        out.append(
            Section(
                "(1a) CPU, demo config: where a training step's time goes",
                f"`{Path(cpu['config']).name}` model and data settings (tower trained, {cpu['tokens_per_image']} visual "
                f"tokens per image), batch {cpu['batch_size']}, {cpu['num_workers']} loader workers, optimizer "
                f"{cpu['optimizer']}, at torch's default thread count ({cpu['default_threads']}, what training uses) and "
                f"at 1 thread; OMP_WAIT_POLICY {cpu.get('omp_wait_policy')}. Median milliseconds per phase over {runs[0]['streaming']['steps']} steps after "
                f"{cpu['warmup']} warm-up steps; the last row is the median of per-step sums, so the phase medians need "
                "not add up to it. Data wait: time `next()` on the streaming loader blocked (its workers prefetch). "
                "Tower, reducer + projector and LLM forward are timed separately (`LlavaWBForCausalLM.forward`'s "
                "computation, part by part; same loss and gradients); backward is one `loss.backward()`, split where "
                "the gradient reaches the tower output (a tensor hook): before it LLM + projector, after it the tower. "
                "'In memory' replays the same batches with no loader running: the difference is what the dataloader "
                "workers cost the compute on this machine.",
                head,
                rows,
                kept_note(cpu),
            )
        )
        rows = [
            [
                f"{r['torch_threads']} thr, {label}",
                x["samples_per_s"],
                x["llm_tokens_per_s"],
                x["visual_tokens_per_sample"],
                x["median_ms"]["step"],
                x["p90_step_ms"],
                f"{r['other_share']:.0%}" if label == "streaming" else "",
                f"{r['loadavg_before'][0]:.1f} / {r['loadavg_after'][0]:.1f}" if label == "streaming" else "",
            ]
            for r in runs
            for label, x in (("streaming", r["streaming"]), ("in memory", r["in_memory"]))
        ]
        out.append(
            Section(
                "(1b) CPU, demo config: throughput",
                "Samples and LLM tokens (attention-mask sum: text + visual, padding excluded) per second of summed "
                "step time over the measured steps; visual tokens per sample = images x tokens per image / samples. "
                "'Others' CPU': share of the machine's cores that other processes used during the streaming run; "
                "'load': 1-minute load average before / after it. Colleagues' jobs share this machine, so absolute "
                "times are noisy; medians damp single slow steps, p90 shows the tail.",
                [
                    "run",
                    "samples/s",
                    "LLM tokens/s",
                    "visual tokens/sample",
                    "median step (ms)",
                    "p90 step (ms)",
                    "others' CPU",
                    "load",
                ],
                rows,
                [f"Trainable parameters: {cpu['trainable_parameters']}."],
            )
        )
    out.append(gpu_section(gpu))
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_train", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes for smoke tests (numbers meaningless)")
    p.add_argument("--out", default=None, help="results folder (default benchmarks/results; --quick: runs/bench_quick)")
    p.add_argument("--cache", default=str(DEFAULT_CACHE), help="cache for generated inputs (default runs/bench_cache)")
    p.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"), help="run config of part (1)")
    p.add_argument("--steps", type=int, default=None, help="measured CPU steps (default 40; --quick 3)")
    p.add_argument("--warmup", type=int, default=None, help="CPU warm-up steps (default 5; --quick 1)")
    p.add_argument(
        "--threads",
        default=None,
        help="comma list of torch thread counts for part (1) (default: torch's default, as training uses, then 1)",
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument("--gpu-only", action="store_true", help="only part (2); keeps the CPU section of <out>/train.json")
    g.add_argument("--cpu-only", action="store_true", help="only part (1)")
    p.add_argument("--gpu-precision", default="amp,bf16", help="comma list of amp (bf16 autocast), bf16 (bf16 weights)")
    p.add_argument("--gpu-batch", type=int, default=None, help="GPU batch size (default 16)")
    p.add_argument("--grad-ckpt", action="store_true", help="gradient checkpointing in the LLM (GPU part)")
    p.add_argument(
        "--peak-tflops", type=float, default=None, help="peak bf16 TFLOP/s for MFU (default: by device name)"
    )
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, str]:
    args = build_parser().parse_args(argv)
    out = results_dir(args.out, args.quick)
    started, machine = time.perf_counter(), machine_info()
    raw: dict[str, Any] = {"quick": args.quick}
    previous = Path(out) / f"{NAME}.json"
    old = json.loads(previous.read_text(encoding="utf-8")) if previous.is_file() else {}
    old = {} if old.get("quick") or args.quick else old  # a quick run never mixes with real numbers
    if not args.gpu_only:
        raw["cpu"] = measure_cpu(
            args.quick,
            args.cache,
            args.config,
            args.warmup or (1 if args.quick else 5),
            args.steps or (3 if args.quick else 40),
            [int(x) for x in args.threads.split(",")] if args.threads else [0, 1],
        )
    if not args.cpu_only:
        raw["gpu"] = measure_gpu(
            split_step,
            quick=args.quick,
            grad_ckpt=args.grad_ckpt,
            peak_override=args.peak_tflops,
            precisions=[s.strip() for s in args.gpu_precision.split(",") if s.strip()],
            batch_size=args.gpu_batch,
        )
    for part in ("cpu", "gpu"):  # keep what this run did not measure (e.g. an earlier H100 run)
        now = raw.get(part) or {"run": False, "reason": f"not run (--{'gpu' if part == 'cpu' else 'cpu'}-only)"}
        raw[part] = {**old[part], "this_run": now["reason"]} if not now["run"] and old.get(part, {}).get("run") else now
    raw["total_seconds"] = time.perf_counter() - started
    intro = (
        "Time per training step, split into its parts, on this CPU machine with the demo config (1), and "
        "throughput and model FLOPs utilization of a realistic LLaVA shape on a GPU (2). A part that a run "
        "does not measure (`--gpu-only`, `--cpu-only`, no GPU) keeps its earlier result from `train.json`, "
        "with a note saying where that was measured."
    )
    if args.quick:
        intro = "QUICK MODE: tiny sizes, numbers meaningless.\n\n" + intro
    paths = write_results(
        out,
        NAME,
        title="Training step benchmark",
        intro=intro,
        sections=sections(raw, machine),
        raw=raw,
        machine=machine,
    )
    _say(f"done in {raw['total_seconds']:.0f} s: {paths['md']}")
    print(paths["md"])
    return paths


if __name__ == "__main__":
    main()
