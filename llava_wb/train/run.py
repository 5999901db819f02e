"""``train(run_cfg) -> result dict``: one training run, in-process or under torchrun / deepspeed.

Order of work: checks (``checks.check_run_config``, nothing loaded yet) -> run folder decisions
(resume / overwrite) -> ``TrainingArguments`` (initialises torch.distributed from the launcher's
environment) -> tokenizer -> model (built, or the ``train.init_from`` bundle) -> stage and LoRA ->
this rank's streaming loader -> ``LlavaTrainer`` -> train -> ``OUTPUT/final`` (model + tokenizer,
LoRA merged) and ``result.json``. Every run folder gets ``resolved_config.yaml``, ``metrics.jsonl``
and TensorBoard files under ``tensorboard/``.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

from llava_wb.train import checkpoints as ckpt
from llava_wb.train.checks import check_run_config, resolve_init_from, tokenizer_path
from llava_wb.train.config import ConfigError, RunConfig
from llava_wb.train.dist import barrier, init_deepspeed_on_cpu, replicas_in_sync, torch_threads
from llava_wb.train.run_folder import (  # noqa: F401  (prepare_run_folder: re-exported)
    _clear_run_folder,
    _resume_point,
    prepare_run_folder,
)

log = logging.getLogger("llava_wb.train")
# Fields of ``model`` that a ``train.init_from`` bundle fixes (its saved ``ModelConfig``): the run's must agree.
INIT_FROM_FIXED = ("vision.type", "vision.feature_layer", "vision.select", "projector.type", "reducer.type")


def train(cfg: RunConfig) -> dict[str, Any]:
    """Train as ``cfg`` says; returns (and writes to ``result.json``) a summary of the run."""
    with torch_threads(cfg.train.threads, cfg.data.num_workers) as threads:
        return _train(cfg, threads)


def _train(cfg: RunConfig, threads: int) -> dict[str, Any]:
    facts = check_run_config(cfg)
    from llava_wb.train.stages import STAGES, WARMUP_OBJECTIVES

    objective = STAGES.get(cfg.train.stage).objective
    if objective in WARMUP_OBJECTIVES:
        module, name = WARMUP_OBJECTIVES[objective].split(":")
        return getattr(importlib.import_module(module), name)(cfg)
    t = cfg.train
    out = Path(t.output_dir)
    resume_from = _resume_point(cfg, out)

    world = int(os.environ.get("WORLD_SIZE", "1"))  # set by torchrun and the deepspeed launcher
    if resume_from is not None and ckpt.checkpoint_world_size(resume_from) != world:
        raise ConfigError(
            f"train.resume: {resume_from} was saved by {ckpt.checkpoint_world_size(resume_from)} "
            f"process(es), this run has {world}; exact resumption needs the same world size"
        )
    from transformers import set_seed

    from llava_wb.model.media import media_settings
    from llava_wb.train.stages import apply_stage, trainable_parts

    # The model is built before the TrainingArguments exist, so never under DeepSpeed's zero.Init
    # (ZeRO-3 partitions it in deepspeed.initialize instead).
    set_seed(t.seed)  # model initialisation is part of the run's reproducibility
    tokenizer = load_tokenizer(cfg)
    model = _build_model(cfg, tokenizer)
    if {k: v for k, v in model.media_tokens.items() if k in facts.media_tokens} != facts.media_tokens:
        raise RuntimeError(
            f"model has placeholder tokens per item {model.media_tokens}, the config check predicted "
            f"{facts.media_tokens}"
        )
    counts = apply_stage(model, cfg)
    bf16, fp32_attention = apply_precision(t, model)
    cache = enable_feature_caches(cfg, model)
    media = media_settings(model, cfg.data)  # frames per clip and audio window come from the model

    # DeepSpeed fills its "auto" batch sizes when the arguments are created: accumulation first.
    args = _training_args(cfg, _grad_accum(cfg, world), world, bf16)  # initialises torch.distributed
    rank = args.process_index
    if args.world_size != world:
        raise RuntimeError(f"WORLD_SIZE={world} but torch.distributed reports {args.world_size} processes")
    if rank == 0:
        if t.overwrite and resume_from is None:
            _clear_run_folder(out)
        out.mkdir(parents=True, exist_ok=True)
        cfg.save(out / "resolved_config.yaml")
    barrier()

    from llava_wb.data.loader import build_train_loader
    from llava_wb.train.trainer import StreamFeed

    # pixels leave the workers as uint8 (a quarter of the bytes); the trainer normalises them on the device
    shipped = dataclasses.replace(media, image=dataclasses.replace(media.image, pixels="uint8"))
    loader = build_train_loader(
        cfg.data, tokenizer, media_tokens=model.media_tokens, rank=rank, world_size=world, media=shipped
    )
    id_log = None
    if t.log_sample_ids:
        (out / "sample_ids").mkdir(parents=True, exist_ok=True)
        id_log = out / "sample_ids" / f"rank{rank}.jsonl"
    prefetch = _prefetch(cfg, model, shipped.image, args.device, bf16)  # checked: the run has a feature cache
    feed = StreamFeed(loader, model.media_tokens, id_log, image=shipped.image, prefetch=prefetch)
    max_steps = t.max_steps or max(1, math.ceil(t.epochs * len(loader) / args.gradient_accumulation_steps))
    args.max_steps = max_steps
    args.lr_scheduler_kwargs = t.scheduler_kwargs(max_steps)  # set with max_steps (it may come from the epochs)
    done_steps = 0
    if resume_from is not None:
        feed.load_state_dict(ckpt.read_loader_state(resume_from, rank))
        done_steps = int(json.loads((resume_from / "trainer_state.json").read_text())["global_step"])
        _truncate_logs(out, rank, done_steps, feed.batches)
    if rank == 0:
        log.info(
            "stage %s, trainable %s, parameters %s; tokens per item %s; world %d x batch %d x accum %d; max_steps %d%s",
            t.stage,
            trainable_parts(cfg),
            counts,
            model.media_tokens,
            world,
            cfg.data.batch_size,
            args.gradient_accumulation_steps,
            max_steps,
            f"; resuming from {resume_from}" if resume_from else "",
        )

    t0 = time.perf_counter()
    trainer = _make_trainer(cfg, args, model, tokenizer, feed)
    trainer.feature_cache = cache
    train_loss = None
    try:
        if done_steps < max_steps:
            output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
            train_loss = output.training_loss
    finally:
        feed.close()  # stops the loader's worker processes, also when training failed
    in_sync = replicas_in_sync(trainer, model) if done_steps < max_steps else None
    step = trainer.state.global_step if done_steps < max_steps else done_steps
    final_dir = out / "final" if step >= max_steps else None
    if final_dir is not None and done_steps < max_steps:
        save_final(trainer, model, tokenizer, final_dir)
    elif final_dir is not None and not final_dir.is_dir():
        # resumed a run that had finished training but died before final/ appeared (it appears by rename)
        ckpt.load_model_weights(model, resume_from)  # type: ignore[arg-type]
        save_final(trainer, model, tokenizer, final_dir)
    result = {
        "output_dir": str(out),
        "final_dir": str(final_dir) if final_dir else None,
        "global_step": step,
        "max_steps": max_steps,
        "finished": step >= max_steps,
        "train_loss": train_loss,
        "resumed_from": str(resume_from) if resume_from else None,
        "world_size": world,
        "distributed": str(trainer.accelerator.distributed_type),
        "replicas_in_sync": in_sync,
        "grad_accum": args.gradient_accumulation_steps,
        "global_batch_size": world * cfg.data.batch_size * args.gradient_accumulation_steps,
        "tokens_per_image": model.tokens_per_image,
        "media_tokens": model.media_tokens,
        "trainable_parameters": counts,
        "seconds": round(time.perf_counter() - t0, 2),
        "metrics_file": str(out / "metrics.jsonl"),
        "resolved_config": str(out / "resolved_config.yaml"),
        "skips": feed.skip_state(),  # as of the last batch trained on (the feed may have read one more)
        "feature_cache": cache.summary() if cache is not None else None,
        "audio_feature_cache": _summary(getattr(model, "audio_tower", None)),
        "prefetch_stopped_after_batch": feed.prefetch_stopped,  # the caches held everything from there on
        "threads": threads,
        "bf16": bf16,
        "fp32_attention": fp32_attention,  # sub-models switched to sdpa_fp32 (bf16 on a CPU)
    }
    if rank == 0:
        (out / "result.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
        log.info("done: step %d/%d in %.1fs; %s", step, max_steps, result["seconds"], feed.skip_summary())
    return result


def load_tokenizer(cfg: RunConfig) -> Any:
    """The run's tokenizer, with the media placeholders and a pad token added when missing (the
    model's embeddings grow to match; LLaVA uses ``unk`` as the pad token of LLaMA tokenizers)."""
    from transformers import AutoTokenizer

    from llava_wb.data.conversation import MEDIA_KINDS

    tok = AutoTokenizer.from_pretrained(tokenizer_path(cfg), local_files_only=True)
    placeholders = [cfg.model.image_token] + [f"<{k}>" for k in MEDIA_KINDS if f"<{k}>" != cfg.model.image_token]
    vocab = tok.get_vocab()
    missing = [p for p in placeholders if p not in vocab]
    if missing:
        tok.add_special_tokens({"extra_special_tokens": missing}, replace_extra_special_tokens=False)
        log.info("added special tokens %s to the tokenizer", missing)
    if tok.pad_token is None:
        tok.pad_token = tok.unk_token if tok.unk_token is not None else tok.eos_token
    return tok


def save_final(trainer: Any, model: Any, tokenizer: Any, directory: Path) -> None:
    """Model (LoRA merged) + tokenizer in one folder; under ZeRO-3 the weights are gathered first.
    Written into ``final.partial/`` and renamed: ``final/`` exists only once it is complete."""
    from llava_wb.model import save_bundle
    from llava_wb.train.stages import merge_lora

    staging, rank0 = directory.with_name(directory.name + ".partial"), trainer.args.process_index == 0
    if rank0:
        shutil.rmtree(staging, ignore_errors=True)  # left by a run killed while saving
    barrier()
    needed = sum(p.numel() * p.element_size() for p in model.parameters())
    with ckpt.disk_full_guard(staging, needed, "saving the final model"):
        ds = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
        if ds is not None and ds.zero_stage == 3:
            state_dict = trainer.accelerator.get_state_dict(trainer.model_wrapped)  # collective: every rank
            if rank0:
                model.save_pretrained(staging, state_dict=state_dict)
                tokenizer.save_pretrained(staging)
        elif rank0:
            merge_lora(model)
            save_bundle(model, tokenizer, staging)
        if rank0:
            ckpt.publish_folder(staging, directory)
    barrier()


def enable_feature_caches(cfg: RunConfig, model: Any) -> Any:
    """The vision tower's feature cache when ``train.feature_cache_mb`` asks for one (after the
    stage has set what trains: the cache serves a frozen tower only); a frozen audio tower gets one
    of the same size too (``model.audio_tower.feature_cache``; an audio tower that trains, none)."""
    mb = cfg.train.feature_cache_mb
    if not mb:
        return None
    if any(p.requires_grad for p in model.vision_tower.parameters()):
        raise ConfigError(
            f"train.feature_cache_mb={mb} but stage {cfg.train.stage!r} trains the vision tower, whose features "
            "then change every step; set train.feature_cache_mb: 0 or freeze the tower"
        )
    audio = getattr(model, "audio_tower", None)
    try:
        if audio is not None and not any(p.requires_grad for p in audio.parameters()):
            audio.enable_feature_cache(mb * 2**20)
        return model.vision_tower.enable_feature_cache(mb * 2**20)
    except ValueError as e:
        raise ConfigError(f"train.feature_cache_mb: {e}") from None


def _summary(tower: Any) -> dict[str, Any] | None:
    cache = getattr(tower, "feature_cache", None)
    return cache.summary() if cache is not None else None


PREFETCHED = ("pixel_values", "video_values", "audio_values")  # the batch keys the towers read


def _prefetch(cfg: RunConfig, model: Any, image: Any, device: Any, bf16: bool) -> Any:
    """With ``train.feature_prefetch``: the function the feed runs on the next batch in a thread, which
    puts its images' tower features into the feature cache (``MediaMixin.prefetch_media``). Autocast is
    per thread: the prefetch enters the step's own (bf16 without DeepSpeed), so a feature is the same
    whichever thread computed it."""
    if not cfg.train.feature_prefetch:
        return None
    import torch

    from llava_wb.data.image import normalise_batch

    autocast = bf16 and not cfg.train.deepspeed

    def prefetch(batch: dict[str, Any]) -> int:
        media = {k: v.to(device) for k, v in batch.items() if k in PREFETCHED and v is not None}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            return model.prefetch_media(normalise_batch(media, image))

    return prefetch


def _build_model(cfg: RunConfig, tokenizer: Any) -> Any:
    from llava_wb.data.conversation import special_token_id
    from llava_wb.model import build_model

    if cfg.train.init_from is None:
        return build_model(cfg.model, tokenizer)
    from llava_wb.model import LlavaWBForCausalLM

    path = resolve_init_from(cfg.train.init_from)
    model = LlavaWBForCausalLM.from_pretrained(path, local_files_only=True)
    c, m = model.config, cfg.model
    saved, want = c.parts.to_dict(), m.to_dict()
    for field in INIT_FROM_FIXED:
        have, asked = _at(saved, field), _at(want, field)
        if have != asked:
            raise ConfigError(
                f"train.init_from: {path} was saved with model.{field}={have!r}, this config says {asked!r}"
            )
    if special_token_id(tokenizer, m.image_token) != c.image_token_id:
        raise ConfigError(
            f"tokenizer: {m.image_token!r} has id {special_token_id(tokenizer, m.image_token)} but "
            f"the train.init_from model was built with image_token_id {c.image_token_id}"
        )
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    return model


def _truncate_logs(out: Path, rank: int, step: int, batches: int) -> None:
    """Drop log lines of steps (and batches) after the checkpoint: the resumed run redoes them."""
    logs = [(out / "sample_ids" / f"rank{rank}.jsonl", "batch", batches)]
    if rank == 0:
        logs.append((out / "metrics.jsonl", "step", step))
    for path, key, limit in logs:
        if path.is_file():
            rows = []
            for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError:  # a line torn by the kill that interrupted the run
                    row = None
                if not isinstance(row, dict):
                    log.warning(
                        "%s line %d is not valid JSON (torn by an interrupted write?): dropped: %.80r",
                        path,
                        number,
                        line,
                    )
                elif row.get(key, 0) < limit + (key == "step"):
                    rows.append(line)
            ckpt.write_atomic(path, "".join(r + "\n" for r in rows))


def _at(d: dict[str, Any], dotted: str) -> Any:
    for key in dotted.split("."):
        d = d.get(key) if isinstance(d, dict) else None
    return d


def _grad_accum(cfg: RunConfig, world: int) -> int:
    t, per_step = cfg.train, cfg.data.batch_size * world
    if t.global_batch_size is None:
        return t.grad_accum
    if t.global_batch_size % per_step:
        raise ConfigError(
            f"train.global_batch_size={t.global_batch_size} is not a multiple of data.batch_size "
            f"({cfg.data.batch_size}) x world size ({world})"
        )
    return t.global_batch_size // per_step


def _on_cpu() -> bool:
    import torch

    return not torch.cuda.is_available()


def resolve_bf16(t: Any) -> bool:
    """``train.bf16``; ``auto``: on with a bf16 GPU, or on a CPU that computes bf16 natively unless
    DeepSpeed trains (its bf16 mode keeps the weights themselves in bf16; on a CPU it is for testing)."""
    if t.bf16 != "auto":
        return bool(t.bf16)
    import torch

    if not _on_cpu():
        return torch.cuda.is_bf16_supported()
    from llava_wb.model.cpu_amp import cpu_has_native_bf16

    return not t.deepspeed and cpu_has_native_bf16()


def apply_precision(t: Any, model: Any) -> tuple[bool, list[str]]:
    """``(bf16, switched)``: ``resolve_bf16(t)``, and with CPU bf16 the model's sdpa sub-models switched
    to attention in fp32 (faster there, ``llava_wb.model.cpu_amp``); ``switched`` names them."""
    bf16 = resolve_bf16(t)
    if not (bf16 and _on_cpu()):
        return bf16, []
    from llava_wb.model.cpu_amp import use_fp32_attention

    return bf16, use_fp32_attention(model)


def _training_args(cfg: RunConfig, grad_accum: int, world: int, bf16: bool) -> Any:
    from transformers import TrainingArguments

    t, cpu = cfg.train, _on_cpu()
    report = [r for r in t.report_to if r != "tensorboard"]  # TensorBoard: our callback, fixed folder
    extra: dict[str, Any] = {}
    if t.deepspeed and cpu:
        init_deepspeed_on_cpu()
        extra["accelerator_config"] = {"use_configured_state": True}
    return TrainingArguments(
        output_dir=t.output_dir,
        per_device_train_batch_size=cfg.data.batch_size,
        max_steps=t.max_steps or 1,
        gradient_accumulation_steps=grad_accum,
        learning_rate=t.learning_rate,
        weight_decay=t.weight_decay,
        warmup_steps=t.warmup_ratio,
        lr_scheduler_type=t.lr_scheduler_type,
        max_grad_norm=t.max_grad_norm,
        bf16=bf16,
        activation_checkpointing=t.gradient_checkpointing,
        deepspeed=t.deepspeed,
        logging_steps=t.logging_steps,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=None,
        seed=t.seed,
        data_seed=t.seed,
        report_to=report or "none",
        run_name=t.run_name,
        ignore_data_skip=True,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        use_cpu=cpu and not t.deepspeed,
        ddp_backend="gloo" if cpu and world > 1 else None,
        ddp_find_unused_parameters=False,
        disable_tqdm=True,
        log_level="warning",
        **extra,
    )


def _make_trainer(cfg: RunConfig, args: Any, model: Any, tokenizer: Any, feed: Any) -> Any:
    from transformers.integrations import TensorBoardCallback

    from llava_wb.train.trainer import (
        GroupLRCallback,
        JsonlMetricsCallback,
        LlavaTrainer,
        StopAfterCallback,
    )

    out = Path(cfg.train.output_dir)
    trainer = LlavaTrainer(
        model=model,
        args=args,
        processing_class=tokenizer,
        feed=feed,
        train_cfg=cfg.train,
        save_total_limit=cfg.train.save_total_limit,
    )
    trainer.add_callback(GroupLRCallback(trainer))
    trainer.add_callback(JsonlMetricsCallback(out / "metrics.jsonl"))
    if "tensorboard" in cfg.train.report_to:
        tb = TensorBoardCallback()
        tb.logging_dir = str(out / "tensorboard")
        trainer.add_callback(tb)
    if cfg.train.stop_after is not None:
        trainer.add_callback(StopAfterCallback(cfg.train.stop_after))
    return trainer
