"""Video and audio tasks of the synthetic generator (``make_synthetic`` imports this module, which registers them).

**video** (``videos/<split>/<index>.mp4``, ``<video>``): ``cfg.video_frames`` frames at ``cfg.video_fps`` of
``image_size`` pixels, drawn like the images (same background, palette, shapes, gray noise) so a vision
tower trained on the images transfers. 1-3 shapes (distinct shapes and colours) appear one after another
at distinct frames (the first at frame 0, the others by frame ``frames // 2``) and then stay. One shape,
the *mover*, travels in a straight line (left / right / up / down) over at least half the frame side
between its first frame and the last one; other shapes stay still, cross the frame too, or move
vertically. Shapes that stay still or move vertically lie entirely on one side of the vertical centre line,
horizontal movers always cross it, and shapes never touch (2 px apart in every frame). Questions:

* ``motion``: direction of the mover (left/right/up/down), drawn 3x as often as each other type
  (``VIDEO_QTYPE_WEIGHTS``);
* ``first_colour`` / ``last_colour``: colour of the shape that appears first / last;
* ``crossing``: how many shapes cross the vertical centre line (zero/one/two).

The mover's direction and the crossing count are drawn jointly (a left/right mover always crosses) so
that both answers are uniform. ``meta.objects`` lists the shapes in order of appearance,
``meta.mover`` indexes the mover there and ``meta.frames[t][i]`` is shape ``i``'s box ``[x0, y0, x1, y1]``
(exclusive ends) in frame ``t``, or null before it appears.

**audio** (``audio/<split>/<index>.{wav|mp3|flac}``, ``<audio>``): ``cfg.audio_seconds`` of 16 kHz mono with
1-4 beeps of one tone, high (1200-2000 Hz) or low (200-400 Hz), 0.15-0.25 s long, at random onsets at
least 0.15 s apart, with small noise and a varied amplitude. One clip in four is flac (3/16) or mp3
(1/16), the others wav, so those decode paths get exercised. Questions: ``pitch`` (high/low) and ``beeps``
(one..four). ``meta`` stores ``onsets``, ``durations`` (seconds), ``frequency`` (Hz) and the format.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from data_tools.synth_core import (
    BACKGROUND,
    COLOURS,
    SHAPES,
    Sample,
    SampleContext,
    SynthConfig,
    TaskSpec,
    _turns,
    _with_placeholder,
    draw_shape,
    pick_qtypes,
    register_task,
)

DIRECTIONS: tuple[str, ...] = ("left", "right", "up", "down")
CROSS_WORDS: tuple[str, ...] = ("zero", "one", "two")
BEEP_WORDS: tuple[str, ...] = ("one", "two", "three", "four")
SIDE_FRAC = (0.22, 0.30)  # shape side / frame side
TRAVEL_FRAC = (0.50, 0.75)  # mover's travel / frame side
GAP_PX = 2  # minimum distance between shapes in every frame
VIDEO_PRESET = "superfast"  # x264 preset for encode_mp4 (see make_video_sample: byte-identical output)
_TRIES, _TRIES_PER_SHAPE = 1000, 20  # layout restarts; placements of one shape before a restart
AUDIO_RATE = 16000
HIGH_HZ, LOW_HZ = (1200.0, 2000.0), (200.0, 400.0)
BEEP_S, BEEP_GAP_S, MARGIN_S, RAMP_S = (0.15, 0.25), 0.15, 0.05, 0.01
AUDIO_FORMAT_FRACS = {"mp3": 1 / 16, "flac": 3 / 16}  # the rest is wav (mp3 is rarer: ~12 ms to encode)

VIDEO_PROMPTS = (
    "Describe the video briefly.",
    "What happens in this clip?",
    "Give a short description of the video.",
    "Describe what the shapes do.",
)
AUDIO_PROMPTS = ("Describe the sound briefly.", "What do you hear?", "Give a short description of the audio.")
VIDEO_QUESTIONS: dict[str, tuple[str, ...]] = {
    "motion": ("Which way does the {colour} {shape} move?", "In which direction does the {colour} {shape} move?"),
    "first_colour": ("Which colour appears first?", "What colour is the first shape to appear?"),
    "last_colour": ("Which colour appears last?", "What colour is the last shape to appear?"),
    "crossing": ("How many shapes cross the middle?", "How many shapes cross the vertical center line?"),
}
# motion is the video question a small model learns last (binding the named shape across frames): it is
# drawn three times as often as each of the others, so it is in 3 of 4 QA clips instead of 1 in 2
VIDEO_QTYPE_WEIGHTS = {"motion": 3.0, "first_colour": 1.0, "last_colour": 1.0, "crossing": 1.0}
AUDIO_QUESTIONS: dict[str, tuple[str, ...]] = {
    "pitch": ("Is the tone high or low?", "Is the beep high-pitched or low-pitched?"),
    "beeps": ("How many beeps are there?", "How many beeps do you hear?"),
}


# ----------------------------------------------------------------------------- video
def _path(
    rng: np.random.Generator, size: int, frames: int, side: int, motion: str, appear: int
) -> list[list[int] | None]:
    """Per-frame boxes of one shape: straight-line motion from ``appear`` to the last frame."""
    half, hi = size // 2, size - side - 1  # top-left corners in [1, hi]
    travel = int(rng.integers(math.ceil(TRAVEL_FRAC[0] * size), min(int(TRAVEL_FRAC[1] * size), hi - 1) + 1))
    start = int(rng.integers(1, hi - travel + 1))
    lane = int(rng.integers(1, hi + 1))
    one_side = int(rng.integers(1, half - side)) if rng.random() < 0.5 else int(rng.integers(half + 1, size - side))
    a, b = (start, start + travel) if motion in ("right", "down") else (start + travel, start)
    if motion in ("left", "right"):
        xs, ys = (a, b), (lane, lane)
    elif motion in ("up", "down"):
        xs, ys = (one_side, one_side), (a, b)
    else:
        xs, ys = (one_side, one_side), (lane, lane)
    boxes: list[list[int] | None] = []
    for t in range(frames):
        if t < appear:
            boxes.append(None)
            continue
        f = (t - appear) / (frames - 1 - appear)
        x, y = int(round(xs[0] + f * (xs[1] - xs[0]))), int(round(ys[0] + f * (ys[1] - ys[0])))
        boxes.append([x, y, x + side, y + side])
    return boxes


def _touch(p: list[list[int] | None], q: list[list[int] | None]) -> bool:
    """Whether two shapes come closer than ``GAP_PX`` in a frame where both are visible."""
    for a, b in zip(p, q):
        if a and b and a[0] < b[2] + GAP_PX and b[0] < a[2] + GAP_PX and a[1] < b[3] + GAP_PX and b[1] < a[3] + GAP_PX:
            return True
    return False


def crosses(boxes: list[list[int] | None], size: int) -> bool:
    """Whether the shape's centre is on different sides of the vertical centre line at its first and last frame."""
    seen = [b for b in boxes if b is not None]
    return (seen[0][0] + seen[0][2] - size) * (seen[-1][0] + seen[-1][2] - size) < 0


def plan_clip(rng: np.random.Generator, size: int, frames: int) -> tuple[list[dict[str, Any]], int, list]:
    """(shapes in order of appearance, index of the mover among them, boxes ``[frame][shape]``)."""
    direction = DIRECTIONS[int(rng.integers(len(DIRECTIONS)))]
    horizontal = direction in ("left", "right")
    # Uniform direction and crossing count: left/right -> 1 or 2 crossings; up/down -> 0 (2/3), 1 or 2.
    crossing = int(rng.integers(1, 3)) if horizontal or rng.random() < 1 / 3 else 0
    required = crossing + (not horizontal)  # the mover and the other crossers come first in ``motions``
    n = int(rng.integers(max(1, required), 4))
    motions = [direction] + [DIRECTIONS[int(rng.integers(2))] for _ in range(crossing - horizontal)]
    for _ in range(n - len(motions)):  # distractors: still, or vertical (two vertical movers only in pairs)
        vertical = rng.random() < 1 / 3 and sum(m in ("up", "down") for m in motions) < (2 if n == 2 else 1)
        motions.append(("up", "down")[int(rng.integers(2))] if vertical else "still")
    shapes = rng.choice(len(SHAPES), size=n, replace=False)
    colours = rng.choice(len(COLOURS), size=n, replace=False)
    for _attempt in range(_TRIES):  # shapes one by one, each a few tries; start over when one does not fit
        appear = np.empty(n, dtype=np.int64)  # distinct frames: one shape at 0, the others by frames // 2
        later = np.sort(rng.choice(np.arange(1, frames // 2 + 1), n - 1, replace=False))
        appear[rng.permutation(n)] = np.concatenate([[0], later])
        sides = [int(round(size * rng.uniform(*SIDE_FRAC))) for _ in range(n)]
        paths: list[list[list[int] | None]] = []
        for i in range(n):
            for _ in range(_TRIES_PER_SHAPE):
                path = _path(rng, size, frames, sides[i], motions[i], int(appear[i]))
                if not any(_touch(path, q) for q in paths):
                    paths.append(path)
                    break
            else:
                break
        if len(paths) == n:
            break
    else:  # 150k clips (32-128 px, 4-16 frames) needed < 1/10 of the budget: fail loudly, never answer wrong
        raise RuntimeError(f"no layout for motions {motions} in a {size} px frame")
    by_time = sorted(range(n), key=lambda i: int(appear[i]))
    objects = [
        {
            "shape": SHAPES[shapes[i]],
            "colour": list(COLOURS)[colours[i]],
            "side": sides[i],
            "appear": int(appear[i]),
            "motion": motions[i],
            "crosses": crosses(paths[i], size),
        }
        for i in by_time
    ]
    return objects, by_time.index(0), [[paths[i][t] for i in by_time] for t in range(frames)]


def render_clip(
    objects: list[dict[str, Any]], boxes: list[list[list[int] | None]], size: int, noise: int, rng: np.random.Generator
) -> np.ndarray:
    """uint8 frames ``[T, size, size, 3]``: each shape drawn once as a mask, pasted per frame, gray noise."""
    video = np.empty((len(boxes), size, size, 3), dtype=np.uint8)
    video[:] = BACKGROUND
    for i, o in enumerate(objects):
        side = o["side"]
        sprite = Image.new("L", (side, side), 0)
        draw_shape(ImageDraw.Draw(sprite), o["shape"], [0, 0, side, side], 255)
        mask, colour = np.asarray(sprite) > 0, np.array(COLOURS[o["colour"]], dtype=np.uint8)
        for t, frame_boxes in enumerate(boxes):
            if frame_boxes[i] is not None:
                x0, y0 = frame_boxes[i][:2]
                video[t, y0 : y0 + side, x0 : x0 + side][mask] = colour
    if noise > 0:
        jitter = rng.integers(-noise, noise + 1, size=(len(boxes), size, size, 1), dtype=np.int16)
        video = np.clip(video.astype(np.int16) + jitter, 0, 255).astype(np.uint8)
    return video


def video_caption(objects: list[dict[str, Any]]) -> str:
    """'a red circle moves left, then a blue square appears and stays still.'"""
    parts = []
    for k, o in enumerate(objects):
        act = "stays still" if o["motion"] == "still" else f"moves {o['motion']}"
        parts.append(f"{'then ' if k else ''}a {o['colour']} {o['shape']} {'appears and ' if k else ''}{act}")
    return ", ".join(parts) + "."


def make_video_sample(ctx: SampleContext) -> Sample:
    """A clip of 1-3 shapes appearing and moving, with a caption or 1-3 single-word QA turns."""
    from llava_wb.data.video import encode_mp4

    rng, cfg = ctx.rng, ctx.cfg
    objects, mover, boxes = plan_clip(rng, cfg.image_size, cfg.video_frames)
    if ctx.style == "caption":
        pairs, qtypes = [(VIDEO_PROMPTS[int(rng.integers(len(VIDEO_PROMPTS)))], video_caption(objects))], ["caption"]
    else:
        qtypes = pick_qtypes(rng, list(VIDEO_QUESTIONS), weights=VIDEO_QTYPE_WEIGHTS)
        answers = {
            "motion": objects[mover]["motion"],
            "first_colour": objects[0]["colour"],
            "last_colour": objects[-1]["colour"],
            "crossing": CROSS_WORDS[sum(o["crosses"] for o in objects)],
        }
        pairs = [(VIDEO_QUESTIONS[t][int(rng.integers(2))].format(**objects[mover]), answers[t]) for t in qtypes]
    pairs[0] = (_with_placeholder(pairs[0][0], "<video>", rng), pairs[0][1])
    path = ctx.media_path("videos", "mp4")
    # "superfast" turns off x264's mb-tree and lookahead: with them (veryfast) the same frames sometimes
    # give different bytes from one call to the next (seen with libx264 in PyAV 18); it is faster too.
    data = encode_mp4(
        render_clip(objects, boxes, cfg.image_size, cfg.noise, rng), fps=cfg.video_fps, preset=VIDEO_PRESET
    )
    meta = {
        "modality": "video",
        "objects": objects,
        "mover": mover,
        "qtypes": qtypes,
        "answers": [a for _, a in pairs],
        "frames": boxes,
    }
    return Sample(_turns(pairs), meta, fields={"video": path}, files={path: data})


def describe_video(cfg: SynthConfig) -> dict[str, Any]:
    return {
        "frames": cfg.video_frames,
        "fps": cfg.video_fps,
        "size": cfg.image_size,
        "codec": "h264 (mp4)",
        "travel_frac": list(TRAVEL_FRAC),
        "side_frac": list(SIDE_FRAC),
        "crossing_rule": "the centre changes side of the vertical centre line from first to last frame",
    }


# ----------------------------------------------------------------------------- audio
def plan_beeps(rng: np.random.Generator, seconds: float) -> dict[str, Any]:
    """Tone, count, onsets and lengths (seconds, whole samples) of the beeps of one clip."""
    count, high = int(rng.integers(1, 5)), bool(rng.random() < 0.5)
    freq = round(float(rng.uniform(*(HIGH_HZ if high else LOW_HZ))), 1)
    durs = np.round(rng.uniform(*BEEP_S, size=count) * AUDIO_RATE).astype(np.int64)  # in samples from here on
    gap, margin = round(BEEP_GAP_S * AUDIO_RATE), round(MARGIN_S * AUDIO_RATE)
    slack = int(seconds * AUDIO_RATE) - 2 * margin - int(durs.sum()) - (count - 1) * gap
    cuts = np.sort(rng.integers(0, slack + 1, size=count))  # random onsets; the gaps stay >= ``gap``
    onsets = margin + cuts + np.concatenate([[0], np.cumsum(durs[:-1] + gap)])
    return {
        "pitch": "high" if high else "low",
        "frequency": freq,
        "onsets": [round(int(x) / AUDIO_RATE, 7) for x in onsets],  # k / 16000 is exact with 7 decimals
        "durations": [round(int(x) / AUDIO_RATE, 7) for x in durs],
        "amplitude": round(float(rng.uniform(0.25, 0.8)), 3),
        "noise": round(float(rng.uniform(0.002, 0.015)), 4),
    }


def render_beeps(plan: dict[str, Any], seconds: float, rng: np.random.Generator) -> np.ndarray:
    """float32 mono wave at ``AUDIO_RATE``: the beeps (10 ms raised-cosine ramps) over gaussian noise."""
    wave = rng.standard_normal(int(seconds * AUDIO_RATE), dtype=np.float32) * np.float32(plan["noise"])
    phase, ramp = rng.uniform(0, 2 * np.pi), round(RAMP_S * AUDIO_RATE)
    edge = 0.5 - 0.5 * np.cos(np.pi * np.arange(ramp) / ramp)
    for onset, dur in zip(plan["onsets"], plan["durations"]):
        s0, m = round(onset * AUDIO_RATE), round(dur * AUDIO_RATE)
        env = np.ones(m)
        env[:ramp], env[m - ramp :] = edge, edge[::-1]
        t = (s0 + np.arange(m)) / AUDIO_RATE
        beep = plan["amplitude"] * env * np.sin(2 * np.pi * plan["frequency"] * t + phase)
        wave[s0 : s0 + m] += beep.astype(np.float32)
    return np.clip(wave, -1.0, 1.0)


def make_audio_sample(ctx: SampleContext) -> Sample:
    """A clip of 1-4 high or low beeps, with a caption or 1-2 single-word QA turns."""
    from llava_wb.data.audio import encode_audio

    rng, seconds = ctx.rng, ctx.cfg.audio_seconds
    plan = plan_beeps(rng, seconds)
    count = len(plan["onsets"])
    if ctx.style == "caption":
        text = f"{BEEP_WORDS[count - 1]} {plan['pitch']} beep{'s' if count > 1 else ''}."
        pairs, qtypes = [(AUDIO_PROMPTS[int(rng.integers(len(AUDIO_PROMPTS)))], text)], ["caption"]
    else:
        qtypes = pick_qtypes(rng, list(AUDIO_QUESTIONS), max_turns=2)
        answers = {"pitch": plan["pitch"], "beeps": BEEP_WORDS[count - 1]}
        pairs = [(AUDIO_QUESTIONS[t][int(rng.integers(2))], answers[t]) for t in qtypes]
    pairs[0] = (_with_placeholder(pairs[0][0], "<audio>", rng), pairs[0][1])
    u = rng.random()
    fmt = "mp3" if u < AUDIO_FORMAT_FRACS["mp3"] else "flac" if u < sum(AUDIO_FORMAT_FRACS.values()) else "wav"
    path = ctx.media_path("audio", fmt)
    data = encode_audio(render_beeps(plan, seconds, rng), AUDIO_RATE, fmt=fmt)
    meta = {
        "modality": "audio",
        "objects": [],
        "qtypes": qtypes,
        "answers": [a for _, a in pairs],
        "sampling_rate": AUDIO_RATE,
        "format": fmt,
        **plan,
    }
    return Sample(_turns(pairs), meta, fields={"audio": path}, files={path: data})


def describe_audio(cfg: SynthConfig) -> dict[str, Any]:
    return {
        "sampling_rate": AUDIO_RATE,
        "seconds": cfg.audio_seconds,
        "high_hz": list(HIGH_HZ),
        "low_hz": list(LOW_HZ),
        "beep_s": list(BEEP_S),
        "min_gap_s": BEEP_GAP_S,
        "formats": {"wav": 1 - sum(AUDIO_FORMAT_FRACS.values()), **AUDIO_FORMAT_FRACS},
    }


register_task(
    TaskSpec(
        "video",
        make_video_sample,
        ("caption", "qa"),
        {
            "motion": list(DIRECTIONS),
            "first_colour": list(COLOURS),
            "last_colour": list(COLOURS),
            "crossing": list(CROSS_WORDS),
        },
        describe_video,
    )
)
register_task(
    TaskSpec(
        "audio",
        make_audio_sample,
        ("caption", "qa"),
        {"pitch": ["high", "low"], "beeps": list(BEEP_WORDS)},
        describe_audio,
    )
)
