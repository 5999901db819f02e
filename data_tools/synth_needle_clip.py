"""Needle-in-a-clip task of the synthetic generator (``make_synthetic`` imports this module, which registers it).

**needle_clip** (``videos/<split>/<index>.mp4``, ``<video>``): a long clip of ``SEGMENT_FRAMES x
cfg.video_frames`` frames (32 at the default 8, i.e. 4 s at 8 fps) of the needle image's scene
(``synth_needle.plan_needle``: 6-10 small shapes, exactly one of the shape the question names). The
other shapes stay still for the whole clip; the needle is there during **one segment only**: the clip is
cut into ``cfg.video_frames`` equal segments of ``SEGMENT_FRAMES`` frames and the needle shows in all
frames of segment ``s`` and in no other frame. A model sampling ``cfg.video_frames`` frames uniformly
(``llava_wb.data.video.uniform_indices``: one frame at the centre of each segment) sees it in exactly one
sampled frame, number ``s``: one frame and one region of the clip hold the answer. Questions (1-2 turns,
all about the needle):

* ``needle_clip_colour``: "What colour is the {shape}?" -> its colour;
* ``needle_clip_position``: "Is the {shape} on the left or the right?" -> its side of the centre line;
* ``needle_clip_time``: "Does the {shape} show up in the first half or the second half?" -> first/second
  (which half of the clip segment ``s`` lies in: only the order of the frames tells).

Shape, colour, side and segment are drawn uniformly and independently, so the answers are balanced.
``meta`` holds the scene's ``objects`` and ``needle`` (as ``synth_needle``), ``segment``, ``visible``
(the needle's first and last frame + 1), ``clip_frames``, ``sampled_frame`` (= ``segment``: the index
among the ``cfg.video_frames`` uniformly sampled frames) and ``needle_bbox``.
"""

from __future__ import annotations

from typing import Any

from data_tools.synth_core import (
    COLOURS,
    Sample,
    SampleContext,
    SynthConfig,
    TaskSpec,
    _turns,
    _with_placeholder,
    register_task,
)
from data_tools.synth_needle import CAPTION_PROMPTS, NUMBER_WORDS, SIDES, needle_side, plan_needle

MODALITY = "needle_clip"
SEGMENT_FRAMES = 4  # frames per segment: the clip is SEGMENT_FRAMES x cfg.video_frames long
HALVES: tuple[str, ...] = ("first", "second")
CLIP_QUESTIONS: dict[str, tuple[str, ...]] = {
    "needle_clip_colour": ("What colour is the {shape}?", "Which colour does the {shape} have?"),
    "needle_clip_position": (
        "Is the {shape} on the left or the right?",
        "Is the {shape} on the left side or the right side?",
    ),
    "needle_clip_time": (
        "Does the {shape} show up in the first half or the second half?",
        "Is the {shape} shown in the first half or the second half of the clip?",
    ),
}


def plan_clip(ctx: SampleContext) -> dict[str, Any]:
    """Scene, needle, segment and per-frame boxes (``boxes[t][i]``: object ``i``'s box or None)."""
    rng, cfg = ctx.rng, ctx.cfg
    objects, needle = plan_needle(rng, cfg.image_size)
    segments = cfg.video_frames
    segment = int(rng.integers(segments))
    start, stop = segment * SEGMENT_FRAMES, (segment + 1) * SEGMENT_FRAMES
    frames = segments * SEGMENT_FRAMES
    boxes = [
        [o["bbox"] if i != needle or start <= t < stop else None for i, o in enumerate(objects)] for t in range(frames)
    ]
    return {
        "objects": objects,
        "needle": needle,
        "segment": segment,
        "visible": [start, stop],
        "clip_frames": frames,
        "boxes": boxes,
    }


def clip_caption(objects: list[dict[str, Any]], needle: int, segment: int, segments: int) -> str:
    """'six shapes stay: a red circle, ... and a blue square; a green triangle shows up in the first half.'"""
    still = [o for i, o in enumerate(objects) if i != needle]
    parts = [f"a {o['colour']} {o['shape']}" for o in still]
    target = objects[needle]
    return (
        f"{NUMBER_WORDS[len(still)]} shapes stay: {', '.join(parts[:-1])} and {parts[-1]}; "
        f"a {target['colour']} {target['shape']} shows up in the {half(segment, segments)} half."
    )


def half(segment: int, segments: int) -> str:
    return HALVES[int(2 * segment >= segments)]


def make_needle_clip_sample(ctx: SampleContext) -> Sample:
    """A long clip whose needle shows in one segment; a caption or 1-2 QA turns about the needle."""
    from data_tools.synth_av import VIDEO_PRESET, render_clip
    from llava_wb.data.video import encode_mp4

    rng, cfg = ctx.rng, ctx.cfg
    plan = plan_clip(ctx)
    objects, needle, segment = plan["objects"], plan["needle"], plan["segment"]
    target = objects[needle]
    if ctx.style == "caption":
        prompt = CAPTION_PROMPTS[int(rng.integers(len(CAPTION_PROMPTS)))]
        pairs, qtypes = [(prompt, clip_caption(objects, needle, segment, cfg.video_frames))], ["caption"]
    else:
        k = int(rng.integers(1, 3))
        qtypes = [list(CLIP_QUESTIONS)[i] for i in rng.choice(len(CLIP_QUESTIONS), size=k, replace=False)]
        answers = {
            "needle_clip_colour": target["colour"],
            "needle_clip_position": needle_side(target, cfg.image_size),
            "needle_clip_time": half(segment, cfg.video_frames),
        }
        pairs = [(CLIP_QUESTIONS[t][int(rng.integers(2))].format(shape=target["shape"]), answers[t]) for t in qtypes]
    pairs[0] = (_with_placeholder(pairs[0][0], "<video>", rng), pairs[0][1])
    sprites = [{**o, "side": o["bbox"][2] - o["bbox"][0]} for o in objects]
    video = render_clip(sprites, plan["boxes"], cfg.image_size, cfg.noise, rng)
    path = ctx.media_path("videos", "mp4")
    data = encode_mp4(video, fps=cfg.video_fps, preset=VIDEO_PRESET)
    meta = {
        "modality": MODALITY,
        "objects": objects,
        "needle": needle,
        "needle_bbox": list(target["bbox"]),
        "segment": segment,
        "sampled_frame": segment,
        "visible": plan["visible"],
        "clip_frames": plan["clip_frames"],
        "qtypes": qtypes,
        "answers": [a for _, a in pairs],
    }
    return Sample(_turns(pairs), meta, fields={"video": path}, files={path: data})


def describe_needle_clip(cfg: SynthConfig) -> dict[str, Any]:
    return {
        "size": cfg.image_size,
        "clip_frames": SEGMENT_FRAMES * cfg.video_frames,
        "fps": cfg.video_fps,
        "segments": cfg.video_frames,
        "segment_frames": SEGMENT_FRAMES,
        "media_field": "video",
        "rule": "the scene of a needle image; the needle (the only object of the named shape) shows in the "
        "frames of one segment only, so uniform sampling of one frame per segment sees it once",
    }


register_task(
    TaskSpec(
        MODALITY,
        make_needle_clip_sample,
        ("caption", "qa"),
        {"needle_clip_colour": list(COLOURS), "needle_clip_position": list(SIDES), "needle_clip_time": list(HALVES)},
        describe_needle_clip,
    )
)
