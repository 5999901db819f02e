"""Needle-in-an-image task of the synthetic generator (``make_synthetic`` imports this module, which registers it).

**needle** (modality ``needle``; the record's media field is ``image`` with an ``<image>`` placeholder,
``images/<split>/<index>.<fmt>``, so the image pipeline and tower read it like any image): 6-10 *small*
shapes (side ``SIDE_FRAC`` of the image, 12-13 px at 64 px) scattered freely over the image, at least
``GAP_PX`` apart, drawn like the images (same background, palette, shapes and gray noise). Exactly one
object, the *needle*, has the shape the question names; the distractors have the other shapes and any
colour (the needle's colour included), so the answer is in the needle's own patches only. Objects are
not aligned to any grid: a 2x2 pooling window of the demo tower's 8x8 patch grid (16 px) often holds
parts of two or three objects.

The needle lies entirely on one side of the vertical centre line. At 64 px with the demo tower's 8-px
patches every object covers at least one patch by >= 56% (a 12-px side spans >= 6 px of some patch
along each axis; 10 px would not guarantee 50%), so every needle has patches of its own. Questions
(1-2 turns, both about the needle):

* ``needle_colour``: "What colour is the {shape}?" -> its colour (red/green/blue/yellow);
* ``needle_position``: "Is the {shape} on the left or the right?" -> left/right (the needle's side).

The needle's shape, colour and side are drawn uniformly and independently, so both answers are
balanced. Captions (pretrain) list the objects in reading order and name the needle
("... ; the only triangle is red."). ``meta.objects`` lists the objects in reading order (by their
``cell`` of a ``CELL_GRID`` x ``CELL_GRID`` grid, then x) with the image task's schema (``shape``,
``colour``, ``cx``, ``cy``, ``cell [row, col]``, ``bbox [x0, y0, x1, y1]`` with exclusive ends), plus
``needle`` (the needle's index there) and ``needle_bbox``. The tower warm-up can label them with
``train.warmup.cell_grid=4`` and ``max_objects=10``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from data_tools.synth_core import (
    COLOURS,
    SHAPES,
    Sample,
    SampleContext,
    SynthConfig,
    TaskSpec,
    _turns,
    _with_placeholder,
    register_task,
    render_image,
)

MODALITY = "needle"
N_OBJECTS = (6, 10)  # inclusive
SIDE_FRAC = (0.185, 0.205)  # object side / image side: 12-13 px at 64 px
GAP_PX = 1  # minimum distance between two objects' boxes
CELL_GRID = 4  # the ``cell`` of an object: the cell of its centre in a 4x4 grid
MIN_SIZE = 48  # below this 10 shapes no longer fit apart
_TRIES = 2000  # placements of one object before the whole layout starts over
_RESTARTS = 200
SIDES: tuple[str, ...] = ("left", "right")

NEEDLE_QUESTIONS: dict[str, tuple[str, ...]] = {
    "needle_colour": ("What colour is the {shape}?", "Which colour does the {shape} have?"),
    "needle_position": (
        "Is the {shape} on the left or the right?",
        "Is the {shape} on the left side or the right side?",
    ),
}
CAPTION_PROMPTS = ("Describe the image briefly.", "List the shapes you see.", "What is in this image?")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


def _fits(box: list[int], boxes: list[list[int]]) -> bool:
    return all(
        box[2] + GAP_PX <= b[0] or b[2] + GAP_PX <= box[0] or box[3] + GAP_PX <= b[1] or b[3] + GAP_PX <= box[1]
        for b in boxes
    )


def plan_needle(rng: np.random.Generator, size: int) -> tuple[list[dict[str, Any]], int]:
    """(objects in reading order, index of the needle among them) for a ``size`` px image."""
    if size < MIN_SIZE:
        raise ValueError(f"needle images need image_size >= {MIN_SIZE}, got {size}")
    n = int(rng.integers(N_OBJECTS[0], N_OBJECTS[1] + 1))
    needle_shape = int(rng.integers(len(SHAPES)))
    needle_colour = int(rng.integers(len(COLOURS)))
    side = SIDES[int(rng.integers(2))]
    others = [s for s in range(len(SHAPES)) if s != needle_shape]
    shapes = [needle_shape] + [others[int(rng.integers(len(others)))] for _ in range(n - 1)]
    colours = [needle_colour] + [int(rng.integers(len(COLOURS))) for _ in range(n - 1)]
    lo, hi = (int(np.ceil(SIDE_FRAC[0] * size)), int(SIDE_FRAC[1] * size))
    sides = [int(rng.integers(lo, hi + 1)) for _ in range(n)]
    half = size // 2
    for _ in range(_RESTARTS):
        boxes: list[list[int]] = []
        for i in range(n):
            s = sides[i]
            # the needle lies entirely on its side of the vertical centre line (x1 <= half or x0 >= half)
            x_lo, x_hi = (0, half - s) if i == 0 and side == "left" else (half, size - s) if i == 0 else (0, size - s)
            for _ in range(_TRIES):
                x, y = int(rng.integers(x_lo, x_hi + 1)), int(rng.integers(0, size - s + 1))
                box = [x, y, x + s, y + s]
                if _fits(box, boxes):
                    boxes.append(box)
                    break
            else:
                break
        if len(boxes) == n:
            break
    else:  # never seen at 48-128 px; fail loudly rather than write a wrong record
        raise RuntimeError(f"no layout for {n} needle objects in a {size} px image")
    cell_px = size / CELL_GRID
    objects = []
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        objects.append(
            {
                "shape": SHAPES[shapes[i]],
                "colour": list(COLOURS)[colours[i]],
                "cx": cx,
                "cy": cy,
                "cell": [min(int(cy // cell_px), CELL_GRID - 1), min(int(cx // cell_px), CELL_GRID - 1)],
                "bbox": [x0, y0, x1, y1],
                "_needle": i == 0,
            }
        )
    objects.sort(key=lambda o: (o["cell"], o["bbox"][0], o["bbox"][1]))
    needle = next(i for i, o in enumerate(objects) if o.pop("_needle"))
    for o in objects:
        o.pop("_needle", None)
    return objects, needle


def needle_side(obj: dict[str, Any], size: int) -> str:
    """'left' / 'right': the side of the vertical centre line the object lies on (entirely)."""
    return "left" if obj["bbox"][2] <= size // 2 else "right"


def needle_caption(objects: list[dict[str, Any]], needle: int) -> str:
    """'seven shapes: a red circle, ... and a blue square; the only triangle is green.'"""
    parts = [f"a {o['colour']} {o['shape']}" for o in objects]
    target = objects[needle]
    return (
        f"{NUMBER_WORDS[len(objects)]} shapes: {', '.join(parts[:-1])} and {parts[-1]}; "
        f"the only {target['shape']} is {target['colour']}."
    )


def make_needle_sample(ctx: SampleContext) -> Sample:
    """An image of 6-10 small shapes, one of them the needle; a caption or 1-2 QA turns about the needle."""
    rng, cfg = ctx.rng, ctx.cfg
    objects, needle = plan_needle(rng, cfg.image_size)
    target = objects[needle]
    if ctx.style == "caption":
        prompt = CAPTION_PROMPTS[int(rng.integers(len(CAPTION_PROMPTS)))]
        pairs, qtypes = [(prompt, needle_caption(objects, needle))], ["caption"]
    else:
        k = int(rng.integers(1, 3))
        qtypes = [list(NEEDLE_QUESTIONS)[i] for i in rng.choice(len(NEEDLE_QUESTIONS), size=k, replace=False)]
        answers = {"needle_colour": target["colour"], "needle_position": needle_side(target, cfg.image_size)}
        pairs = [(NEEDLE_QUESTIONS[t][int(rng.integers(2))].format(shape=target["shape"]), answers[t]) for t in qtypes]
    pairs[0] = (_with_placeholder(pairs[0][0], "<image>", rng), pairs[0][1])
    path = ctx.media_path("images", cfg.image_format)
    data = render_image(objects, cfg.image_size, cfg.noise, rng, cfg.image_format)
    meta = {
        "modality": MODALITY,
        "objects": objects,
        "needle": needle,
        "needle_bbox": list(target["bbox"]),
        "qtypes": qtypes,
        "answers": [a for _, a in pairs],
    }
    return Sample(_turns(pairs), meta, fields={"image": path}, files={path: data})


def describe_needle(cfg: SynthConfig) -> dict[str, Any]:
    return {
        "size": cfg.image_size,
        "objects": list(N_OBJECTS),
        "side_frac": list(SIDE_FRAC),
        "gap_px": GAP_PX,
        "cell_grid": CELL_GRID,
        "media_field": "image",
        "rule": "exactly one object (meta.needle) has the shape the question names; it lies entirely on one "
        "side of the vertical centre line",
    }


register_task(
    TaskSpec(
        MODALITY,
        make_needle_sample,
        ("caption", "qa"),
        {"needle_colour": list(COLOURS), "needle_position": list(SIDES)},
        describe_needle,
    )
)
