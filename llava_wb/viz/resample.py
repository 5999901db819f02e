"""Which visual tokens an instruction-aware reducer keeps for a question, per frame, side by side.

``kept_for_questions`` runs a model's reducer (``instruct_resample``) on one image or clip once per
question (the question alone as the instruction, through the same template code as training) and
returns each selection; ``draw_kept`` shows them: one row per question, one panel per frame, kept
patches in full colour with a white border, merged patches dimmed and tinted by the kept token
they joined. Two questions on the same clip make the conditioning visible. The long synthetic
clip whose answer sits in one frame and one region comes from ``data_tools.examples.needle_clip``
(the library never imports the tools); ``needle_questions`` asks two questions about it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def kept_for_questions(
    model: Any,
    tokenizer: Any,
    values: Any,
    questions: Sequence[str],
    *,
    kind: str = "image",
    template: str = "vicuna_v1",
) -> list[Any]:
    """``values``: one image ``[3, S, S]`` or clip ``[T, 3, S, S]`` (normalised, as the loader gives
    them); returns one ``ReducerOutput`` (batch of 1) per question."""
    import torch

    from llava_wb.data.collate import Collator
    from llava_wb.data.conversation import build_prompt

    reducer = model.reducer if kind == "image" else model.video_reducer
    if not reducer.needs_instruction:
        raise ValueError(f"the model's {kind} reducer ({type(reducer).__name__}) does not read the instruction")
    outs: list[Any] = []
    values = values.to(next(model.parameters()).device)
    hook = reducer.register_forward_hook(lambda mod, args, out: outs.append(out))
    try:
        for q in questions:
            t = build_prompt(
                [{"from": "human", "value": f"<{kind}>\n{q}"}],
                tokenizer,
                template,
                max_length=None,
                media_tokens=model.media_tokens,
                expected_media={kind: 1},
            )
            batch = Collator(tokenizer.pad_token_id)(
                [
                    {
                        "input_ids": t.input_ids,
                        "labels": t.labels,
                        "instruction_mask": t.instruction_mask,
                        "media": {kind: [values]},
                    }
                ]
            )
            key = {"image": "pixel_values", "video": "video_values"}[kind]
            with torch.no_grad():
                model.embed_inputs(
                    batch["input_ids"],
                    **(
                        {"pixel_values": batch[key], "image_counts": batch["image_counts"]}
                        if kind == "image"
                        else {"video_values": batch[key], "video_counts": batch["video_counts"]}
                    ),
                    instruction_mask=batch["instruction_mask"],
                )
    finally:
        hook.remove()
    return outs


def draw_kept(clip: np.ndarray, outs: Sequence[Any], questions: Sequence[str], patch: int):
    """``clip`` uint8 ``[T, S, S, 3]`` (or ``[S, S, 3]``) as the tower sees it; one row per question."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    clip = clip[None] if clip.ndim == 3 else clip
    t, size = clip.shape[0], clip.shape[1]
    side = size // patch
    fig, axes = plt.subplots(len(outs), t, figsize=(2.4 * t, 2.6 * len(outs)), squeeze=False)
    rng = np.random.default_rng(0)
    for row, (out, q) in enumerate(zip(outs, questions)):
        kept = set(out.positions[0].tolist())
        groups = out.group_ids[0].view(t, side, side).cpu().numpy()
        tint = rng.uniform(0.2, 1.0, size=(int(groups.max()) + 1, 3))
        for f in range(t):
            ax = axes[row, f]
            img = clip[f].astype(np.float32) / 255.0
            shade = np.repeat(np.repeat(tint[groups[f]], patch, 0), patch, 1)
            is_kept = np.array([[f * side * side + r * side + c in kept for c in range(side)] for r in range(side)])
            mask = np.repeat(np.repeat(is_kept, patch, 0), patch, 1)[..., None]
            ax.imshow(np.where(mask, img, 0.35 * img + 0.35 * shade))
            for r, c in zip(*np.nonzero(is_kept)):
                ax.add_patch(
                    Rectangle((c * patch - 0.5, r * patch - 0.5), patch, patch, fill=False, ec="white", lw=1.2)
                )
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"frame {f}" if t > 1 else "", fontsize=8)
        axes[row, 0].set_ylabel("\n".join(_wrap(q, 22)), fontsize=8)
    fig.suptitle(f"kept tokens per question ({len(outs[0].positions[0])} of {t * side * side})", fontsize=10)
    fig.tight_layout()
    return fig


def _wrap(text: str, width: int) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width)[:4]


def resample_model(model_dir: str | None = None, *, ratio: float = 0.75, frames: int = 4) -> tuple[Any, Any]:
    """(model, tokenizer) whose image and video reducers are ``instruct_resample`` (``mode: zero``,
    ``ratio``): a saved bundle with its reducers swapped at inference (no retraining: that mode has
    no parameters), or, without ``model_dir``, a tiny untrained model built locally (shapes only)."""
    import torch

    from llava_wb.model import ModelConfig, build_model
    from llava_wb.model.reducers import build_reducer

    if model_dir is not None:
        from llava_wb.model.bundle import load_bundle

        model, tok = load_bundle(model_dir)
        model.reducer = build_reducer("instruct_resample", {"ratio": ratio})
        model.video_reducer_module = build_reducer("instruct_resample", {"ratio": ratio})
        return model.eval(), tok
    from llava_wb.tokenizer import build_demo_tokenizer, demo_corpus

    tok = build_demo_tokenizer(demo_corpus(["what colour is the circle which way does the square move"]))
    torch.manual_seed(0)
    cfg = {
        "vision": {
            "type": "clip",
            "config": dict(
                image_size=64,
                patch_size=8,
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
            ),
        },
        "llm": {
            "config": dict(
                model_type="llama",
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=1,
                num_attention_heads=4,
                num_key_value_heads=2,
            )
        },
        "reducer": {"type": "instruct_resample", "options": {"ratio": ratio}},
        "video": {"frames": frames},
    }
    return build_model(ModelConfig.from_dict(cfg), tok).eval(), tok


def needle_questions(meta: dict[str, Any]) -> list[str]:
    """Two questions on a needle clip: the needle's colour, and the colour of a shape it is not."""
    shape = meta["objects"][meta["needle"]]["shape"]
    other = next(o["shape"] for o in meta["objects"] if o["shape"] != shape)
    return [f"What colour is the {shape}?", f"What colour is the {other}?"]


def as_model_input(model: Any, clip: np.ndarray) -> tuple[np.ndarray, Any]:
    """uint8 ``[T, H, W, 3]`` -> (the clip resized to the tower's input, normalised ``[T, 3, S, S]``)."""
    from PIL import Image

    from llava_wb.data.config import ImageConfig
    from llava_wb.data.decode import image_transform

    tower = model.vision_tower
    cfg = ImageConfig(size=tower.image_size, aspect="resize", mean=tower.image_mean, std=tower.image_std)
    resized = np.stack([np.asarray(Image.fromarray(f).resize((tower.image_size,) * 2, Image.BICUBIC)) for f in clip])
    return resized, image_transform(cfg).normalise(resized)
