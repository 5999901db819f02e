"""lmms-eval requests -> llava_wb prompts, without lmms-eval: the part of the adapter that needs no harness.

An lmms-eval ``generate_until`` request carries a context string, generation kwargs and the
visuals of its document (PIL images, video/audio file paths, ``{"array", "sampling_rate"}``
audio). :func:`build_prompt_item` turns one into what :func:`llava_wb.eval.evaluate.answer_batch`
generates from (``ids``, ``instruction``, ``media``), by the code the evaluator uses:

* the conversation: a document built from llava_wb shards (``python -m llava_wb.eval.lmms_task``)
  carries ``llava_wb_conversation``, the turns up to the question (earlier reference answers
  included, as the evaluator prompts); any other document becomes one human turn, the context
  preceded by one ``<image>``/``<video>``/``<audio>`` line per visual (LLaVA's layout) unless the
  context already holds the placeholders;
* the media: bytes decoded by llava_wb's own decoders (``MEDIA_DECODERS``) with the model's
  settings. A PIL image opened from a file is re-read from that file, so a JPEG takes the same
  (draft-mode) decode path as in training; an in-memory image is encoded losslessly (PNG) first;
* the ids: the run's conversation template with ``add_generation_prompt=True``.

:func:`load_run` opens a run folder (its ``final/`` bundle and ``resolved_config.yaml``) or a
bundle folder. :func:`manifest` is the ``lmms_eval.models`` entry point (model name ``llava_wb``).
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data.decode import EXT_MODALITY, MEDIA_DECODERS, DecodedMedia

PLACEHOLDERS = {"image": "<image>", "video": "<video>", "audio": "<audio>"}
DOC_CONVERSATION = "llava_wb_conversation"


def manifest():
    """lmms-eval's model manifest for ``--model llava_wb`` (entry point group ``lmms_eval.models``)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id="llava_wb", simple_class_path="llava_wb.eval.lmms_adapter.LlavaWbLMM")


@dataclass
class RunSettings:
    """How a run was trained to read its input: template name and image aspect handling."""

    bundle: Path
    template: str = "vicuna_v1"
    aspect: str = "pad"


def run_settings(path: str | os.PathLike) -> RunSettings:
    """A run folder (``final/`` + ``resolved_config.yaml``) or a bundle folder -> its bundle and settings."""
    import yaml

    p = Path(path)
    bundle = p / "final" if (p / "final" / "config.json").is_file() else p
    if not (bundle / "config.json").is_file():
        raise FileNotFoundError(f"{p}: neither a saved model (config.json) nor a run folder with final/config.json")
    settings = RunSettings(bundle=bundle)
    for cfg_path in (p / "resolved_config.yaml", bundle.parent / "resolved_config.yaml"):
        if cfg_path.is_file():
            data = (yaml.safe_load(cfg_path.read_text()) or {}).get("data") or {}
            settings.template = data.get("template", settings.template)
            settings.aspect = (data.get("image") or {}).get("aspect", settings.aspect)
            break
    return settings


def load_run(path: str | os.PathLike, *, template: str | None = None, aspect: str | None = None):
    """``(model, tokenizer, template, media settings)`` for a run or bundle folder; explicit
    ``template``/``aspect`` override the run's own."""
    from ..model.bundle import load_bundle
    from ..model.media import media_settings
    from .evaluate import image_config_for

    s = run_settings(path)
    model, tokenizer = load_bundle(s.bundle)
    model.eval()
    return model, tokenizer, template or s.template, media_settings(model, image_config_for(model, aspect or s.aspect))


def visual_bytes(visual: Any) -> tuple[str, bytes]:
    """One lmms-eval visual -> ``(modality, bytes)`` for llava_wb's decoders."""
    from PIL import Image

    if isinstance(visual, Image.Image):
        name = getattr(visual, "filename", "")
        if name and os.path.isfile(name):
            return "image", Path(name).read_bytes()
        buf = io.BytesIO()
        visual.save(buf, "PNG")
        return "image", buf.getvalue()
    if isinstance(visual, (str, os.PathLike)):
        ext = os.fspath(visual).rsplit(".", 1)[-1].lower()
        if ext not in EXT_MODALITY:
            raise ValueError(f"visual {visual!r}: unknown media extension {ext!r} (known: {sorted(EXT_MODALITY)})")
        return EXT_MODALITY[ext], Path(visual).read_bytes()
    if isinstance(visual, dict) and "array" in visual and "sampling_rate" in visual:
        import numpy as np

        from ..data.audio import encode_audio

        wave = np.asarray(visual["array"], dtype=np.float32)
        return "audio", encode_audio(wave, int(visual["sampling_rate"]), "wav")
    raise ValueError(
        f"visual of type {type(visual).__name__} is not supported: give a PIL image, a media file path "
        "or an {'array', 'sampling_rate'} audio dict"
    )


def request_conversation(context: str, modalities: Sequence[str], doc: dict | None = None) -> list[dict[str, str]]:
    """The conversation to prompt with: the document's llava_wb turns, else one human turn."""
    if doc is not None and doc.get(DOC_CONVERSATION):
        turns = doc[DOC_CONVERSATION]
        return [dict(t) for t in (turns if isinstance(turns, list) else json.loads(turns))]
    if any(p in context for p in PLACEHOLDERS.values()):
        return [{"from": "human", "value": context}]
    prefix = "".join(PLACEHOLDERS[m] + "\n" for m in modalities)
    return [{"from": "human", "value": prefix + context}]


def build_prompt_item(
    context: str,
    visuals: Sequence[Any],
    doc: dict | None,
    *,
    template,
    media_tokens: dict[str, int],
    settings,
    max_length: int,
) -> dict[str, Any]:
    """One request -> ``{"ids", "instruction", "media"}`` (``template``: a llava_wb template object)."""
    media: dict[str, list] = {}
    modalities = []
    for visual in visuals:
        modality, data = visual_bytes(visual)
        value = MEDIA_DECODERS.get(modality)(data, settings)
        media.setdefault(modality, []).append(value.value if isinstance(value, DecodedMedia) else value)
        modalities.append(modality)
    conversation = request_conversation(context, modalities, doc)
    tok = template.tokenize(
        conversation,
        max_length=max_length,
        media_tokens=media_tokens,
        add_generation_prompt=True,
        expected_media={m: len(v) for m, v in media.items()},
    )
    return {"ids": tok.input_ids, "instruction": tok.instruction_mask, "media": media}


def cut_at_stops(text: str, until: Sequence[str]) -> str:
    """lmms-eval's ``until``: the answer ends before the first stop string it contains."""
    for stop in until:
        if stop and stop in text:
            text = text.split(stop, 1)[0]
    return text
