"""Stage ``audio_warmup``: supervised warm-up of an audio tower that has no pretrained weights.

LLaVA-style audio models start from a pretrained Whisper encoder. The demo cannot download one, and
a tower trained from scratch through the LLM's answer loss learns a clip's pitch quickly but counts
its beeps unreliably: whether "how many beeps?" passes its target moved with the data order alone.
This stage stands in for Whisper pretraining, as ``tower_warmup`` does for CLIP: it trains the
audio tower alone on labels derived from each clip's event times, then saves it as an ordinary
transformers folder (``WhisperEncoder``) that the next stage loads with ``model.audio.path``.

Labels (``train.audio_warmup``) come from the sample json's ``meta``, as ``data_tools/synth_av.py``
writes it: ``onsets`` and ``durations`` (seconds) of the clip's events and its class under
``meta[attribute]`` (the demo: ``pitch``, high or low). The heads read the tower's output tokens,
the very features the LLM's audio projector receives (``tokens_per_second`` of them per second):
per token, ``event`` (0 = none, else the clip's class where an event covers at least
``min_overlap`` of the token) and ``onset`` (1 on the token where an event starts); per clip,
``count`` (1..``max_events``). Events that start after the tower's window are not heard and not
labelled. Samples that are not exactly one audio clip are left out of the batches (counted as
unlabelled); a clip whose labels are missing or malformed is skipped and counted by reason.

The loop, outputs and held-out evaluation are ``llava_wb.train.warmup_loop``'s: ``OUTPUT/final``,
``warmup_heads.safetensors``, ``metrics.jsonl`` and ``result.json``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from llava_wb.data.config import MediaSettings
from llava_wb.data.decode import decode_sample, media_fields, parse_json
from llava_wb.data.errors import SampleError
from llava_wb.train.config import AudioWarmupConfig, RunConfig
from llava_wb.train.warmup_loop import WarmupHeads, WarmupTask, check_single_process, run_warmup


class ClipLabels:
    """Worker-side step: decode an audio sample and derive its per-token and per-clip labels."""

    def __init__(self, settings: MediaSettings, tokens: int, seconds: float, warmup: AudioWarmupConfig):
        self.settings, self.tokens, self.seconds, self.w = settings, tokens, seconds, warmup

    def __call__(self, raw: dict[str, Any]) -> dict[str, torch.Tensor] | None:
        if [m for m, _ in media_fields(raw, parse_json(raw))] != ["audio"]:
            return None  # not one audio clip: nothing to label (``collate`` counts it as unlabelled)
        d = decode_sample(raw, self.settings)
        return {"audio_values": d["media"]["audio"][0], **self.labels(d["meta"].get("meta"))}

    def labels(self, meta: Any) -> dict[str, torch.Tensor]:
        """``event`` and ``onset`` per token, ``count`` (events - 1) from a clip's ``meta``."""
        w = self.w
        if not isinstance(meta, dict) or not all(k in meta for k in ("onsets", "durations", w.attribute)):
            raise SampleError(
                "missing_field", f"the audio warm-up needs meta.onsets, meta.durations and meta.{w.attribute}"
            )
        onsets, durations, value = meta["onsets"], meta["durations"], meta[w.attribute]
        if value not in w.classes:
            raise SampleError("bad_label", f"meta.{w.attribute}={value!r} is not one of {w.classes}")
        if not isinstance(onsets, list) or not isinstance(durations, list) or len(onsets) != len(durations):
            raise SampleError("bad_label", "meta.onsets and meta.durations must be lists of the same length")
        if not all(isinstance(x, (int, float)) and math.isfinite(x) for x in onsets + durations):
            raise SampleError("bad_label", "meta.onsets and meta.durations must hold finite numbers (seconds)")
        if any(o < 0 for o in onsets) or any(d <= 0 for d in durations):
            raise SampleError("bad_label", "event onsets must be >= 0 s and durations > 0 s")
        heard = [(float(o), float(d)) for o, d in zip(onsets, durations) if o < self.seconds]
        if not 1 <= len(heard) <= w.max_events:
            raise SampleError(
                "bad_label",
                f"{len(heard)} events start inside the tower's {self.seconds:g} s window; "
                f"train.audio_warmup.max_events is {w.max_events} (and at least one is needed)",
            )
        step = self.seconds / self.tokens
        starts = torch.arange(self.tokens, dtype=torch.float64) * step
        event = torch.zeros(self.tokens, dtype=torch.long)
        onset = torch.zeros(self.tokens, dtype=torch.long)
        for o, d in heard:
            cover = (torch.clamp(starts + step, max=o + d) - torch.clamp(starts, min=o)).clamp(min=0)
            event[cover >= w.min_overlap * step - 1e-9] = w.classes.index(value) + 1
            onset[min(int(o / step + 1e-9), self.tokens - 1)] = 1
        return {"event": event, "onset": onset, "count": torch.tensor(len(heard) - 1)}


def head_classes(w: AudioWarmupConfig) -> dict[str, int]:
    return {"event": len(w.classes) + 1, "onset": 2, "count": w.max_events}


def train_audio_tower(cfg: RunConfig) -> dict[str, Any]:
    """Run the audio warm-up stage (see the module docstring); returns the ``result.json`` dict."""
    from llava_wb.model.audio import build_audio_tower
    from llava_wb.model.media import audio_settings
    from llava_wb.train.run_folder import prepare_run_folder

    t, w, a = cfg.train, cfg.train.audio_warmup, cfg.model.audio
    check_single_process(cfg)
    out = prepare_run_folder(cfg)
    torch.manual_seed(t.seed)
    tower = build_audio_tower(a.type, path=a.path, config=a.config, tokens_per_second=a.tokens_per_second)
    fixed = {id(p) for p in tower.fixed_parameters()}
    for p in tower.fixed_parameters():
        p.requires_grad_(False)
    heads = WarmupHeads(tower.hidden_size, head_classes(w))
    settings = MediaSettings(cfg.data.image, cfg.data.video, audio_settings(tower, cfg.data.audio))
    task = WarmupTask(
        stage="audio_warmup",
        tower=tower,
        heads=heads,
        params=[p for p in tower.parameters() if id(p) not in fixed] + list(heads.parameters()),
        labeller=ClipLabels(settings, tower.tokens_per_clip, tower.seconds, w),
        input_key="audio_values",
        weights=w.weights,
        eval_sources=w.eval_sources,
        save=tower.model.save_pretrained,
        describe=f"{tower.tokens_per_clip} tokens per {tower.seconds:g} s clip, heads {head_classes(w)}",
    )
    return run_warmup(cfg, task, out)
