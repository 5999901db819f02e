"""``llava-wb-export RUN_OR_MODEL_DIR OUT``: a complete transformers folder for a llava_wb model.

The folder loads with plain transformers (``AutoProcessor``, ``LlavaForConditionalGeneration``,
``pipeline("image-text-to-text")``), no llava_wb needed. It holds

- the weights and ``config.json`` of ``LlavaForConditionalGeneration`` (``to_hf_llava``), and a
  ``generation_config.json`` that stops at the tokenizer's eos;
- the tokenizer, with a chat template that renders prompts exactly as the model was trained
  (``vicuna_v1`` or the tokenizer's own ``chat_template``; BOS first, as llava_wb adds it) and
  takes string content or HF's list of parts (``[{"type": "image"}, {"type": "text", ...}]``);
- a ``LlavaImageProcessorPil`` that preprocesses like llava_wb (``data.image``): pad to square with
  ``int(255 * mean)`` (``aspect: pad``, ``do_pad``) or squash (``aspect: resize``), resize to the
  tower's size with the same filter, rescale, normalise with the same mean/std;
- the ``LlavaProcessor`` settings (patch size, feature select strategy, additional image tokens,
  ``image_seq_length``) that expand ``<image>`` to the model's ``tokens_per_image``.

Before writing, the export checks that the processor's prompt ids (placeholders expanded) equal
llava_wb's for a probe conversation; a model HF Llava cannot express (a token reducer, an audio
tower, a projector other than ``mlp2x_gelu``/``linear``, the ``plain`` template) is refused with
the reason. HF Llava reads images only: video input does not carry over (docs/eval.md).

The image settings and template come from the run folder's ``resolved_config.yaml`` (a model
folder inside a run, such as ``RUN/final``, finds it one level up); a bare model folder uses its
tower's size and normalisation, ``aspect: pad`` and ``vicuna_v1``.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import yaml

from .data.config import ImageConfig
from .data.templates import VICUNA_ROLES, VICUNA_SYSTEM
from .tokenizer import CONTENT_MACRO

EXPORTABLE_TEMPLATES = ("vicuna_v1", "chat_template")
PROBE = [
    {"from": "human", "value": "<image>\nWhat colour is the circle?"},
    {"from": "gpt", "value": "red"},
    {"from": "human", "value": "How many shapes are there?"},
]


def vicuna_chat_template(system: str = VICUNA_SYSTEM) -> str:
    """llava_wb's ``vicuna_v1`` as jinja: ``<s>{system} USER: {q} ASSISTANT: {a}</s>USER: ...``
    (a leading ``system`` message replaces the default system prompt)."""
    user, assistant = VICUNA_ROLES
    return CONTENT_MACRO + (
        "{{ bos_token }}"
        "{% if messages and messages[0]['role'] == 'system' %}"
        "{{ render_content(messages[0]['content']) + ' ' }}{% set loop_messages = messages[1:] %}"
        f"{{% else %}}{{{{ {system + ' '!r} }}}}{{% set loop_messages = messages %}}{{% endif %}}"
        "{% for message in loop_messages %}"
        "{% if message['role'] == 'user' %}"
        f"{{{{ '{user}: ' + render_content(message['content']) }}}}"
        f"{{% if not loop.last or add_generation_prompt %}}{{{{ ' {assistant}:' }}}}{{% endif %}}"
        "{% else %}{{ ' ' + render_content(message['content']) + eos_token }}{% endif %}"
        "{% endfor %}"
    )


def run_settings(source: str | Path) -> tuple[Path, dict[str, Any]]:
    """``(model folder, run config dict or {})`` for a run folder or a model folder."""
    path = Path(source)
    if (path / "config.json").is_file():
        model_dir = path
    elif (path / "final" / "config.json").is_file():
        model_dir = path / "final"
    else:
        raise FileNotFoundError(
            f"{path} is neither a model folder (config.json) nor a run folder with final/config.json"
        )
    for folder in (model_dir, model_dir.parent):
        if (folder / "resolved_config.yaml").is_file():
            return model_dir, yaml.safe_load((folder / "resolved_config.yaml").read_text()) or {}
    return model_dir, {}


def image_settings(model: Any, run: dict[str, Any]) -> ImageConfig:
    """The run's ``data.image``; without a run, the tower's size and normalisation with ``pad``."""
    section = (run.get("data") or {}).get("image")
    if section:
        fields = {f.name for f in dataclasses.fields(ImageConfig)}
        return ImageConfig(**{k: v for k, v in section.items() if k in fields})
    tower = model.vision_tower
    return ImageConfig(size=tower.image_size, mean=tower.image_mean, std=tower.image_std)


def image_processor(image: ImageConfig) -> Any:
    """A ``LlavaImageProcessorPil`` that computes what llava_wb's ``ImageTransform`` computes."""
    from transformers.image_utils import PILImageResampling
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

    square = {"height": image.size, "width": image.size}
    return LlavaImageProcessorPil(
        do_pad=image.aspect == "pad",
        do_resize=True,
        size=square,
        resample=PILImageResampling[image.resample.upper()],
        do_center_crop=False,
        crop_size=square,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(image.mean),
        image_std=list(image.std),
        do_convert_rgb=True,
    )


def chat_template_for(template: str, tokenizer: Any) -> str:
    if template == "vicuna_v1":
        return vicuna_chat_template()
    if template == "chat_template":
        own = getattr(tokenizer, "chat_template", None)
        if not own:
            raise ValueError("template 'chat_template' but the tokenizer has no chat_template")
        # llava_wb puts BOS first when the tokenizer has one and the template did not write it
        return own if tokenizer.bos_token is None or "bos_token" in own else "{{ bos_token }}" + own
    raise ValueError(
        f"template {template!r} does not export: HF chat templates are offered for "
        f"{', '.join(EXPORTABLE_TEMPLATES)} ('plain' drops the question text, so it answers nothing)"
    )


def _as_messages(conversation: list[dict[str, str]], image: Any) -> list[dict[str, Any]]:
    """LLaVA turns -> HF messages with list-of-parts content (the image part carries ``image``)."""
    out = []
    for turn in conversation:
        parts: list[dict[str, Any]] = []
        for i, piece in enumerate(turn["value"].split("<image>")):
            if i:
                parts.append({"type": "image", "image": image})
            if piece.strip("\n"):
                parts.append({"type": "text", "text": piece.strip("\n")})
        out.append({"role": "user" if turn["from"] == "human" else "assistant", "content": parts})
    return out


def check_prompt_ids(model: Any, tokenizer: Any, template: str, processor: Any, image: ImageConfig) -> int:
    """Raise unless the HF processor's prompt ids equal llava_wb's for ``PROBE``; returns their length."""
    from PIL import Image

    from .data.conversation import get_template

    ours = (
        get_template(template, tokenizer)
        .tokenize(PROBE, max_length=None, media_tokens=model.media_tokens, add_generation_prompt=True)
        .input_ids
    )
    picture = Image.new("RGB", (image.size, image.size // 2), (200, 30, 30))
    try:
        theirs = processor.apply_chat_template(
            _as_messages(PROBE, picture), add_generation_prompt=True, tokenize=True, return_dict=True
        )["input_ids"][0]
    except Exception as e:  # jinja raises TypeError & co. on content it does not expect
        raise ValueError(
            f"the {template!r} chat template does not render HF's list-of-parts content "
            f"([{{'type': 'image'}}, {{'type': 'text', ...}}]): {type(e).__name__}: {e}. Give the "
            "tokenizer a template that does (llava_wb.tokenizer.CONTENT_MACRO) or export with "
            "--template vicuna_v1 if the model was trained with it"
        ) from e
    theirs = list(theirs)
    if theirs != list(ours):
        raise ValueError(
            f"the exported chat template does not reproduce llava_wb's {template!r} prompt: HF ids "
            f"{theirs[:40]}... vs llava_wb {list(ours)[:40]}..."
        )
    return len(theirs)


def export_hf(
    source: str | Path | None,
    out: str | Path,
    *,
    template: str | None = None,
    aspect: str | None = None,
    image: ImageConfig | None = None,
    model: Any = None,
    tokenizer: Any = None,
) -> Path:
    """Write the transformers folder for ``source`` (a run or model folder) into ``out``; returns it.

    ``template``/``aspect``/``image`` override the run's settings. ``model`` and ``tokenizer`` (both)
    export an in-memory model; ``source`` then only supplies the run config (or is ``None``)."""
    from transformers import GenerationConfig
    from transformers.models.llava.processing_llava import LlavaProcessor

    from .model.bundle import load_bundle
    from .model.hf_llava import to_hf_llava

    run: dict[str, Any] = {}
    if source is not None:
        model_dir, run = run_settings(source)
        if model is None or tokenizer is None:
            model, tokenizer = load_bundle(model_dir)
    elif model is None or tokenizer is None:
        raise ValueError("export_hf needs a source folder or both model and tokenizer")
    template = template or (run.get("data") or {}).get("template") or "vicuna_v1"
    image = image or image_settings(model, run)
    if aspect is not None:
        image = dataclasses.replace(image, aspect=aspect)
    tower = model.vision_tower
    if image.size != tower.image_size:
        raise ValueError(f"image size {image.size} but the vision tower takes {tower.image_size}")
    hf = to_hf_llava(model)  # raises for what HF Llava cannot express
    processor = LlavaProcessor(
        image_processor=image_processor(image),
        tokenizer=tokenizer,
        patch_size=tower.patch_size,
        vision_feature_select_strategy=hf.config.vision_feature_select_strategy,
        num_additional_image_tokens=1 if tower.has_cls else 0,
        chat_template=chat_template_for(template, tokenizer),
    )
    n = (image.size // tower.patch_size) ** 2 + processor.num_additional_image_tokens
    n -= 1 if processor.vision_feature_select_strategy == "default" else 0
    if n != model.tokens_per_image:
        raise ValueError(
            f"HF's processor would expand <image> to {n} tokens but the model reads {model.tokens_per_image}"
        )
    check_prompt_ids(model, tokenizer, template, processor, image)
    hf.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="llava-wb-export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("source", help="a run folder (with final/) or a model folder written by save_bundle")
    p.add_argument("out", help="the transformers folder to write")
    p.add_argument("--template", default=None, choices=EXPORTABLE_TEMPLATES, help="default: the run's data.template")
    p.add_argument("--aspect", default=None, choices=["pad", "resize"], help="default: the run's data.image.aspect")
    args = p.parse_args(argv)
    path = export_hf(args.source, args.out, template=args.template, aspect=args.aspect)
    print(f"wrote {path}: load with AutoProcessor / LlavaForConditionalGeneration.from_pretrained({str(path)!r})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
