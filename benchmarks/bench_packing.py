"""Sequence packing benchmark: padding, CPU training throughput and GPU throughput + MFU, packed vs padded.

    python -m benchmarks.bench_packing [--quick] [--out benchmarks/results] [--gpu-only] [--threads N]

Writes ``<out>/packing.md`` and ``<out>/packing.json`` (``--quick``: tiny sizes, default out
``runs/bench_quick``; the numbers mean nothing there).

(a) Share of the LLM positions that are padding, packed (``llava_wb.data.packing``, each strategy)
    vs padded (``llava_wb.data.collate.Collator``, right padding to the batch's longest sample):
    (i) the demo mix: synthetic shards of ``recipes.demo.DEMO_MIX`` (images, videos, audio clips,
    text) through the converter, read by the real ``build_train_loader`` with ``configs/demo.yaml``'s
    data settings and the demo model's tokens per item (``media_token_counts``); one exact epoch
    each way, so both see the same samples. (ii) A LLaVA-1.5-like mix: lengths only (576 visual
    tokens per image plus text lengths drawn per component of the 665K mix, ``LLAVA15_MIX``), padded
    batches of 16 vs rows of 2048 from ``packed_batches`` (the loader's own packing code).
(b) CPU: real (non-padding) LLM tokens per second of the demo model (``demo.yaml``'s model section,
    random tower of the demo's shape, finetune stage: projector + LLM + audio tower train) on the
    same tokenized samples collated both ways; forward + backward + AdamW step; interleaved repeats,
    medians. (i) fp32 with the towers computing in every step; (ii) as the demo's stage 2 trains from its
    second epoch on: tower features from a warm feature cache, ``train.bf16`` and ``train.threads`` as
    the run resolves them here (``llava_wb.train.run``).
(c) GPU (CUDA only; ``--gpu-only`` runs only this part): ``train_shapes.REALISTIC`` (CLIP ViT-L/14-336,
    frozen, + LLaMA-1.1B), bf16 autocast, on LLaVA-1.5-like samples built in memory, padded vs packed,
    with SDPA, flex_attention and flash_attention_2 (skipped with a note where the ``flash_attn``
    package is missing): real tokens/s and MFU. ``--quick`` runs this code path at
    ``train_shapes.TINY`` on the CPU when there is no GPU (SDPA only: flex_attention has no backward
    on the CPU).

A part not measured in a run (no GPU, ``--gpu-only``) keeps its earlier result from
``<out>/packing.json`` when there is one, marked as such.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from benchmarks.common import (
    DEFAULT_CACHE,
    ROOT,
    Section,
    Timing,
    machine_info,
    machine_line,
    repeat_timed,
    results_dir,
    write_results,
)
from benchmarks.packing_shapes import (
    LLAVA15_MIX,
    LLAVA_BATCH,
    LLAVA_MAX_LEN,
    LLAVA_VISUAL,
    gpu_section,
    kept,
    llava_lengths,
    measure_gpu,
    model_inputs,
    offline_rows,
    pack_rows,
    pct,
    real_tokens,
    say,
)

NAME = "packing"
STRATEGIES = ("best_fit", "first_fit", "max_fill")
B_STRATEGIES = ("best_fit", "max_fill")  # (b): first_fit packs about as full as best_fit (a) and costs the same
GPU_HINT = "run `python -m benchmarks.bench_packing --gpu-only` on a lent GPU"
# The demo's packed layouts (max_tokens, rows per batch): about 2048 positions per batch, the real tokens
# of a padded batch of 32 demo samples (~48 tokens each): rows of 512, of 256 (stage 1's) and of 96 (stage 2's), just
# longer than the longest demo sample (80 tokens); a config's own row length is added (demo_layouts).
BATCH_POSITIONS = 2048
DEMO_LAYOUTS = ((512, 4), (256, 8), (96, 21))
PADDED_BATCH = 32  # the padded baseline: the demo's batch of samples before it packed
LLAVA_ROW_LENGTHS = (2048, 4096, 8192)  # packed row lengths of (a)(ii): LLaVA-1.5's 2048, then longer rows


@dataclasses.dataclass(frozen=True)
class Sizes:
    n_instruct: int = 2000  # demo-mix instruction records (+ captions, weights 4 : 1 as in demo.yaml)
    n_pretrain: int = 500
    shard_size: int = 250
    cpu_samples: int = 256  # (b): the same samples, 8 padded batches of 32
    repeats: int = 7  # (b): interleaved timed passes per layout
    mix_samples: int = 20_000  # (a)(ii)
    gpu_samples: int = 96  # (c): 6 padded batches of 16
    gpu_passes: int = 3  # (c): interleaved timed passes per layout and attention


FULL = Sizes()
QUICK = Sizes(n_instruct=96, n_pretrain=24, shard_size=30, cpu_samples=40, repeats=1, mix_samples=600, gpu_samples=6)


# ----------------------------------------------------------------------------- demo data
def prepare_demo(sizes: Sizes, cache: str) -> dict[str, str]:
    """Demo-mix shards (instruct + captions), their tokenizer and an untrained tower of the demo's shape."""
    from benchmarks.fixtures import _cached
    from data_tools.convert_to_wds import convert
    from data_tools.journal import CONVERTER_VERSION
    from data_tools.make_synthetic import GENERATOR_VERSION, generate
    from llava_wb.tokenizer import build_demo_tokenizer, demo_corpus
    from recipes.chain import save_untrained_tower
    from recipes.demo import DEMO_MIX

    params = {
        "n_instruct": sizes.n_instruct,
        "n_pretrain": sizes.n_pretrain,
        "shard": sizes.shard_size,
        "mix": DEMO_MIX,
        "generator": GENERATOR_VERSION,
        "converter": CONVERTER_VERSION,
        "seed": 0,
    }
    root = Path(cache) / f"packing-demo-mix-n{sizes.n_instruct}"

    def build(folder: Path) -> dict[str, Any]:
        data = generate(
            folder / "data",
            n_pretrain=sizes.n_pretrain,
            n_instruct=sizes.n_instruct,
            n_heldout=0,
            seed=0,
            mix=DEMO_MIX,
            progress=False,
        )
        records = []
        for split in ("instruct", "pretrain"):
            convert(
                [data["files"][split]],
                [data["media_root"]],
                folder / "shards" / split,
                shard_size=sizes.shard_size,
                workers=2,
                progress=False,
            )
            records += json.loads(Path(data["files"][split]).read_text(encoding="utf-8"))
        build_demo_tokenizer(demo_corpus(records=records)).save_pretrained(str(folder / "tokenizer"))
        return {"counts": data["counts"]}

    _cached(root, params, build)
    tower = Path(cache) / "demo-tower-untrained"  # shared with bench_train
    _cached(tower, {"config": "demo_tower.yaml", "seed": 0}, lambda folder: {"path": str(save_untrained_tower(folder))})
    return {
        "instruct": str(root / "shards" / "instruct"),
        "pretrain": str(root / "shards" / "pretrain"),
        "tokenizer": str(root / "tokenizer"),
        "tower": str(tower),
    }


def demo_overrides(paths: dict[str, str]) -> list[str]:
    """Overrides that point a demo config at ``prepare_demo``'s shards, tokenizer and untrained towers."""
    return [
        f"tokenizer={paths['tokenizer']}",
        f"data.sources.0.path={paths['instruct']}",
        f"data.sources.1.path={paths['pretrain']}",
        f"model.vision.path={paths['tower']}",
        "model.audio.path=null",  # an untrained audio tower of the demo's shape, frozen like the demo's
        "train.init_from=null",
    ]


def demo_layouts(packing: Any) -> tuple[tuple[int, int], ...]:
    """(a)(i) and (b)'s packed layouts: ``DEMO_LAYOUTS`` and the run config's own row length, each with
    about ``BATCH_POSITIONS`` LLM positions per batch."""
    if packing is None or packing.max_tokens in dict(DEMO_LAYOUTS):
        return DEMO_LAYOUTS
    return (*DEMO_LAYOUTS, (packing.max_tokens, max(1, round(BATCH_POSITIONS / packing.max_tokens))))


def demo_setup(sizes: Sizes, cache: str, config: str) -> tuple[Any, Any, dict[str, int], Any, tuple]:
    """The demo run config on the benchmark's shards (one exact epoch), tokenizer, tokens per item, model
    and the packed layouts to compare (``demo_layouts``)."""
    import torch

    from benchmarks.fixtures import load_tokenizer
    from llava_wb.model import build_model
    from llava_wb.model.build import media_token_counts
    from llava_wb.train.config import load_config

    paths = prepare_demo(sizes, cache)
    cfg = load_config(
        config,
        [*demo_overrides(paths), "data.epoch_mode=exact"],  # one pass over the same samples for every layout
    )
    layouts = demo_layouts(cfg.data.packing)
    # the padded baseline: the demo's batch of 32 samples before it packed (demo.yaml packs now)
    cfg.data = dataclasses.replace(cfg.data, packing=None, batch_size=PADDED_BATCH)
    counts = media_token_counts(cfg.model)
    media_tokens = {k: v for k, v in dataclasses.asdict(counts).items() if k in ("image", "video", "audio") and v}
    tok = load_tokenizer(paths["tokenizer"])
    torch.manual_seed(0)
    model = build_model(cfg.model, tok)
    if model.media_tokens != media_tokens:
        raise RuntimeError(f"model tokens per item {model.media_tokens} != config prediction {media_tokens}")
    return cfg, tok, media_tokens, model, layouts


# ----------------------------------------------------------------------------- (a)(i) demo padding
def part_a_demo(
    cfg: Any, tok: Any, media_tokens: dict[str, int], model: Any, demo_rows: Sequence[tuple[int, int]]
) -> dict[str, Any]:
    """One exact epoch through ``build_train_loader``: padded (demo batch) and packed (both strategies)."""
    from llava_wb.data.config import PackingConfig
    from llava_wb.data.loader import build_train_loader
    from llava_wb.data.packing import padding_fraction
    from llava_wb.model.media import media_settings

    media = media_settings(model, cfg.data)
    layouts = {f"padded, batch {cfg.data.batch_size}": cfg.data}
    for max_tokens, rows in demo_rows:
        for s in STRATEGIES:
            packing = PackingConfig(max_tokens=max_tokens, strategy=s)
            # max_length may shrink to the row: no demo sample is longer than the shortest row (80 tokens), so
            # every layout sees the same samples (the smoke test checks their real tokens are equal)
            layouts[f"packed {s}, {rows} rows x {max_tokens}"] = dataclasses.replace(
                cfg.data, packing=packing, batch_size=rows, max_length=min(cfg.data.max_length, max_tokens)
            )
    out: dict[str, Any] = {"media_tokens": media_tokens, "layouts": {}}
    for name, data_cfg in layouts.items():
        t0, fractions, samples, real, positions = time.perf_counter(), [], 0, 0, 0
        for batch in build_train_loader(data_cfg, tok, media_tokens=media_tokens, media=media):
            fractions.append(padding_fraction(batch))
            samples += int(batch["samples_per_row"].sum()) if "samples_per_row" in batch else len(batch["input_ids"])
            real += real_tokens(batch)
            positions += batch["input_ids"].numel()
        out["layouts"][name] = {
            "batches": len(fractions),
            "samples": samples,
            "real_tokens": real,
            "positions": positions,
            "padding": 1 - real / positions,
            "mean_batch_padding": statistics.mean(fractions),
            "seconds": time.perf_counter() - t0,
        }
        say(f"(a)(i) {name}: padding {1 - real / positions:.1%} over {len(fractions)} batches")
    return out


def padded_positions(lengths: Sequence[int], batch: int) -> int:
    """LLM positions of consecutive batches of ``batch`` samples, each padded to its longest."""
    chunks = [lengths[i : i + batch] for i in range(0, len(lengths), batch)]
    return sum(len(c) * max(c) for c in chunks)


def part_a_llava(sizes: Sizes) -> dict[str, Any]:
    drawn = llava_lengths(sizes.mix_samples)
    lengths = [n for n, _ in drawn]
    total = sum(lengths)
    mean = total / len(lengths)
    layouts = {
        f"padded, batch {LLAVA_BATCH}": {
            "positions": padded_positions(lengths, LLAVA_BATCH),
            "batches": -(-len(lengths) // LLAVA_BATCH),
        }
    }
    stream = [{"id": str(i), "input_ids": range(n)} for i, n in enumerate(lengths)]
    for max_tokens in LLAVA_ROW_LENGTHS:
        rows = max(1, round(LLAVA_BATCH * mean / max_tokens))  # about a padded batch's real tokens
        for s in STRATEGIES:
            batches = pack_rows(stream, max_tokens, rows, s)
            pos = sum(len(b) * max(sum(len(x["input_ids"]) for x in row) for row in b) for b in batches)
            layouts[f"packed {s}, {rows} rows x {max_tokens}"] = {"positions": pos, "batches": len(batches)}
        if max_tokens == LLAVA_MAX_LEN:  # the same positions per batch as one row: flash-attention's flattened layout
            flat = LLAVA_MAX_LEN * rows
            batches = pack_rows(stream, flat, 1, "best_fit")
            pos = sum(sum(len(x["input_ids"]) for x in b[0]) for b in batches)
            fill = pos / (len(batches) * flat)  # a flattened batch is its row: nothing to pad, its size varies
            name = f"packed best_fit, 1 row x {flat} (flattened; rows {fill:.1%} full on average)"
            layouts[name] = {"positions": pos, "batches": len(batches)}
        packed = offline_rows(lengths, max_tokens)  # the reference: every sample known in advance
        chunks = [packed[i : i + rows] for i in range(0, len(packed), rows)]
        layouts[f"reference: offline best-fit decreasing, {rows} rows x {max_tokens}"] = {
            "positions": sum(len(c) * max(map(sum, c)) for c in chunks),
            "batches": len(chunks),
        }
    for v in layouts.values():
        v["padding"] = 1 - total / v["positions"]
        v["samples_per_batch"] = len(lengths) / v["batches"]
    image_share = sum(img for _, img in drawn) / len(drawn)
    return {
        "samples": len(lengths),
        "real_tokens": total,
        "mean_length": mean,
        "median_length": statistics.median(lengths),
        "at_cap": sum(n == LLAVA_MAX_LEN for n in lengths) / len(lengths),
        "image_share": image_share,
        "layouts": layouts,
    }


# ----------------------------------------------------------------------------- (b) CPU throughput
def demo_samples(cfg: Any, tok: Any, media_tokens: dict[str, int], model: Any, n: int) -> list[dict[str, Any]]:
    """The first ``n`` tokenized samples of the demo stream (``TrainSample``, as ``build_train_loader``)."""
    from llava_wb.data.loader import build_loader
    from llava_wb.data.pipeline import TrainSample
    from llava_wb.data.sources import source_name
    from llava_wb.model.media import media_settings

    d = cfg.data
    process = TrainSample(
        tok,
        template=d.template,
        max_length=d.max_length,
        media=media_settings(model, d),
        media_tokens=media_tokens,
        source_templates={source_name(s): s.template for s in d.sources if s.template},
    )
    out: list[dict[str, Any]] = []
    for batch in build_loader(dataclasses.replace(d, num_workers=0), process=process):
        out += batch["samples"]
        if len(out) >= n:
            break
    return out[:n]


def part_b(
    cfg: Any,
    tok: Any,
    model: Any,
    samples: list[dict[str, Any]],
    repeats: int,
    demo_rows: Sequence[tuple[int, int]],
    as_trained: bool = False,
) -> dict[str, Any]:
    """Forward + backward + AdamW step over ``samples`` padded and packed (``demo_rows``), interleaved repeats.
    ``as_trained``: as the demo's stage 2 runs, from its second epoch on: the towers' features served by a warm
    feature cache (``train.feature_cache_mb``), ``train.bf16`` as resolved here (CPU bf16: attention in fp32),
    ``train.threads`` beside ``data.num_workers`` loader workers. Otherwise the towers compute in fp32 in every
    step (a run without the cache, or its first epoch without prefetch)."""
    import contextlib

    import torch

    from llava_wb.data.collate import Collator
    from llava_wb.data.packing import PackedCollator
    from llava_wb.train.config import ConfigError
    from llava_wb.train.dist import torch_threads
    from llava_wb.train.run import apply_precision, enable_feature_caches
    from llava_wb.train.stages import apply_stage, param_groups

    bs = cfg.data.batch_size
    padded = [Collator(pad_token_id=tok.pad_token_id)(samples[i : i + bs]) for i in range(0, len(samples), bs)]
    layouts = {f"padded, batch {bs}": padded}
    for max_tokens, rows in demo_rows:
        for s in B_STRATEGIES:
            batches = pack_rows(samples, max_tokens, rows, s)
            layouts[f"packed {s}, {rows} rows x {max_tokens}"] = [PackedCollator(tok.pad_token_id)(b) for b in batches]
    model.train()
    trainable = apply_stage(model, cfg)
    bf16, fp32_attention, cache = False, [], None
    if as_trained:
        cache = enable_feature_caches(cfg, model)  # ConfigError: main says why
        if cache is None:
            raise ConfigError("the run config has no feature cache (train.feature_cache_mb: 0)")
        bf16, fp32_attention = apply_precision(cfg.train, model)  # as a run: CPU bf16 keeps attention in fp32
    try:  # the HF Trainer's default optimizer (adamw_torch_fused), as bench_train
        opt = torch.optim.AdamW(param_groups(model, cfg.train, set()), fused=True)
    except (RuntimeError, TypeError):
        opt = torch.optim.AdamW(param_groups(model, cfg.train, set()))

    llm = model.language_model  # the LLM alone: its own optimizer, on inputs made once per batch
    llm_opt = torch.optim.AdamW([p for p in llm.parameters() if p.requires_grad], fused=opt.defaults.get("fused"))

    def autocast() -> Any:
        return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def step(batch: dict[str, Any]) -> None:
        with autocast():
            loss = model(**model_inputs(batch)).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def llm_step(inputs: dict[str, Any]) -> None:
        with autocast():
            loss = llm(**inputs, use_cache=False).loss
        loss.backward()
        llm_opt.step()
        llm_opt.zero_grad(set_to_none=True)

    clock = ForwardClock([m for m in (model.vision_tower, getattr(model, "audio_tower", None)) if m is not None])
    towers: dict[str, list[float]] = {name: [] for name in layouts}

    real = {name: float(sum(real_tokens(b) for b in batches)) for name, batches in layouts.items()}

    def one_pass(name: str) -> float:
        clock.seconds = 0.0
        for b in layouts[name]:
            step(b)
        towers[name].append(clock.seconds)
        return real[name]

    def llm_pass(name: str) -> float:
        for inputs in llm_inputs[name]:
            llm_step(inputs)
        return real[name]

    threads = torch_threads(cfg.train.threads, cfg.data.num_workers) if as_trained else contextlib.nullcontext(None)
    with threads as n_threads:
        if cache is not None:  # the first epoch: every image, clip and audio clip into the caches
            for b in padded:
                step(b)
        for batches in layouts.values():  # warm-up: one step of each layout
            step(batches[0])
        with torch.no_grad(), autocast():  # what the LLM computes on (media spliced in), made once per batch
            llm_inputs = {name: [model.llm_inputs(**model_inputs(b)) for b in bs] for name, bs in layouts.items()}
        for inputs in llm_inputs.values():
            llm_step(inputs[0])
        caches = [c for c in (cache, getattr(getattr(model, "audio_tower", None), "feature_cache", None)) if c]
        warm_misses = sum(c.summary()["misses"] for c in caches)
        timings = {name: Timing() for name in layouts}
        llm_timings = {name: Timing() for name in layouts}
        for r in range(repeats):  # interleaved: padded, packed, packed, padded, packed, packed, ...
            for name in layouts:  # each layout's whole step, then the LLM alone on the same batches
                repeat_timed(lambda name=name: one_pass(name), 1, timing=timings[name])
                repeat_timed(lambda name=name: llm_pass(name), 1, timing=llm_timings[name])
            say(
                f"(b){' as trained' if as_trained else ''} repeat {r + 1}/{repeats}: "
                + ", ".join(f"{n}: {t.rates[-1]:.0f} tok/s" for n, t in timings.items())
            )
        n_threads = n_threads or torch.get_num_threads()
    clock.remove()
    out: dict[str, Any] = {
        "samples": len(samples),
        "torch_threads": n_threads,
        "optimizer": type(opt).__name__ + (" (fused)" if opt.defaults.get("fused") else ""),
        "trainable_parameters": trainable,
        "as_trained": as_trained,
        "bf16": bf16,
        "fp32_attention": fp32_attention,
        "feature_cache": cache.summary() if cache is not None else None,
        "audio_feature_cache": caches[1].summary() if len(caches) > 1 else None,
        # tower features (vision and audio) computed during the timed passes (0: all came from the caches)
        "timed_misses": sum(c.summary()["misses"] for c in caches) - warm_misses if caches else None,
        "layouts": {},
    }
    for name, batches in layouts.items():
        real = sum(real_tokens(b) for b in batches)
        positions = sum(b["input_ids"].numel() for b in batches)
        out["layouts"][name] = {
            "batches": len(batches),
            "real_tokens": real,
            "positions": positions,
            "padding": 1 - real / positions,
            # entries of the attention score matrices (rows x length^2 per batch): SDPA with a mask computes all
            "score_entries": sum(b["input_ids"].shape[0] * b["input_ids"].shape[1] ** 2 for b in batches),
            "timing": timings[name].as_dict(),
            "towers_forward_s": towers[name],
            "median_towers_forward_s": statistics.median(towers[name]),
            # the pass without the towers' forward (the same media in every layout): LLM + projector
            # forward, the whole backward, the optimizer step
            "median_rest_s": statistics.median(s - t for s, t in zip(timings[name].seconds, towers[name])),
            # the LLM alone (forward + backward + AdamW on its parameters) on the batches' llm_inputs: what
            # packing shrinks; the pass minus it is the per-sample work around the LLM (media, projector)
            "llm_timing": llm_timings[name].as_dict(),
            "median_llm_s": llm_timings[name].median,
        }
    base = out["layouts"][next(iter(layouts))]
    for v in list(out["layouts"].values())[1:]:
        v["ratio"] = v["timing"]["median_rate"] / base["timing"]["median_rate"]
        v["ratio_cpu"] = v["timing"]["median_cpu_rate"] / base["timing"]["median_cpu_rate"]
        v["ratio_rest"] = base["median_rest_s"] / v["median_rest_s"]
        v["ratio_llm"] = base["median_llm_s"] / v["median_llm_s"]
        # the ratio if a pass cost in proportion to its LLM positions (same real tokens both ways)
        v["ratio_positions"] = base["positions"] / v["positions"]
    return out


class ForwardClock:
    """Wall seconds spent inside the forward of ``modules`` (hooks; the modules must not nest)."""

    def __init__(self, modules: Sequence[Any]):
        self.seconds, self._start = 0.0, 0.0
        self._hooks = [
            h for m in modules for h in (m.register_forward_pre_hook(self._enter), m.register_forward_hook(self._exit))
        ]

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()

    def _enter(self, *args: Any) -> None:
        self._start = time.perf_counter()

    def _exit(self, *args: Any) -> None:
        self.seconds += time.perf_counter() - self._start


# ----------------------------------------------------------------------------- report
def sections(raw: dict[str, Any]) -> list[Section]:
    return [
        demo_padding_section(raw["a_demo"]),
        llava_padding_section(raw.get("a_llava")),
        cpu_section(raw["b"]),
        cpu_section(raw.get("b_trained"), as_trained=True),
        gpu_section(raw["c"]),
    ]


def _not_run(title: str, part: dict[str, Any]) -> Section:
    return Section(title, "Not measured in this run.", ["part", "status"], [[title.split(" ")[0], part["reason"]]])


def demo_padding_section(a: dict[str, Any]) -> Section:
    title = "(a)(i) Padding, demo mix (real loader)"
    if not a.get("run"):
        return _not_run(title, a)
    base = next(iter(a["layouts"].values()))
    rows = [
        [
            k,
            v["batches"],
            v["samples"],
            v["real_tokens"],
            v["positions"],
            pct(v["padding"]),
            pct(v["mean_batch_padding"]),
            f"{base['positions'] / v['positions']:.2f}x",
        ]
        for k, v in a["layouts"].items()
    ]
    best = min((v["padding"], k) for k, v in a["layouts"].items() if k.startswith("packed"))
    return Section(
        title,
        f"Synthetic shards of `recipes.demo.DEMO_MIX` (instruct {a['records']['instruct']} + captions "
        f"{a['records']['pretrain']} records, weights 4 : 1 as in `demo.yaml`), read by `build_train_loader` with "
        f"`configs/demo.yaml`'s data settings (template, max_length {a['max_length']}, {a['num_workers']} workers) "
        "for one exact epoch (`data.epoch_mode=exact`, so every layout sees the same samples; the demo trains "
        f"'balanced'). Tokens per item from `media_token_counts` on the demo config: {a['media_tokens']}. Padded: the "
        f"demo's batch of {a['batch_size']} samples, right-padded to the batch's longest. Packed: `data.packing` with "
        "buffer 256 and max_tokens x batch_size (rows) = 2048 positions per batch, about the real tokens of a padded "
        "batch (512 x 4: the suggested layout; 256 x 8: the demo's rows; 96 x 21: rows just longer than the longest "
        "demo sample, 80 tokens; and the config's own row length, data.packing.max_tokens, when it differs). "
        "Padding = 1 - real tokens / "
        "LLM positions over the epoch (each worker's last rows included); 'mean per batch' averages "
        "`padding_fraction(batch)`; 'fewer positions' = padded positions / this layout's.",
        [
            "layout",
            "batches",
            "samples",
            "real tokens",
            "LLM positions",
            "padding",
            "mean per batch",
            "fewer positions",
        ],
        rows,
        [f"Target: <= 3% padding packed. Lowest: {best[1]}, {pct(best[0])}."] + kept(a),
    )


def llava_padding_section(m: dict[str, Any] | None) -> Section:
    title = "(a)(ii) Padding, LLaVA-1.5-like mix (lengths only)"
    if not m:
        return _not_run(title, {"reason": "not run (--gpu-only)"})
    rows = [
        [k, v["batches"], f"{v['samples_per_batch']:.1f}", v["positions"], pct(v["padding"])]
        for k, v in m["layouts"].items()
    ]
    mix = "; ".join(
        f"{c[0]} {c[1]}K: {'576 + ' if c[2] else 'text only, '}{c[3]}-{c[4]} text tokens ({c[5]})" for c in LLAVA15_MIX
    )
    return Section(
        title,
        f"{m['samples']:,} sample lengths drawn from LLaVA-1.5's 665K instruction mix (Liu et al. 2023, \"Improved "
        'Baselines with Visual Instruction Tuning", Table 7; component weights = its record counts): '
        f"{LLAVA_VISUAL} visual tokens per image plus a text length uniform in a per-component range, capped at "
        f"{LLAVA_MAX_LEN} (LLaVA-1.5's model_max_length). The text ranges (vicuna_v1 template and system prompt "
        f"included) are OUR ESTIMATES from each source's format, not measured on the released JSON: {mix}. "
        f"Drawn: mean {m['mean_length']:.0f} tokens, median {m['median_length']:.0f}, {m['image_share']:.1%} with an "
        f"image, {m['at_cap']:.1%} at the cap. Padded: batches of {LLAVA_BATCH} in stream order (LLaVA-1.5's per-GPU "
        "batch, no length grouping), padded to the longest. Packed: `packed_batches` (the loader's packing code, "
        "buffer 256) with the rows per batch chosen for about a padded batch's real tokens; rows padded to the "
        "batch's longest row. Rows of 2048 are LLaVA-1.5's length; 4096 and 8192 show longer rows (max_tokens may "
        "exceed the per-sample max_length).",
        ["layout", "batches", "samples / batch", "LLM positions", "padding"],
        rows,
        [
            "Target: <= 3% padding packed. At rows of 2048 an image sample (576 + its text) fills 31-62% of a row: "
            "two rarely fill it and a third seldom fits, so the rows of one batch end at different lengths and the "
            "batch is padded to its longest. The 'reference' rows pack all the samples at once, longest first "
            "(best-fit decreasing over the whole epoch, which a streaming loader cannot do); consecutive reference "
            "rows then have about the same length, so its batches are hardly padded: the gap at 2048 is uneven rows "
            "within a batch. Longer rows (4096, 8192) hold more samples each and close it, and one row per batch "
            "(the 'flattened' layout of flash-attention's varlen kernels, transformers' DataCollatorWithFlattening) "
            "has nothing to pad to: each sample keeps max_length 2048 and only the row grows. With varlen attention "
            "(flash-attention 2, flex) a longer row costs no cross-sample attention; SDPA on the CPU computes the "
            "whole row x row score matrix, so there rows stay short (part (b)). max_fill fills the rest of each row "
            "with the set of pending samples that fills it the most: rows of 4096 and 8192 close completely; at "
            "2048 the rest of a row is often shorter than any pending image sample (576 + its text), so no "
            "streaming choice closes it."
        ],
    )


def around_budget(padding: float, around: float, target: float = 1.5) -> str:
    """How much work around the LLM (a fraction of the padded LLM's time) the whole step may carry and still
    gain ``target`` when the LLM alone gains r: the pass ratio (L + A) / (L / r + A) >= target needs
    A / L <= (1 - target / r) / (target - 1); r = 1 / (1 - padding) is packing without any padding."""
    best = 1 / (1 - padding)
    limit = (1 - target / best) / (target - 1)
    return (
        f" For the whole step to gain {target}x, that work may be at most {limit:.1%} of the padded LLM's time even "
        f"if packing left no padding at all (the LLM alone then gains 1 / (1 - {padding:.3f}) = {best:.2f}x); it is "
        f"{around:.1%} here."
    )


def cpu_section(b: dict[str, Any] | None, as_trained: bool = False) -> Section:
    title = (
        "(b)(ii) CPU training throughput as the demo trains: cached tower features, train.bf16 auto, its threads"
        if as_trained
        else "(b)(i) CPU training throughput, demo model, same samples, towers in the step (fp32)"
    )
    if not b or not b.get("run"):
        return _not_run(
            title, b or {"reason": "not in this results file (it predates (b)(ii): run bench_packing again)"}
        )
    rows = []
    for k, v in b["layouts"].items():
        t = v["timing"]
        rows.append(
            [
                k,
                v["batches"],
                v["real_tokens"],
                v["positions"],
                pct(v["padding"]),
                v["score_entries"] / 1e6,
                t["median_rate"],
                t["median_cpu_rate"],
                t["median_seconds"],
                v["median_towers_forward_s"],
                v["median_rest_s"],
                f"{v['ratio']:.2f}x" if "ratio" in v else "",
                f"{v['ratio_rest']:.2f}x" if "ratio_rest" in v else "",
                v.get("median_llm_s", ""),
                f"{v['ratio_llm']:.2f}x" if "ratio_llm" in v else "",
                f"{v['ratio_positions']:.2f}x" if "ratio_positions" in v else "",
                pct(t["median_other_share"]),
            ]
        )
    notes = [
        f"{k}: packed / padded real tokens per second {v['ratio']:.2f}x wall, {v['ratio_cpu']:.2f}x per CPU "
        f"second; without the towers' forward {v['ratio_rest']:.2f}x (target >= 1.5x)"
        + (f"; the LLM alone {v['ratio_llm']:.2f}x" if "ratio_llm" in v else "")
        + (f"; in proportion to LLM positions {v['ratio_positions']:.2f}x." if "ratio_positions" in v else ".")
        for k, v in b["layouts"].items()
        if "ratio" in v
    ]
    base = next(iter(b["layouts"].values()))
    notes.append(
        f"The padded batches are {pct(base['padding'])} padding, so packing without any padding and a pass costing "
        f"in proportion to its LLM positions would give 1 / (1 - {base['padding']:.3f}) = "
        f"{1 / (1 - base['padding']):.2f}x: the target of 1.5x asks for {pct(1 - 1.5 * (1 - base['padding']))} "
        "packed padding or less at that proportion ('positions ratio' is each layout's own proportion). best_fit "
        "leaves a few positions of many rows of 96 empty (the samples are up to 80 positions long); max_fill fills "
        "them, except in the last batch of these samples, where the pool runs dry ((a)(i) has the whole epoch). "
        "Longer rows pack fuller but cost more attention (next note)."
    )
    if "median_llm_s" in base:
        around = base["timing"]["median_seconds"] - base["median_llm_s"]
        notes.append(
            "'LLM alone': the language model's forward + backward + AdamW step on its parameters, fed each batch's "
            "`llm_inputs` (the embeddings with the media spliced in, the labels and the positions or masks that keep "
            "packed samples apart; made once, before the timed passes), timed right after the layout's whole pass. It "
            "is what packing shrinks: on short rows its ratio follows the positions ratio (longer rows add attention, "
            "last note). The rest of a pass is the work around the LLM on each sample's media and text (towers or "
            "their caches, reducers, projectors, splicing, the embedding and the projector's update), the same in "
            "every layout: "
            f"{around:.2f} s of the padded pass's {base['timing']['median_seconds']:.2f} s here "
            f"({around / base['timing']['median_seconds']:.0%}), so the whole step gains less than the LLM."
            + around_budget(base["padding"], around / base["median_llm_s"])
        )
    if as_trained:
        notes.append(
            "Here the frozen towers' forward is a lookup in their feature caches (hashing the inputs), as in the demo "
            "from its second epoch on (its first epoch computes them in the prefetch thread, beside the step): what remains is "
            "the LLM and projector, which packing shrinks."
        )
    else:
        notes.append(
            "The frozen vision tower's forward (every image and the tower frames of every video clip) and the audio "
            "tower's forward are the same work in every layout (same samples, same media) and take a large share of "
            "a step without the feature cache; packing only shrinks the LLM side."
        )
    notes.append(
        "Longer rows cost more attention: SDPA on the CPU computes the whole row x row score matrix under the "
        "block-diagonal mask ('attention scores': entries per layer and head over the pass), and with this LLM's "
        "width (128, head size 16) attention at 512 positions costs about as much as its linear layers; it shrinks "
        "with the row length, down to rows just longer than the longest sample (96 here)."
    )
    setting = (
        f"as `train` resolves it here: bf16 autocast {'on' if b['bf16'] else 'off'}"
        + (f" (attention in fp32 in {', '.join(b['fp32_attention'])})" if b["fp32_attention"] else "")
        + f", the feature caches warmed by one pass over the samples, {b['torch_threads']} torch thread(s) "
        "(`train.threads: auto` beside the config's loader workers)"
        if as_trained
        else f"fp32, no feature cache, {b['torch_threads']} torch thread(s) (`--threads`, or torch's default)"
    )
    return Section(
        title,
        f"The first {b['samples']} tokenized samples of (a)(i)'s stream (`TrainSample`, as `build_train_loader`), "
        f"collated both ways: padded batches of {b['batch_size']} (`Collator`) vs packed rows (`packed_batches` + "
        "`PackedCollator`). Model: `demo.yaml`'s model section (tiny CLIP tower of the demo's shape, random weights, "
        "frozen; avgpool; Whisper-style audio tower; 4-layer 128-wide LLaMA, SDPA), finetune stage (trainable "
        f"{b['trainable_parameters']}), optimizer {b['optimizer']}; {setting}. One pass = forward + backward + "
        "optimizer step on every batch of the layout; real tokens/s = non-padding LLM positions (text + visual) / "
        f"pass seconds; {b['repeats']} passes per layout, interleaved (padded, packed, packed, padded, ...), medians "
        "after one warm-up step each. 'per CPU s': per second of our process's CPU time (robust to other jobs); "
        "'towers fwd': seconds of the pass inside the vision and audio towers' forward (hooks); 'rest': the pass "
        "without them; 'LLM alone': the language model's step on the same batches (notes); 'positions ratio': "
        "padded LLM positions / this layout's; 'others' CPU': share of the cores other processes used meanwhile.",
        [
            "layout",
            "batches",
            "real tokens",
            "LLM positions",
            "padding",
            "attention scores (M)",
            "real tokens/s",
            "per CPU s",
            "pass s",
            "towers fwd s",
            "rest s",
            "packed / padded",
            "rest ratio",
            "LLM alone s",
            "LLM alone ratio",
            "positions ratio",
            "others' CPU",
        ],
        rows,
        notes + kept(b),
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_packing", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes for smoke tests (numbers meaningless)")
    p.add_argument("--out", default=None, help="results folder (default benchmarks/results; --quick: runs/bench_quick)")
    p.add_argument("--cache", default=str(DEFAULT_CACHE), help="cache for generated inputs (default runs/bench_cache)")
    p.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"), help="demo run config of (a)(i) and (b)")
    p.add_argument(
        "--gpu-only", action="store_true", help="only part (c) on a CUDA device; keeps (a), (b) of <out>/packing.json"
    )
    p.add_argument("--threads", type=int, default=0, help="torch threads for (b) (default: torch's default)")
    p.add_argument("--no-grad-ckpt", action="store_true", help="(c) without gradient checkpointing in the LLM")
    p.add_argument(
        "--peak-tflops", type=float, default=None, help="peak bf16 TFLOP/s for MFU (default: by device name)"
    )
    p.add_argument("--device", default=None, help=argparse.SUPPRESS)  # (c) on this device (tests: cpu)
    p.add_argument("--no-progress", action="store_true", help=argparse.SUPPRESS)  # accepted for run_all
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, str]:
    import torch

    p = build_parser()
    args = p.parse_args(argv)
    if args.gpu_only and not torch.cuda.is_available() and args.device is None:
        p.error("--gpu-only needs a CUDA device; none is visible (" + GPU_HINT + ")")
    out = results_dir(args.out, args.quick)
    sizes = QUICK if args.quick else FULL
    started, machine = time.perf_counter(), machine_info()
    raw: dict[str, Any] = {"quick": args.quick}
    previous = Path(out) / f"{NAME}.json"
    old = json.loads(previous.read_text(encoding="utf-8")) if previous.is_file() else {}
    old = {} if old.get("quick") or args.quick else old  # a quick run never mixes with real numbers
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.gpu_only:
        cfg, tok, media_tokens, model, demo_rows = demo_setup(sizes, args.cache, args.config)
        a = part_a_demo(cfg, tok, media_tokens, model, demo_rows)
        a.update(
            run=True,
            records={"instruct": sizes.n_instruct, "pretrain": sizes.n_pretrain},
            max_length=cfg.data.max_length,
            num_workers=cfg.data.num_workers,
            batch_size=cfg.data.batch_size,
            measured_on=machine_line(machine),
        )
        raw["a_demo"] = a
        raw["a_llava"] = part_a_llava(sizes)
        from llava_wb.train.config import ConfigError

        samples = demo_samples(cfg, tok, media_tokens, model, sizes.cpu_samples)
        for part, as_trained in (("b", False), ("b_trained", True)):  # the same samples, then the same model
            try:
                measured = part_b(cfg, tok, model, samples, sizes.repeats, demo_rows, as_trained=as_trained)
            except ConfigError as e:  # (b)(ii) needs the config's feature cache
                raw[part] = {"run": False, "reason": f"not measured: {e}"}
                continue
            raw[part] = {
                **measured,
                "run": True,
                "repeats": sizes.repeats,
                "batch_size": cfg.data.batch_size,
                "measured_on": machine_line(machine),
            }
        del model
    device = args.device or ("cuda" if torch.cuda.is_available() else ("cpu" if args.quick else None))
    if device is None:
        raw["c"] = {"run": False, "reason": f"not measured here (no CUDA device); {GPU_HINT}"}
    else:
        raw["c"] = measure_gpu(
            args.quick,
            device,
            n_samples=sizes.gpu_samples,
            passes=1 if args.quick else sizes.gpu_passes,
            peak_override=args.peak_tflops,
            grad_ckpt=not args.no_grad_ckpt,
        )
    for part in ("a_demo", "b", "b_trained", "c"):  # keep what this run did not measure (e.g. an earlier GPU run)
        now = raw.get(part) or {"run": False, "reason": "not run (--gpu-only)"}
        raw[part] = {**old[part], "this_run": now["reason"]} if not now["run"] and old.get(part, {}).get("run") else now
    if "a_llava" not in raw and "a_llava" in old:
        raw["a_llava"] = old["a_llava"]
    raw["total_seconds"] = time.perf_counter() - started
    intro = (
        "Sequence packing (`data.packing`, issue 16) against right padding, measured side by side in one run: the "
        "share of LLM positions that are padding (a), CPU training throughput of the demo model on the same samples "
        "(b), and GPU throughput + MFU of a realistic LLaVA shape per attention implementation (c). This machine is "
        "shared (2 cores, other jobs running): the ratios come from one run with interleaved repeats; absolute times "
        "are noisy."
    )
    if args.quick:
        intro = "QUICK MODE: tiny sizes, numbers meaningless.\n\n" + intro
    paths = write_results(
        out, NAME, title="Sequence packing benchmark", intro=intro, sections=sections(raw), raw=raw, machine=machine
    )
    say(f"done in {raw['total_seconds']:.0f} s: {paths['md']}")
    print(paths["md"])
    return paths


if __name__ == "__main__":
    main()
