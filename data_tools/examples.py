"""Single synthetic examples decoded as a model sees them, for notebooks and figures.

``needle_clip`` gives one long needle clip (``data_tools.synth_needle_clip``) sampled one frame per
segment, with its record's meta; ``llava_wb.viz.resample.needle_questions`` asks about it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from data_tools.make_synthetic import SynthConfig, make_record


def needle_clip(frames: int, *, index: int = 0, seed: int = 0, size: int = 64) -> tuple[np.ndarray, dict[str, Any]]:
    """A long needle clip (``frames`` segments of 4 frames; the needle shows in one segment only)
    decoded as a model samples it, one frame per segment: uint8 ``[frames, size, size, 3]`` and the
    record's meta (``objects``, ``needle``, ``sampled_frame``: the frame that shows it)."""
    from llava_wb.data.video import read_video

    segments = max(frames, 4)  # the generator's shortest clip; fewer frames keep the needle's and the first others
    cfg = SynthConfig(seed=seed, image_size=size, video_frames=segments, mix=(("needle_clip", 1.0),))
    record, media = make_record(cfg, "heldout", index)
    clip, _ = read_video(media[record["video"]], num_frames=segments)
    meta = dict(record["meta"])
    keep = sorted({meta["sampled_frame"], *[t for t in range(segments) if t != meta["sampled_frame"]][: frames - 1]})
    meta["sampled_frame"] = keep.index(meta["sampled_frame"])
    return clip[keep], meta
