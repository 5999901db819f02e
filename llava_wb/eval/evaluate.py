"""Answer every question of held-out shards with greedy decoding and score it.

Each assistant turn is one question: the prompt is the conversation up to that question (earlier
reference answers included), built by the same template code as training (``build_prompt``), so
the prompt ids are exactly the prefix the model was trained on. Question types come from the
record's ``meta.qtypes`` (the synthetic generator writes them); records without them count as
``all``. Prompts are left-padded and generated in batches.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from ..data.config import DataConfig, ImageConfig, MediaSettings
from ..data.conversation import get_template, split_for_eval
from ..data.errors import SampleError
from ..data.loader import build_loader
from ..data.pipeline import DecodeOnly
from .metrics import EvalResult


def image_config_for(model, aspect: str = "pad") -> ImageConfig:
    """The preprocessing a model's tower expects: its input size and normalisation."""
    tower = model.vision_tower
    return ImageConfig(size=tower.image_size, aspect=aspect, mean=tower.image_mean, std=tower.image_std)


def _items(
    shards: list[str], media: MediaSettings, template, media_tokens: dict[str, int], max_length: int, limit: int | None
) -> Iterator[dict[str, Any]]:
    cfg = DataConfig(
        sources=[{"path": s} for s in shards],
        batch_size=16,
        num_workers=0,
        epoch_mode="exact",
        shuffle_shards=False,
        shuffle_buffer=0,
        image=media.image,
        video=media.video,
        audio=media.audio,
        max_skip_rate=0.05,
    )
    n = 0
    for batch in build_loader(cfg, process=DecodeOnly(media)):
        for s in batch["samples"]:
            qtypes = (s["meta"].get("meta") or {}).get("qtypes") or []
            human = [t for t in s["conversations"] if t.get("from") in ("human", "user")]
            for item in split_for_eval(s["conversations"]):
                try:
                    tok = template.tokenize(
                        item.prompt,
                        max_length=max_length,
                        media_tokens=media_tokens,
                        add_generation_prompt=True,
                        expected_media={m: len(v) for m, v in s["media"].items()},
                    )
                except SampleError as e:
                    raise SampleError(e.reason, e.detail, key=s["key"]) from None
                # Media appear in the first human turn; every prompt of the sample carries them.
                yield {
                    "id": s["id"],
                    "turn": item.turn,
                    "ids": tok.input_ids,
                    "answer": item.answer,
                    "instruction": tok.instruction_mask,
                    "qtype": qtypes[item.turn] if item.turn < len(qtypes) else "all",
                    "question": human[item.turn]["value"] if item.turn < len(human) else "",
                    "media": s["media"],
                }
                n += 1
                if limit is not None and n >= limit:
                    return


def _left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s) :] = 1
    return ids, mask


def _media_batch(chunk: list[dict[str, Any]], device: Any) -> dict[str, Any]:
    """``pixel_values``/``video_values``/``audio_values`` and their per-prompt counts."""
    from ..data.collate import MEDIA_VALUE_KEYS

    out: dict[str, Any] = {}
    for kind, key in MEDIA_VALUE_KEYS.items():
        items = [x for c in chunk for x in c["media"].get(kind, [])]
        out[key] = torch.stack(items).to(device) if items else None
        out[f"{kind}_counts"] = torch.tensor([len(c["media"].get(kind, [])) for c in chunk])
    return out


@torch.no_grad()
def answer_batch(
    model, tokenizer, chunk: list[dict[str, Any]], *, max_new_tokens: int = 8, **generate_kwargs: Any
) -> list[str]:
    """Greedy answers (text up to EOS) for prompts ``{"ids", "instruction", "media"}``, left-padded
    into one batch: the generation of the evaluator and of the lmms-eval adapter."""
    device = next(model.parameters()).device
    ids, mask = _left_pad([c["ids"] for c in chunk], tokenizer.pad_token_id)
    instruction, _ = _left_pad([c["instruction"] for c in chunk], 0)
    out = model.generate(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        **_media_batch(chunk, device),
        instruction_mask=instruction.to(device),
        max_new_tokens=max_new_tokens,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **generate_kwargs,
    )
    answers = []
    for new in out:
        new = new.tolist()
        if tokenizer.eos_token_id in new:
            new = new[: new.index(tokenizer.eos_token_id)]
        answers.append(tokenizer.decode(new, skip_special_tokens=True))
    return answers


@torch.no_grad()
def evaluate(
    model,
    tokenizer,
    shards: list[str],
    *,
    image: ImageConfig | MediaSettings,
    template: str = "vicuna_v1",
    max_length: int = 512,
    batch_size: int = 32,
    max_new_tokens: int = 8,
    limit: int | None = None,
    progress: bool = True,
) -> EvalResult:
    """Greedy answers for every question in ``shards``; returns per-type exact match + majority baseline.
    ``image``: the image settings (video frames and the audio window then come from the model)."""
    from tqdm.auto import tqdm

    from ..model.media import media_settings

    model.eval()
    tmpl = get_template(template, tokenizer)
    media_tokens = model.media_tokens
    result = EvalResult()
    bar = tqdm(desc="evaluating", unit="q", disable=not progress)
    items = _items(shards, media_settings(model, image), tmpl, media_tokens, max_length, limit)
    while True:
        chunk = [it for _, it in zip(range(batch_size), items)]
        if not chunk:
            break
        for c, prediction in zip(chunk, answer_batch(model, tokenizer, chunk, max_new_tokens=max_new_tokens)):
            result.add(
                id=c["id"],
                qtype=c["qtype"],
                turn=c["turn"],
                question=c["question"],
                answer=c["answer"],
                prediction=prediction,
            )
        bar.update(len(chunk))
    bar.close()
    return result
