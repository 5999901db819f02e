"""Model shapes, peak throughputs and the FLOP count of the training benchmark (``bench_train``).

- ``REALISTIC``: LLaVA-1.5's vision tower shape (CLIP ViT-L/14-336: 24 layers, width 1024, 16 heads,
  MLP 4096, 14 px patches on 336 px images -> 24 x 24 = 576 patch tokens, feature layer -2, CLS
  dropped, frozen) with the ``mlp2x_gelu`` projector and a ~1.1B LLaMA-style LLM (TinyLlama's
  width 2048 / MLP 5632 / 22 layers, but 16 heads of 128 so SDPA's flash kernels get their best head
  size; vocabulary 32000). Random init. ``TINY``: the same code path at toy size (CPU smoke test).
- ``peak_tflops(device_name)``: dense bf16 tensor-core peak of known GPUs (vendor data sheets, no
  sparsity), for model FLOPs utilization (MFU).
- ``step_flops(model, batch_size, seq_len, images)``: model FLOPs of one training step (formula in
  ``FLOPS_FORMULA``, printed into ``train.md``). Gradient-checkpointing recomputation is not counted
  (MFU, not hardware FLOPs utilization).
- ``make_batch`` / ``measure_gpu`` / ``gpu_section``: part (2) of ``bench_train``: a synthetic batch of
  a shape, the timed GPU run (throughput, peak memory, MFU, phase split), its ``train.md`` section.
- ``CPU_MID``: a shape a 2-core CPU can time in seconds with the visual token count of the realistic
  one (a 24 x 24 patch grid at 336 px through a narrow 2-layer tower, a 512-wide 4-layer LLaMA);
  ``step_seconds``: wall seconds of each timed training step, for token-count comparisons
  (``bench_merge`` (d), ``bench_video`` (c)).
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

CLIP_L14_336 = dict(
    image_size=336,
    patch_size=14,
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=24,
    num_attention_heads=16,
)
LLAMA_1B = dict(
    model_type="llama",
    hidden_size=2048,
    intermediate_size=5632,
    num_hidden_layers=22,
    num_attention_heads=16,
    num_key_value_heads=16,
    vocab_size=32000,
    max_position_embeddings=2048,
    tie_word_embeddings=False,
)
TINY_VISION = dict(
    image_size=28, patch_size=14, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2
)
TINY_LLM = dict(
    model_type="llama",
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=2,
    vocab_size=512,
    max_position_embeddings=256,
    tie_word_embeddings=False,
)


@dataclass(frozen=True)
class Shape:
    """One realistic-shape run: model config, batch and how to train it."""

    name: str
    vision: dict[str, Any]
    llm: dict[str, Any]
    batch_size: int
    text_tokens: int  # text tokens per sample next to the image's visual tokens
    answer_tokens: int  # of those, the last ones carry labels (the rest is prompt, label -100)
    feature_layer: int = -2
    freeze_tower: bool = True  # LLaVA stage 2: projector + LLM train, the tower is frozen
    steps: int = 10  # timed steps (throughput, no syncs inside)
    split_steps: int = 5  # timed steps with a sync after each phase (the split)
    warmup: int = 3
    extra: dict[str, Any] = field(default_factory=dict)

    def model_dict(self, attn: str = "sdpa") -> dict[str, Any]:
        """The ``model:`` section for ``ModelConfig.from_dict``."""
        return {
            "vision": {
                "type": "clip",
                "config": dict(self.vision),
                "feature_layer": self.feature_layer,
                "select": "patch",
                "freeze": self.freeze_tower,
            },
            "projector": {"type": "mlp2x_gelu"},
            "reducer": {"type": "identity"},
            "llm": {"config": dict(self.llm), "attn_implementation": attn},
        }


CPU_MID = Shape(
    "24 x 24 patches (336 px) through a narrow 2-layer tower + a 512-wide 4-layer LLaMA",
    dict(
        image_size=336, patch_size=14, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2
    ),
    dict(
        model_type="llama",
        hidden_size=512,
        intermediate_size=1376,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=8,
        vocab_size=4096,
        max_position_embeddings=8192,
    ),
    batch_size=4,
    text_tokens=128,
    answer_tokens=64,
    steps=3,
    warmup=1,
)
REALISTIC = Shape(
    "CLIP ViT-L/14-336 (frozen) + LLaMA-1.1B", CLIP_L14_336, LLAMA_1B, batch_size=16, text_tokens=128, answer_tokens=64
)
TINY = Shape(
    "tiny CLIP + tiny LLaMA (smoke test of the GPU code path)",
    TINY_VISION,
    TINY_LLM,
    batch_size=2,
    text_tokens=16,
    answer_tokens=6,
    steps=2,
    split_steps=2,
    warmup=1,
)

# Dense bf16 tensor-core peaks in TFLOP/s (no sparsity). First matching substring wins: order matters.
PEAKS_BF16: list[tuple[str, float]] = [
    ("GH200", 989.0),
    ("H200", 989.0),
    ("H100 NVL", 835.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),
    ("H800", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
]

NO_GPU = "not run: no GPU on this machine"
FLOPS_FORMULA = (
    "model FLOPs per step = LLM + projector + tower, where "
    "LLM = 6 x N_llm x T + 12 x L x d x S^2 x B (N_llm: LLM parameters without the input embedding, "
    "lm_head included; T = B x S tokens; the second term is attention scores and values, forward + "
    "backward, counted without the causal half-saving, as in PaLM's MFU); "
    "projector = 6 x N_proj x (visual tokens); "
    "tower = k x (2 x N_tower x I x P + 4 x L_v x d_v x P^2 x I) with I images of P tokens "
    "(CLS included, all layers run), k = 1 when the tower is frozen (forward only), 3 when it trains. "
    "MFU = model FLOPs per step / step seconds / peak dense bf16 FLOP/s of the device."
)


def peak_tflops(device_name: str) -> float | None:
    """Dense bf16 peak of a known device name (``torch.cuda.get_device_name()``), else None."""
    for key, value in PEAKS_BF16:
        if key.lower() in device_name.lower():
            return value
    return None


def _count(module: Any, skip: tuple[str, ...] = ()) -> int:
    return sum(p.numel() for n, p in module.named_parameters() if not any(s in n for s in skip))


def step_flops(model: Any, batch_size: int, seq_len: int, images: int) -> dict[str, float]:
    """Model FLOPs of one training step of ``model`` (a ``LlavaWBForCausalLM``); see FLOPS_FORMULA."""
    lm_cfg = model.language_model.config
    emb = model.language_model.get_input_embeddings().weight
    n_llm = _count(model.language_model) - emb.numel()
    if getattr(lm_cfg, "tie_word_embeddings", False):
        n_llm += emb.numel()  # the tied matrix is still used as lm_head
    tokens = batch_size * seq_len
    llm = 6.0 * n_llm * tokens + 12.0 * lm_cfg.num_hidden_layers * lm_cfg.hidden_size * seq_len**2 * batch_size
    visual = images * model.tokens_per_image
    proj = 6.0 * _count(model.projector) * visual
    vc = model.vision_tower.config
    p = (vc.image_size // vc.patch_size) ** 2 + 1
    n_tower = _count(model.vision_tower, skip=("position_embedding", "post_layernorm"))
    trains = any(q.requires_grad for q in model.vision_tower.parameters())
    tower = (3.0 if trains else 1.0) * (
        2.0 * n_tower * images * p + 4.0 * vc.num_hidden_layers * vc.hidden_size * p**2 * images
    )
    return {
        "llm": llm,
        "projector": proj,
        "tower": tower,
        "total": llm + proj + tower,
        "llm_params_no_embedding": float(n_llm),
        "tower_params": float(n_tower),
        "projector_params": float(_count(model.projector)),
    }


def make_batch(model: Any, shape: Shape, first_free: int, device: Any) -> dict[str, Any]:
    """A synthetic batch of ``shape``: BOS, 5 prompt tokens, one image's placeholders, then text
    (random ids >= ``first_free``, never a special token); labels on the last ``answer_tokens``."""
    import torch

    g = torch.Generator().manual_seed(0)
    b, tpi, img = shape.batch_size, model.tokens_per_image, model.vision_tower.image_size
    ids = torch.randint(first_free, shape.llm["vocab_size"], (b, tpi + shape.text_tokens), generator=g)
    ids[:, 0] = model.language_model.config.bos_token_id or 1
    ids[:, 6 : 6 + tpi] = model.image_token_id
    labels = torch.full_like(ids, -100)
    labels[:, -shape.answer_tokens :] = ids[:, -shape.answer_tokens :]
    batch = {
        "input_ids": ids,
        "labels": labels,
        "attention_mask": torch.ones_like(ids),
        "pixel_values": torch.randn(b, 3, img, img, generator=g),
        "image_counts": torch.ones(b, dtype=torch.long),
    }
    return {k: v.to(device) for k, v in batch.items()}


def step_seconds(model: Any, batch: dict[str, Any], *, steps: int, warmup: int, amp: bool = False) -> list[float]:
    """Wall seconds of each of ``steps`` training steps (forward, backward, AdamW) of ``model`` on
    ``batch`` after ``warmup`` untimed ones; the device is synchronised around each step, and
    ``amp`` runs the forward under bf16 autocast on CUDA (fp32 weights, as ``llava_wb.train``)."""
    import torch

    cuda = next(model.parameters()).is_cuda
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda and amp else contextlib.nullcontext
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5, fused=cuda)
    times = []
    for i in range(warmup + steps):
        sync()
        t0 = time.perf_counter()
        with autocast():
            loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def measure_gpu(
    timed_step: Callable[..., dict[str, float]],
    *,
    quick: bool,
    precisions: Sequence[str],
    grad_ckpt: bool = False,
    peak_override: float | None = None,
    batch_size: int | None = None,
) -> dict[str, Any]:
    """Throughput, peak memory, MFU and a phase split (``timed_step``: ``bench_train.split_step``) of
    ``REALISTIC`` on the GPU, once per precision (``amp``: bf16 autocast over fp32 weights, as the
    HF Trainer's bf16; ``bf16``: bf16 weights). ``quick``: ``TINY`` instead (a smoke test; on CPU
    when there is no GPU). Without a GPU and not ``quick``: ``{"run": False, "reason": NO_GPU}``."""
    import dataclasses

    import torch

    from benchmarks.common import machine_info, machine_line
    from llava_wb.model import ModelConfig, build_model
    from llava_wb.tokenizer import build_demo_tokenizer, demo_corpus

    cuda = torch.cuda.is_available()
    if not cuda and not quick:
        return {"run": False, "reason": NO_GPU}
    shape = TINY if quick else REALISTIC
    if batch_size:
        shape = dataclasses.replace(shape, batch_size=batch_size)
    dev = torch.device("cuda" if cuda else "cpu")
    name = torch.cuda.get_device_name(0) if cuda else "cpu (smoke test of the GPU code path)"
    peak = peak_override or (peak_tflops(name) if cuda else None)
    tok = build_demo_tokenizer(demo_corpus(["a picture of a cat"]))
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    torch.manual_seed(0)
    with dev:
        model = build_model(ModelConfig.from_dict(shape.model_dict()), tok).train()
    if grad_ckpt:
        model.language_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    batch = make_batch(model, shape, len(tok), dev)
    seq = int(batch["input_ids"].shape[1])
    flops = step_flops(model, shape.batch_size, seq, shape.batch_size)
    out: dict[str, Any] = {
        "run": True,
        "quick": quick,
        "measured_on": f"{name}; host {machine_line(machine_info())}",
        "device": name,
        "cuda": cuda,
        "peak_tflops": peak,
        "shape": shape.name,
        "vision": shape.vision,
        "llm": shape.llm,
        "batch_size": shape.batch_size,
        "seq_len": seq,
        "grad_ckpt": grad_ckpt,
        "attn": "sdpa",
        "flops": flops,
        "runs": {},
    }
    bad = set(precisions) - {"amp", "bf16"}
    if bad:
        raise ValueError(f"unknown GPU precision(s) {sorted(bad)}: use amp, bf16")
    for precision in precisions:
        if precision == "bf16":
            model.to(torch.bfloat16)  # pure bf16 weights, grads and optimizer state
        use_amp = cuda and precision == "amp"
        amp = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_amp else contextlib.nullcontext
        label = "bf16 autocast, fp32 weights" if use_amp else str(next(model.parameters()).dtype)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-5, fused=cuda)

        def step() -> None:
            with amp():
                loss = model(**batch).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        try:
            for _ in range(shape.warmup):
                step()
            sync()
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            for _ in range(shape.steps):
                step()
            sync()
            sec = (time.perf_counter() - t0) / shape.steps
            split = [timed_step(model, batch, opt, sync, amp) for _ in range(shape.split_steps)]
        except torch.cuda.OutOfMemoryError:
            out["runs"][precision] = {
                "precision": label,
                "error": f"out of memory at batch {shape.batch_size} (try --gpu-batch 8 or --grad-ckpt)",
            }
            opt.zero_grad(set_to_none=True)
            opt = None  # free the optimizer state before the next precision
            torch.cuda.empty_cache()
            continue
        run = {
            "precision": label,
            "step_s": sec,
            "samples_per_s": shape.batch_size / sec,
            "llm_tokens_per_s": shape.batch_size * seq / sec,
            "visual_tokens_per_sample": model.tokens_per_image,
            "tflops": flops["total"] / sec / 1e12,
            "mfu": flops["total"] / sec / (peak * 1e12) if peak else None,
            "loss": split[-1]["loss"],
            "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
            "split_median_ms": {
                p: 1e3 * statistics.median(s.get(p, 0.0) for s in split) for p in split[0] if p != "loss"
            },
        }
        out["runs"][precision] = run
        print(
            f"[bench_train] GPU {precision}: {run['samples_per_s']:.1f} samples/s, {run['tflops']:.1f} TFLOP/s",
            file=sys.stderr,
            flush=True,
        )
        opt = None  # free the optimizer state before the next precision
        if cuda:
            torch.cuda.empty_cache()
    return out


# ----------------------------------------------------------------------------- report
def kept_note(part: dict[str, Any]) -> list[str]:
    """A note for a section kept from an earlier ``train.json`` (see ``bench_train.main``)."""
    return (
        [f"Kept from an earlier run (this run: {part['this_run']}); measured on {part['measured_on']}."]
        if "this_run" in part
        else []
    )


def gpu_section(gpu: dict[str, Any]) -> Any:
    """The ``train.md`` section of ``measure_gpu``'s result."""
    from benchmarks.common import Section

    head = [
        "shape",
        "device",
        "precision",
        "batch x seq",
        "samples/s",
        "LLM tokens/s",
        "peak memory (GiB)",
        "model TFLOP/s",
        "MFU",
    ]
    notes = [FLOPS_FORMULA, "Target (issue 3): MFU >= 40% on an H100."]
    if not gpu["run"]:
        rows = [[REALISTIC.name, gpu["reason"], "", "", "", "", "", "", ""]]
    else:
        rows = [
            [gpu["shape"], gpu["device"], r["precision"], f"{gpu['batch_size']} x {gpu['seq_len']}"]
            + (
                [r["error"], "", "", "", ""]
                if "error" in r
                else [
                    r["samples_per_s"],
                    r["llm_tokens_per_s"],
                    "n/a" if r["peak_mem_gib"] is None else r["peak_mem_gib"],
                    r["tflops"],
                    "n/a" if r["mfu"] is None else f"{r['mfu']:.1%}",
                ]
            )
            for r in gpu["runs"].values()
        ]
        f = gpu["flops"]
        notes += kept_note(gpu) + [
            f"FLOPs per step: {f['total'] / 1e12:.2f} T (LLM {f['llm'] / 1e12:.2f} T, tower {f['tower'] / 1e12:.2f} T, "
            f"projector {f['projector'] / 1e12:.3f} T); LLM parameters without input embedding "
            f"{f['llm_params_no_embedding'] / 1e9:.3f} B, tower {f['tower_params'] / 1e6:.0f} M; peak "
            f"{gpu['peak_tflops']} TFLOP/s; gradient checkpointing {'on' if gpu['grad_ckpt'] else 'off'}."
        ]
        notes += [
            f"{p}: phase split, median ms with a sync after each phase: "
            + ", ".join(f"{k} {v:.1f}" for k, v in r["split_median_ms"].items())
            for p, r in gpu["runs"].items()
            if "split_median_ms" in r
        ]
        if gpu.get("quick"):
            notes.append(
                "SMOKE TEST: tiny shape" + ("" if gpu["cuda"] else " on CPU, no autocast") + "; numbers meaningless."
            )
    return Section(
        "(2) GPU, realistic shape: throughput, memory, MFU",
        "CLIP ViT-L/14-336 config (frozen; 576 visual tokens per image, feature layer -2) + mlp2x_gelu projector "
        "+ LLaMA-style ~1.1B LLM (width 2048, 22 layers, 16 heads, MLP 5632, vocab 32000), random init, SDPA "
        "attention, fused AdamW, through `LlavaWBForCausalLM.forward`; one synthetic batch resident on the device "
        "(no loader, so no data wait). 'bf16 autocast' keeps fp32 weights (`llava_wb.train` with bf16 on); "
        "'torch.bfloat16' trains bf16 weights. Step time: mean over the timed steps after warm-up, no syncs inside.",
        head,
        rows,
        notes,
    )
