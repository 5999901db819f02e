"""Synthetic LLaVA-format dataset: coloured shapes with captions, multi-turn QA and text-only records.

The embedded default data for the demo, tests and benchmarks. It writes exactly the LLaVA layout,
so every downstream tool treats it like real data:

    OUT/pretrain.json  instruct.json  heldout.json      (``.jsonl`` with ``jsonl=True``)
    OUT/images/{split}/{index:06d}.{png|jpg}            (paths in records are relative to OUT)
    OUT/videos/{split}/{index:06d}.mp4                  (only when the mix has ``video``)
    OUT/audio/{split}/{index:06d}.{wav|mp3|flac}        (only when the mix has ``audio``)
    OUT/dataset_info.json                               (parameters, counts, vocabulary, baselines)

Images show 1-3 large shapes (distinct shapes and colours) on a coarse ``grid x grid`` cell layout,
one shape per cell, so a tiny model can learn colour, shape, left/right position, relation and count.
The default mix is images + text-only records; ``data_tools.synth_av`` adds short clips of the same
shapes moving and appearing (``video``) and beeps (``audio``): ``mix={"image": 0.6, "video": 0.15, ...}``.

Determinism: each record draws from its own RNG seeded by ``(seed, split, index)`` and the modality
of record ``i`` comes from a low-discrepancy (golden-ratio) sequence over the mix weights, so the same
seed gives byte-identical files and changing ``n`` never changes earlier records.

Extending: a modality is one :class:`TaskSpec` (a function ``SampleContext -> Sample``, the styles it
supports and its answer vocabulary) passed to :func:`register_task`; ``mix`` picks how often it occurs.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import multiprocessing
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from data_tools.synth_core import (  # noqa: F401  (re-exported: the public names of the generator)
    BACKGROUND,
    COL_NAMES,
    COLOURS,
    COUNT_WORDS,
    IMAGE_FORMATS,
    ROW_NAMES,
    SAVE_OPTIONS,
    SHAPES,
    TASKS,
    Sample,
    SampleContext,
    SynthConfig,
    TaskSpec,
    _turns,
    _with_placeholder,
    draw_shape,
    pick_qtypes,
    register_task,
    render_image,
)

GENERATOR_VERSION = "1.0.0"
FORMAT = "llava_wb-synthetic/1"
SPLITS: tuple[str, ...] = ("pretrain", "instruct", "heldout")
SPLIT_CODES = {"pretrain": 1, "instruct": 2, "heldout": 3}  # never reuse: they seed the RNG streams
SPLIT_STYLE = {"pretrain": "caption", "instruct": "qa", "heldout": "qa"}
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0

CAPTION_PROMPTS = (
    "Describe the image briefly.",
    "Give a short description of the picture.",
    "What is in this image?",
    "Render a clear and concise summary of the photo.",
    "List the shapes you see.",
)
QUESTIONS: dict[str, tuple[str, ...]] = {
    "colour": ("What colour is the {shape}?", "Which colour does the {shape} have?"),
    "shape": ("What shape is the {colour} object?", "Which shape is {colour}?"),
    "position": (
        "Is the {colour} {shape} on the left or the right?",
        "Is the {colour} {shape} on the left side or the right side?",
    ),
    "relation": ("Is the {a} to the left or to the right of the {b}?", "Is the {a} left or right of the {b}?"),
    "count": ("How many shapes are there?", "How many objects are in the image?"),
}
# Relation applies to fewer images (needs two columns): ask it more often to even out turns per type.
QTYPE_WEIGHTS = {"colour": 1.0, "shape": 1.0, "position": 1.0, "relation": 2.0, "count": 1.0}
TEXT_FACTS: tuple[tuple[str, str], ...] = (
    *(
        (f"What colour do you get by mixing {a} and {b}?", c)
        for a, b, c in (
            ("blue", "yellow", "green"),
            ("red", "yellow", "orange"),
            ("red", "blue", "purple"),
            ("black", "white", "gray"),
            ("red", "white", "pink"),
        )
    ),
    *((f"What is the plural of {w}?", f"{w}s") for w in (*SHAPES, "shape")),
    *(
        (f"What is the opposite of {a}?", b)
        for a, b in (("left", "right"), ("right", "left"), ("top", "bottom"), ("bottom", "top"))
    ),
    *(
        (f"What colour is {thing}?", c)
        for thing, c in (
            ("grass", "green"),
            ("a ripe banana", "yellow"),
            ("a ripe tomato", "red"),
            ("the sky on a clear day", "blue"),
        )
    ),
    ("How many sides does a triangle have?", "three"),
    ("How many sides does a square have?", "four"),
    ("How many corners does a circle have?", "zero"),
    ("What number comes after one?", "two"),
    ("What number comes after two?", "three"),
    ("What is two plus two?", "four"),
)


# ----------------------------------------------------------------------------- image modality
def layout_objects(rng: np.random.Generator, n: int, grid: int, size: int) -> list[dict[str, Any]]:
    """Place ``n`` objects with distinct shapes, colours and cells, sorted in reading order.

    ``bbox`` is ``[x0, y0, x1, y1]`` in pixels with exclusive ends; ``cx, cy`` its centre.
    """
    cell_px, pad = size // grid, (size - (size // grid) * grid) // 2
    cells = rng.choice(grid * grid, size=n, replace=False)
    shapes = rng.choice(len(SHAPES), size=n, replace=False)
    colours = rng.choice(len(COLOURS), size=n, replace=False)
    objects = []
    for cell, si, ci in zip(cells, shapes, colours):
        row, col = divmod(int(cell), grid)
        side = min(cell_px - 2, int(round(cell_px * rng.uniform(0.7, 0.9))))
        x0 = pad + col * cell_px + 1 + int(rng.integers(0, cell_px - side - 1))
        y0 = pad + row * cell_px + 1 + int(rng.integers(0, cell_px - side - 1))
        objects.append(
            {
                "shape": SHAPES[si],
                "colour": list(COLOURS)[ci],
                "cx": x0 + side / 2,
                "cy": y0 + side / 2,
                "cell": [row, col],
                "bbox": [x0, y0, x0 + side, y0 + side],
            }
        )
    return sorted(objects, key=lambda o: o["cell"])


def horizontal_side(col: int, grid: int) -> str | None:
    """'left' / 'right' for a column, None for the centre column of an odd grid."""
    mid = (grid - 1) / 2
    return "left" if col < mid else "right" if col > mid else None


def _where(row: int, col: int, grid: int) -> str:
    r, c = ROW_NAMES[grid][row], COL_NAMES[grid][col]
    if r == "middle":
        return "in the center" if c == "center" else f"on the {c}"
    return f"at the {r}" if c == "center" else f"in the {r} {c}"


def caption(objects: Sequence[Mapping[str, Any]], grid: int) -> str:
    """'a red circle in the top left, a blue square in the bottom left and a ... .'"""
    parts = [f"a {o['colour']} {o['shape']} {_where(*o['cell'], grid)}" for o in objects]
    return (parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]) + "."


def question_subjects(qtype: str, objects: Sequence[Mapping[str, Any]], grid: int) -> list[Any]:
    """What a question of ``qtype`` can be asked about in this image (empty: not applicable)."""
    if qtype in ("colour", "shape"):
        return list(objects)
    if qtype == "position":
        return [o for o in objects if horizontal_side(o["cell"][1], grid)]
    if qtype == "relation":
        return [(a, b) for a in objects for b in objects if a["cell"][1] != b["cell"][1]]
    if qtype == "count":
        return [list(objects)]
    raise ValueError(f"unknown image question type {qtype!r}")


def ask(qtype: str, subject: Any, grid: int, rng: np.random.Generator) -> tuple[str, str]:
    """One (question, single-word answer) pair about ``subject``."""
    template = QUESTIONS[qtype][int(rng.integers(len(QUESTIONS[qtype])))]
    if qtype == "colour":
        return template.format(shape=subject["shape"]), subject["colour"]
    if qtype == "shape":
        return template.format(colour=subject["colour"]), subject["shape"]
    if qtype == "position":
        return template.format(**subject), str(horizontal_side(subject["cell"][1], grid))
    if qtype == "relation":
        a, b = subject
        answer = "left" if a["cell"][1] < b["cell"][1] else "right"
        return template.format(a=f"{a['colour']} {a['shape']}", b=f"{b['colour']} {b['shape']}"), answer
    return template, COUNT_WORDS[len(subject)]


def make_image_sample(ctx: SampleContext) -> Sample:
    """An image with 1-3 shapes and either a caption or 1-3 single-word QA turns."""
    rng = ctx.rng
    objects = layout_objects(rng, int(rng.integers(1, 4)), ctx.cfg.grid, ctx.cfg.image_size)
    if ctx.style == "caption":
        prompt = CAPTION_PROMPTS[int(rng.integers(len(CAPTION_PROMPTS)))]
        pairs, qtypes = [(prompt, caption(objects, ctx.cfg.grid))], ["caption"]
    else:
        available = [t for t in QUESTIONS if question_subjects(t, objects, ctx.cfg.grid)]
        qtypes = pick_qtypes(rng, available, weights=QTYPE_WEIGHTS)
        pairs = []
        for qtype in qtypes:
            subjects = question_subjects(qtype, objects, ctx.cfg.grid)
            pairs.append(ask(qtype, subjects[int(rng.integers(len(subjects)))], ctx.cfg.grid, rng))
    first_q = _with_placeholder(pairs[0][0], "<image>", rng)
    pairs[0] = (first_q, pairs[0][1])
    path = ctx.media_path("images", ctx.cfg.image_format)
    data = render_image(objects, ctx.cfg.image_size, ctx.cfg.noise, rng, ctx.cfg.image_format)
    meta = {"modality": "image", "objects": objects, "qtypes": qtypes, "answers": [a for _, a in pairs]}
    return Sample(_turns(pairs), meta, fields={"image": path}, files={path: data})


def make_text_sample(ctx: SampleContext) -> Sample:
    """A text-only record: 1-3 general questions with single-word answers (qtype ``text``)."""
    if ctx.style != "qa":
        raise ValueError("text records exist only in the qa style")
    k = int(ctx.rng.integers(1, 4))
    pairs = [TEXT_FACTS[i] for i in ctx.rng.choice(len(TEXT_FACTS), size=k, replace=False)]
    meta = {"modality": "text", "objects": [], "qtypes": ["text"] * k, "answers": [a for _, a in pairs]}
    return Sample(_turns(pairs), meta)


register_task(
    TaskSpec(
        "image",
        make_image_sample,
        ("caption", "qa"),
        {
            "colour": list(COLOURS),
            "shape": list(SHAPES),
            "position": ["left", "right"],
            "relation": ["left", "right"],
            "count": list(COUNT_WORDS[1:]),
        },
    )
)
register_task(TaskSpec("text", make_text_sample, ("qa",), {"text": sorted({a for _, a in TEXT_FACTS})}))


# ----------------------------------------------------------------------------- driver
_DEFAULT_MODALITIES = ("image", "text")  # always listed in dataset_info's vocab (as before plugins existed)


def resolve_mix(mix: Mapping[str, float], style: str) -> list[tuple[str, float]]:
    """Normalised (modality, weight) list restricted to the modalities that support ``style``."""
    unknown = sorted(set(mix) - set(TASKS))
    if unknown:
        raise ValueError(f"unknown modality in mix: {unknown} (registered: {sorted(TASKS)})")
    if any(w < 0 or not math.isfinite(w) for w in mix.values()):
        raise ValueError(f"mix weights must be finite and >= 0, got {dict(mix)}")
    kept = [(m, float(w)) for m, w in mix.items() if w > 0 and style in TASKS[m].styles]
    total = sum(w for _, w in kept)
    if total <= 0:
        raise ValueError(f"mix {dict(mix)} has no modality supporting style {style!r}")
    return [(m, w / total) for m, w in kept]


def pick_modality(mix: Sequence[tuple[str, float]], index: int, offset: float) -> str:
    """Low-discrepancy choice: fractions match the weights closely and do not depend on ``n``."""
    u, acc = (offset + (index + 0.5) * _GOLDEN) % 1.0, 0.0
    for modality, weight in mix:
        acc += weight
        if u < acc:
            return modality
    return mix[-1][0]


@functools.cache
def _stream_offset(seed: int, split: str) -> float:
    return float(np.random.default_rng([seed, 1000 + SPLIT_CODES[split]]).random())


def make_record(cfg: SynthConfig, split: str, index: int) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Build record ``index`` of ``split`` (pure: returns the record and its media bytes)."""
    modality = pick_modality(resolve_mix(dict(cfg.mix), SPLIT_STYLE[split]), index, _stream_offset(cfg.seed, split))
    rng = np.random.default_rng([cfg.seed, SPLIT_CODES[split], index])
    sample = TASKS[modality].make(SampleContext(split, index, SPLIT_STYLE[split], rng, cfg))
    record: dict[str, Any] = {
        "id": f"{split}-{index:06d}",
        **sample.fields,
        "conversations": sample.conversations,
        "meta": {"split": split, **sample.meta},
    }
    return record, sample.files


def _make_indexed(args: tuple[SynthConfig, str, int]) -> tuple[dict[str, Any], dict[str, bytes]]:
    return make_record(*args)


def _records(cfg: SynthConfig, split: str, n: int, pool: Any) -> Iterator[tuple[dict[str, Any], dict[str, bytes]]]:
    """Records ``0..n-1`` of ``split`` in order, made in ``pool``'s processes when there is one
    (each record is a pure function of its index, so the bytes do not depend on the workers)."""
    jobs = ((cfg, split, index) for index in range(n))
    if pool is None:
        yield from map(_make_indexed, jobs)
    else:
        yield from pool.imap(_make_indexed, jobs, chunksize=32)


def _write_split(
    root: Path, split: str, n: int, cfg: SynthConfig, jsonl: bool, bar: tqdm, pool: Any = None
) -> dict[str, Any]:
    """Write the records file and media of one split; return its path and answer statistics."""
    modalities: Counter[str] = Counter()
    per_type: dict[str, Counter[str]] = {}
    made_dirs: set[Path] = set()
    path = root / f"{split}.{'jsonl' if jsonl else 'json'}"
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        fh.write("" if jsonl else "[")
        for index, (record, media) in enumerate(_records(cfg, split, n, pool)):
            for rel, data in media.items():
                target = root / rel
                if target.parent not in made_dirs:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    made_dirs.add(target.parent)
                target.write_bytes(data)
            line = json.dumps(record, ensure_ascii=False)
            fh.write(line + "\n" if jsonl else ("\n" if index == 0 else ",\n") + line)
            modalities[record["meta"]["modality"]] += 1
            for qtype, answer in zip(record["meta"]["qtypes"], record["meta"]["answers"]):
                per_type.setdefault(qtype, Counter())[answer if qtype != "caption" else "*"] += 1
            bar.update(1)
        fh.write("" if jsonl else ("\n]\n" if n else "]\n"))
    counts = {
        "records": n,
        "by_modality": dict(sorted(modalities.items())),
        "turns_by_qtype": {t: sum(c.values()) for t, c in sorted(per_type.items())},
    }
    return {"path": str(path), "counts": counts, "answers": per_type}


def generate(
    out_dir: str | Path,
    *,
    n_pretrain: int = 2000,
    n_instruct: int = 4000,
    n_heldout: int = 500,
    seed: int = 0,
    image_size: int = 64,
    image_format: str = "png",
    text_only_frac: float = 0.05,
    jsonl: bool = False,
    progress: bool = True,
    grid: int = 2,
    noise: int = 6,
    mix: Mapping[str, float] | None = None,
    video_frames: int = 8,
    video_fps: int = 8,
    audio_seconds: float = 2.0,
    workers: int = 1,
) -> dict[str, Any]:
    """Write the synthetic dataset under ``out_dir``; return its root, files and counts.

    ``mix`` (modality -> weight) overrides ``{"image": 1 - text_only_frac, "text": text_only_frac}``
    for the qa splits; pretrain uses the modalities of the mix that support captions. Files of an
    earlier, larger run in the same folder are not deleted (records never reference them).
    ``video_frames`` / ``video_fps`` (clips of ``image_size`` pixels) and ``audio_seconds`` (16 kHz
    mono) only matter when the mix has ``video`` / ``audio``. ``workers`` > 1 renders the records in
    that many processes; the output is byte-identical for any number.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    sizes = {"pretrain": n_pretrain, "instruct": n_instruct, "heldout": n_heldout}
    if min(sizes.values()) < 0:
        raise ValueError(f"record counts must be >= 0, got {sizes}")
    if not 0.0 <= text_only_frac < 1.0:
        raise ValueError(f"text_only_frac must be in [0, 1), got {text_only_frac}")
    mix_in = dict(mix) if mix is not None else {"image": 1.0 - text_only_frac, "text": text_only_frac}
    cfg = SynthConfig(
        seed=seed,
        image_size=image_size,
        image_format=image_format,
        grid=grid,
        noise=noise,
        mix=tuple(mix_in.items()),
        video_frames=video_frames,
        video_fps=video_fps,
        audio_seconds=audio_seconds,
    )
    for split in (s for s in SPLITS if sizes[s]):
        resolve_mix(mix_in, SPLIT_STYLE[split])  # fail before writing anything
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    pool = multiprocessing.get_context("spawn").Pool(workers) if workers > 1 else None
    try:
        with tqdm(total=sum(sizes.values()), disable=not progress, unit="rec", desc="synthetic") as bar:
            written = {split: _write_split(root, split, sizes[split], cfg, jsonl, bar, pool) for split in SPLITS}
    finally:
        if pool is not None:
            pool.terminate()
    counts = {split: w["counts"] for split, w in written.items()}
    # Modalities outside the mix add nothing, so the default mix keeps the bytes of earlier versions.
    used = {m for m, w in mix_in.items() if w > 0}
    listed = [spec for spec in TASKS.values() if spec.modality in _DEFAULT_MODALITIES or spec.modality in used]
    extra_params = {
        **({"video_frames": video_frames, "video_fps": video_fps} if "video" in used else {}),
        **({"audio_seconds": audio_seconds} if "audio" in used else {}),
    }
    info = {
        "format": FORMAT,
        "generator_version": GENERATOR_VERSION,
        "params": {
            **sizes,
            "seed": seed,
            "image_size": image_size,
            "image_format": image_format,
            "text_only_frac": text_only_frac,
            "jsonl": jsonl,
            "grid": grid,
            "noise": noise,
            "mix": mix_in,
            **extra_params,
        },
        "files": {s: Path(w["path"]).name for s, w in written.items()},
        "media_root": ".",
        "counts": counts,
        "vocab": {t: list(v) for spec in listed for t, v in spec.vocab.items()},
        "answer_counts": {
            s: {t: dict(sorted(c.items())) for t, c in sorted(w["answers"].items())}
            for s, w in written.items()
            if SPLIT_STYLE[s] == "qa"
        },
        "majority_baseline": majority_baseline(written["heldout"]["answers"]),
        "render": {
            "colours": COLOURS,
            "shapes": list(SHAPES),
            "background": BACKGROUND,
            "cell_px": image_size // grid,
            "position_rule": "left/right from the object's grid column",
            **{s.modality: s.describe(cfg) for s in listed if s.describe and s.modality in used},
        },
    }
    info_path = root / "dataset_info.json"
    info_path.write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return {
        "root": str(root),
        "media_root": str(root),
        "info": str(info_path),
        "counts": counts,
        "files": {split: w["path"] for split, w in written.items()},
    }


def majority_baseline(per_type: Mapping[str, Counter[str]]) -> dict[str, dict[str, Any]]:
    """Per qtype: the most frequent answer, its fraction and the number of turns."""
    out = {}
    for qtype, counter in sorted(per_type.items()):
        if qtype == "caption" or not counter:
            continue
        answer, top = max(sorted(counter.items()), key=lambda kv: kv[1])
        out[qtype] = {"answer": answer, "fraction": round(top / sum(counter.values()), 4), "n": sum(counter.values())}
    return out


# ----------------------------------------------------------------------------- CLI
def _parse_mix(text: str) -> dict[str, float]:
    try:
        return {k.strip(): float(v) for k, v in (item.split("=") for item in text.split(",") if item.strip())}
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--mix expects 'image=0.95,text=0.05', got {text!r}") from exc


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="llava-wb-synthetic",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Write a synthetic LLaVA-format dataset (shapes images, captions, multi-turn QA, text-only "
        "records; optionally video clips and beeps): OUT/{pretrain,instruct,heldout}.json, "
        "OUT/images/<split>/ (videos/, audio/), OUT/dataset_info.json.",
    )
    p.add_argument("out", help="output folder (also the media root for the records' media paths)")
    p.add_argument("--n-pretrain", type=int, default=2000, help="caption records for stage-1 pretraining")
    p.add_argument("--n-instruct", type=int, default=4000, help="multi-turn QA records (with text-only ones)")
    p.add_argument("--n-heldout", type=int, default=500, help="held-out QA records (separate RNG stream)")
    p.add_argument("--seed", type=int, default=0, help="same seed gives byte-identical output")
    p.add_argument("--image-size", type=int, default=64, help="square image side in pixels")
    p.add_argument("--image-format", choices=sorted(IMAGE_FORMATS), default="png")
    p.add_argument("--grid", type=int, choices=sorted(ROW_NAMES), default=2, help="cells per side")
    p.add_argument("--noise", type=int, default=6, help="amplitude of gray pixel noise (0: flat)")
    p.add_argument("--text-only-frac", type=float, default=0.05, help="fraction of text-only QA records")
    p.add_argument(
        "--mix",
        type=_parse_mix,
        default=None,
        help="modality weights for QA splits, e.g. 'image=0.6,video=0.15,audio=0.15,text=0.1' "
        f"(overrides --text-only-frac; modalities: {', '.join(TASKS)})",
    )
    p.add_argument("--video-frames", type=int, default=8, help="frames per video clip (mix with video)")
    p.add_argument("--video-fps", type=int, default=8, help="frame rate of the video clips")
    p.add_argument("--audio-seconds", type=float, default=2.0, help="length of the audio clips (16 kHz mono)")
    p.add_argument("--jsonl", action="store_true", help="write JSONL instead of a JSON array")
    p.add_argument("--workers", type=int, default=1, help="processes rendering records (same bytes for any number)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point ``llava-wb-synthetic``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = generate(
            args.out,
            n_pretrain=args.n_pretrain,
            n_instruct=args.n_instruct,
            n_heldout=args.n_heldout,
            seed=args.seed,
            image_size=args.image_size,
            image_format=args.image_format,
            text_only_frac=args.text_only_frac,
            jsonl=args.jsonl,
            progress=not args.no_progress,
            grid=args.grid,
            noise=args.noise,
            mix=args.mix,
            video_frames=args.video_frames,
            video_fps=args.video_fps,
            audio_seconds=args.audio_seconds,
            workers=args.workers,
        )
    except ValueError as exc:
        parser.error(str(exc))
    for split, path in result["files"].items():
        c = result["counts"][split]
        print(f"{split:9s} {c['records']:7d} records {c['by_modality']} -> {path}")
    print(f"info      {result['info']}")
    return 0


# Modality plugins register their tasks on import (after image and text: dataset_info lists them in order).
from data_tools import synth_av as _synth_av  # noqa: E402,F401
from data_tools import synth_needle as _synth_needle  # noqa: E402,F401
from data_tools import synth_needle_clip as _synth_needle_clip  # noqa: E402,F401

if __name__ == "__main__":
    raise SystemExit(main())
