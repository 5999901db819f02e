"""Inputs and the GPU part of the packing benchmark (``bench_packing``), as ``train_shapes`` is for ``bench_train``.

- ``LLAVA15_MIX`` / ``llava_lengths``: LLaVA-1.5-like sample lengths (576 visual tokens per image plus
  a text length per component of the 665K mix; the text ranges are stated estimates).
- ``ListStream`` / ``pack_rows``: samples in memory packed by the loader's own ``packed_batches``.
- ``measure_gpu`` / ``gpu_section``: part (c), ``train_shapes.REALISTIC`` (``TINY`` for ``--quick``)
  on LLaVA-1.5-like samples, padded vs packed per attention implementation (SDPA, flex_attention,
  flash_attention_2): real tokens/s, useful model FLOPs, MFU; its ``packing.md`` section.

Nothing here needs webdataset or the data tools: ``--gpu-only`` runs on a machine without them.
"""

from __future__ import annotations

import bisect
import contextlib
import importlib.util
import random
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

from benchmarks.common import Section, machine_info, machine_line

# LLaVA-1.5: model_max_length 2048; 16 samples per GPU in stage 2 (global batch 128 on 8 GPUs).
LLAVA_MAX_LEN, LLAVA_BATCH, LLAVA_VISUAL = 2048, 16, 576
# LLaVA-1.5's 665K instruction mix, Table 7 of Liu et al. 2023 ("Improved Baselines with Visual
# Instruction Tuning", arXiv 2310.03744): component, records (thousands), with an image?, and the
# text tokens per record (LLaMA tokenizer, vicuna_v1 template and system prompt included) as
# uniform [low, high]. The records are the paper's; the text ranges are OUR ESTIMATES from each
# source's format (questions per image, answer style), not measured on the released JSON.
LLAVA15_MIX: tuple[tuple[str, int, bool, int, int, str], ...] = (
    ("LLaVA-158K", 158, True, 150, 700, "conversations, detailed descriptions, reasoning; 1-8 turns"),
    ("ShareGPT", 40, False, 300, 2500, "text-only chats, often long; capped at 2048"),
    ("VQAv2", 83, True, 100, 250, "~5 short-answer questions per image in one conversation"),
    ("GQA", 72, True, 150, 500, "~10 short-answer questions per image"),
    ("OKVQA", 9, True, 50, 90, "one short-answer question"),
    ("OCRVQA", 80, True, 100, 250, "~5 questions on a book cover"),
    ("A-OKVQA", 66, True, 70, 130, "one multiple-choice question with options"),
    ("TextCaps", 22, True, 50, 90, "one short caption"),
    ("RefCOCO", 48, True, 150, 450, "several region descriptions / boxes as text coordinates"),
    ("VG", 86, True, 200, 650, "many region descriptions with box coordinates"),
)


def llava_lengths(
    n: int, seed: int = 0, max_len: int = LLAVA_MAX_LEN, visual: int = LLAVA_VISUAL
) -> list[tuple[int, bool]]:
    """``n`` (LLM tokens, has image) drawn from ``LLAVA15_MIX``; text lengths scaled by ``max_len / 2048``."""
    rng = random.Random(seed)
    weights = [c[1] for c in LLAVA15_MIX]
    out = []
    for comp in rng.choices(LLAVA15_MIX, weights=weights, k=n):
        _, _, image, lo, hi, _ = comp
        text = round(rng.randint(lo, hi) * max_len / LLAVA_MAX_LEN)
        out.append((min(max_len, text + (visual if image else 0)), image))
    return out


class ListStream:
    """The two methods of a ``WorkerStream`` that ``packed_batches`` uses, over samples in memory."""

    def __init__(self, samples: Sequence[dict[str, Any]]):
        self.samples, self.pos = samples, 0

    def state(self) -> dict[str, Any]:
        return {"pos": self.pos}

    def __iter__(self):
        for s in self.samples:
            self.pos += 1
            yield s


def pack_rows(samples: Sequence[dict[str, Any]], max_tokens: int, rows: int, strategy: str = "best_fit") -> list:
    """Batches (lists of rows of samples) as the loader's packing builds them from this stream."""
    from llava_wb.data.config import PackingConfig
    from llava_wb.data.packing import packed_batches

    cfg = PackingConfig(max_tokens=max_tokens, strategy=strategy)
    return [b for b, _ in packed_batches(ListStream(samples), cfg, rows)]


def offline_rows(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Rows of ``lengths`` by best-fit decreasing over ALL of them at once (longest first, each row then
    filled with the longest that still fits): a reference no streaming packer reaches, which needs
    the whole epoch in memory and reorders it completely."""
    pool = sorted(lengths)
    rows = []
    while pool:
        row = [pool.pop()]
        free = max_tokens - row[0]
        while (j := bisect.bisect_right(pool, free) - 1) >= 0:
            row.append(pool.pop(j))
            free -= row[-1]
        rows.append(row)
    return rows


def model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    keys = ("input_ids", "labels", "attention_mask", "position_ids", "instruction_mask")
    return {k: v for k, v in batch.items() if k in keys or k.endswith(("_values", "_counts"))}


def real_tokens(batch: dict[str, Any]) -> int:
    return int(batch.get("token_mask", batch.get("attention_mask")).sum())


def say(msg: str) -> None:
    print(f"[bench_packing] {msg}", file=sys.stderr, flush=True)


def pct(x: float) -> str:
    return f"{x:.1%}"


def kept(part: dict[str, Any]) -> list[str]:
    return (
        [f"Kept from an earlier run (this run: {part['this_run']}); measured on {part['measured_on']}."]
        if "this_run" in part
        else []
    )


# ----------------------------------------------------------------------------- (c) GPU
def gpu_samples(model: Any, n: int, first_free: int, max_len: int) -> list[dict[str, Any]]:
    """``n`` LLaVA-1.5-like samples (``llava_lengths`` at the model's tokens per image): BOS, the image's
    placeholders, random text ids; labels on the second half of the text."""
    import torch

    g = torch.Generator().manual_seed(0)
    tpi, size, vocab = model.tokens_per_image, model.vision_tower.image_size, model.language_model.config.vocab_size
    out = []
    for i, (length, image) in enumerate(llava_lengths(n, seed=1, max_len=max_len, visual=tpi)):
        ids = torch.randint(first_free, vocab, (length,), generator=g)
        ids[0] = model.language_model.config.bos_token_id or 1
        start = 1 + (tpi if image else 0)
        if image:
            ids[1:start] = model.image_token_id
        labels = torch.full_like(ids, -100)
        answer = start + (length - start) // 2
        labels[answer:] = ids[answer:]
        media = {"image": [torch.randn(3, size, size, generator=g)]} if image else {}
        out.append({"id": f"g{i}", "input_ids": ids, "labels": labels, "media": media})
    return out


def _attn_skip(attn: str, cuda: bool) -> str | None:
    if attn == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        return "skipped: the flash_attn package is not installed here"
    if attn == "flex_attention" and not cuda:
        return "skipped: FlexAttention has no backward on the CPU"
    return None


def measure_gpu(
    quick: bool, device: str, *, n_samples: int, passes: int, peak_override: float | None, grad_ckpt: bool
) -> dict[str, Any]:
    """Part (c) of ``bench_packing`` on ``device``: ``n_samples`` LLaVA-1.5-like samples, padded batches of
    ``LLAVA_BATCH`` vs packed rows, per attention implementation; ``passes`` timed passes per layout."""
    import torch

    from benchmarks.train_shapes import REALISTIC, TINY, peak_tflops, step_flops
    from llava_wb.data.collate import Collator
    from llava_wb.data.packing import PackedCollator
    from llava_wb.model import ModelConfig, build_model
    from llava_wb.tokenizer import build_demo_tokenizer, demo_corpus

    cuda = device.startswith("cuda")
    shape = TINY if quick else REALISTIC
    name = torch.cuda.get_device_name(0) if cuda else "cpu (smoke test of the GPU code path)"
    peak = peak_override or (peak_tflops(name) if cuda else None)
    max_len = min(LLAVA_MAX_LEN, shape.llm["max_position_embeddings"])
    tok = build_demo_tokenizer(demo_corpus(["a picture of a cat"]))
    out: dict[str, Any] = {
        "run": True,
        "quick": quick,
        "measured_on": f"{name}; host {machine_line(machine_info())}",
        "device": name,
        "peak_tflops": peak,
        "shape": shape.name,
        "grad_ckpt": grad_ckpt,
        "precision": "bf16 autocast, fp32 weights" if cuda else "fp32",
        "max_len": max_len,
        "runs": {},
    }
    data = None
    for attn in ("sdpa", "flex_attention", "flash_attention_2"):
        skip = _attn_skip(attn, cuda)
        if skip:
            out["runs"][attn] = {"skipped": skip}
            continue
        torch.manual_seed(0)
        with torch.device(device):
            model = build_model(ModelConfig.from_dict(shape.model_dict(attn)), tok).train()
        if grad_ckpt:
            model.language_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if data is None:
            data = gpu_samples(model, n_samples, len(tok), max_len)
            lengths = [len(s["input_ids"]) for s in data]
            rows = max(1, round(LLAVA_BATCH * statistics.mean(lengths) / max_len))
            if quick:
                rows = min(rows, 2)
            layouts = {
                f"padded, batch {LLAVA_BATCH}": [
                    Collator(pad_token_id=tok.pad_token_id)(data[i : i + LLAVA_BATCH])
                    for i in range(0, len(data), LLAVA_BATCH)
                ],
                f"packed max_fill, {rows} rows x {max_len}": [  # the fullest rows of (a)(ii)
                    PackedCollator(pad_token_id=tok.pad_token_id)(b) for b in pack_rows(data, max_len, rows, "max_fill")
                ],
            }
            layouts = {
                k: [{n: t.to(device) for n, t in model_inputs(b).items()} for b in v] for k, v in layouts.items()
            }
            flops = sum(step_flops(model, 1, n, int(bool(s["media"])))["total"] for n, s in zip(lengths, data))
            out.update(samples=len(data), real_tokens=sum(lengths), useful_flops=flops, rows=rows)
            out["layouts"] = {
                k: {"batches": len(v), "positions": sum(b["input_ids"].numel() for b in v)} for k, v in layouts.items()
            }
        try:
            res = _time_layouts(model, layouts, passes, out["real_tokens"], flops, peak)
            say(f"(c) {attn}: packed/padded {res['ratio']:.2f}x")
        except Exception as exc:  # noqa: BLE001 - one failing attention (OOM, missing kernel) must not hide the others
            if not cuda:
                raise
            res = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
            say(f"(c) {attn}: {res['error']}")
        out["runs"][attn] = res
        model = None
        if cuda:
            torch.cuda.empty_cache()
    return out


def _time_layouts(
    model: Any, layouts: dict[str, list[dict[str, Any]]], passes: int, real: int, flops: float, peak: float | None
) -> dict[str, Any]:
    """Median pass seconds of each layout (a step on every batch; passes interleaved after one warm-up pass
    per layout), real tokens/s, useful TFLOP/s, MFU, peak memory; ``ratio``: packed / padded tokens/s."""
    import torch

    cuda = next(model.parameters()).is_cuda
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    amp = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else contextlib.nullcontext
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-5, fused=cuda)

    def step(batch: dict[str, Any]) -> None:
        with amp():
            loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for batches in layouts.values():  # warm-up: a whole pass (flex_attention compiles for new shapes)
        for b in batches:
            step(b)
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times: dict[str, list[float]] = {k: [] for k in layouts}
    for _ in range(passes):
        for k, batches in layouts.items():
            sync()
            t0 = time.perf_counter()
            for b in batches:
                step(b)
            sync()
            times[k].append(time.perf_counter() - t0)
    res: dict[str, Any] = {}
    for k, t in times.items():
        sec = statistics.median(t)
        res[k] = {
            "pass_seconds": t,
            "median_s": sec,
            "tokens_per_s": real / sec,
            "tflops": flops / sec / 1e12,
            "mfu": flops / sec / (peak * 1e12) if peak else None,
        }
    res["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    padded, packed = (res[k]["tokens_per_s"] for k in layouts)
    res["ratio"] = packed / padded
    return res


def gpu_section(c: dict[str, Any]) -> Section:
    from benchmarks.train_shapes import FLOPS_FORMULA

    head = [
        "attention",
        "layout",
        "batches",
        "LLM positions",
        "pass s",
        "real tokens/s",
        "model TFLOP/s",
        "MFU",
        "packed / padded",
        "peak GiB",
    ]
    notes = [
        "Useful model FLOPs of a pass = the sum over its samples of one sample's step FLOPs (`train_shapes.step_flops` "
        "with B = 1, S = the sample's length): padding and masked cross-sample attention are not counted, so both "
        "layouts do the same useful work and their MFU ratio is their tokens/s ratio. " + FLOPS_FORMULA,
        "Peak dense bf16 FLOP/s by device name (`train_shapes.PEAKS_BF16`): H100 SXM 989, H200 989 TFLOP/s.",
    ]
    title = "(c) GPU, realistic shape: packed vs padded per attention implementation"
    if not c.get("run"):
        explain = (
            "CLIP ViT-L/14-336 (frozen) + LLaMA-1.1B (`train_shapes.REALISTIC`), bf16 autocast, on LLaVA-1.5-like "
            f"samples built in memory, padded batches of {LLAVA_BATCH} vs packed rows of {LLAVA_MAX_LEN} (`max_fill`), "
            "with SDPA, "
            "flex_attention and flash_attention_2: real tokens/s and MFU. It needs a CUDA device."
        )
        return Section(title, explain, head, [["all", c["reason"]] + [""] * 8], notes)
    rows = []
    for attn, r in c["runs"].items():
        if "skipped" in r or "error" in r:
            rows.append([attn, r.get("skipped") or r["error"]] + [""] * 8)
            continue
        for k, lay in c["layouts"].items():
            x = r[k]
            rows.append(
                [
                    attn,
                    k,
                    lay["batches"],
                    lay["positions"],
                    x["median_s"],
                    x["tokens_per_s"],
                    x["tflops"],
                    "n/a" if x["mfu"] is None else pct(x["mfu"]),
                    f"{r['ratio']:.2f}x" if k.startswith("packed") else "",
                    "n/a" if r["peak_mem_gib"] is None else r["peak_mem_gib"],
                ]
            )
    notes += kept(c) + [
        f"{c['samples']} LLaVA-1.5-like samples ((a)(ii)'s distribution, another seed; {c['real_tokens']:,} real tokens, "
        f"useful FLOPs per pass {c['useful_flops'] / 1e12:.2f} T), built in memory; peak {c['peak_tflops']} TFLOP/s; "
        f"gradient checkpointing {'on' if c['grad_ckpt'] else 'off'} (LLaVA-1.5's recipe; recomputation not counted)."
    ]
    if c.get("quick"):
        notes.append(
            "SMOKE TEST: tiny shape" + ("" if "cpu" not in c["device"] else " on CPU") + "; numbers meaningless."
        )
    return Section(
        title,
        f"{c['shape']}, random init, {c['precision']}, fused AdamW, through `LlavaWBForCausalLM.forward`, on "
        f"{c['device']}. The same samples collated both ways: padded batches of {LLAVA_BATCH} vs packed rows of "
        f"{c['max_len']} ({c['rows']} per batch, `max_fill`); one pass = a step on every batch; median of the interleaved passes "
        "after one warm-up pass per layout (flex_attention compiles there, once per new shape).",
        head,
        rows,
        notes,
    )
