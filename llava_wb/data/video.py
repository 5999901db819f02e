"""Video samples: shard bytes -> ``num_frames`` RGB frames (decord or PyAV), and mp4 encoding for tests.

``read_video(data, num_frames=..., fps=..., backend=...)`` returns uint8 frames ``[T, H, W, 3]``
and an info dict (which frames, at what times). The sampling rule is ``VideoConfig``'s:

* ``fps`` null: ``num_frames`` indices uniformly over the clip, at the centres of ``num_frames``
  equal segments (``((arange(T) + 0.5) * total / T)``, floored);
* ``fps`` set: one timestamp every ``1 / fps`` seconds from 0 while ``< duration`` (= frames /
  native fps), each mapped to the nearest frame (half up); more than ``num_frames`` of them ->
  uniform sampling as above; fewer -> the last index repeats. Every clip gives exactly
  ``num_frames`` frames. A clip whose native frame rate is unknown is sampled uniformly.

Both backends select the same indices from the same frame count and report timestamps as
``index / native fps`` (rounded to 4 decimals), so their infos agree. Decoding is one thread.

Backends (``docs/video_audio.md`` compares them):

* ``decord`` (the ``decord2`` package; the original ``decord`` 0.6.0 has the same import name):
  ``VideoReader`` on an ``io.BytesIO``, ``get_batch`` of the distinct requested indices (it seeks,
  decoding only what it must). Quirks handled here: for some small frame widths (16, 24, 32, 48,
  96, 144 px seen) both decord versions return rows padded to a larger stride (shape
  ``[H, W, 4]`` or ``[H, W, 6]``) and ``get_batch`` fails with ``DECORDArrayCopyFromTo: The size
  must exactly match``; frames are then read one by one and the padding is cut off. And decord
  prints its whole input to stderr when it cannot open it (it passes the bytes as the "file name"
  to its log line), so bytes that start like no known container are rejected before decord sees
  them.
* ``pyav``: ``av.open`` on an ``io.BytesIO``, sequential decode of the video stream, keeping the
  requested frames and stopping after the last one. The frame count comes from the container
  (``stream.frames``), else from counting packets; if the stream ends early, the indices are
  chosen again from the frames that actually decode.

Errors are ``SampleError``: ``corrupt_media`` for empty, garbage, truncated or frameless input,
``unsupported_media`` when the backend package is missing or unknown.

``encode_mp4(frames, fps)`` writes H.264 (libx264, yuv420p, crf 10 by default) into memory with
frame ``i`` at pts ``i`` (time base ``1/fps``); the synthetic data generator, the tests and the
decoder benchmark use it.
"""

from __future__ import annotations

import io
import math
import re
from fractions import Fraction
from typing import Any

import numpy as np

from .config import MediaSettings
from .decoders import MEDIA_DECODERS, DecodedMedia
from .errors import SampleError
from .image import image_transform

BACKENDS = ("decord", "pyav")
DEFAULT_NUM_FRAMES = 8
# ISO-BMFF top-level box types a file may start with (mp4, mov, 3gp, m4v)
_BMFF_BOXES = (b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot", b"uuid", b"styp")


# ----------------------------------------------------------------------------- sampling
def uniform_indices(total: int, num_frames: int) -> np.ndarray:
    """``num_frames`` indices at the centres of equal segments of ``[0, total)``."""
    idx = ((np.arange(num_frames) + 0.5) * total / num_frames).astype(np.int64)
    return np.clip(idx, 0, total - 1)


def sample_indices(total: int, native_fps: float, num_frames: int, fps: float | None) -> np.ndarray:
    """The frame indices ``VideoConfig`` asks for (module docstring); always ``num_frames`` of them."""
    if total <= 0:
        raise ValueError("a clip with no frames has nothing to sample")
    if fps is None or not native_fps > 0:
        return uniform_indices(total, num_frames)
    duration = total / native_fps
    count = max(1, math.ceil(duration * fps - 1e-6))  # i / fps < duration, robust to float error
    if count > num_frames:
        return uniform_indices(total, num_frames)
    times = np.arange(count) / fps
    idx = np.clip(np.floor(times * native_fps + 0.5).astype(np.int64), 0, total - 1)
    if count < num_frames:
        idx = np.concatenate([idx, np.full(num_frames - count, idx[-1], dtype=np.int64)])
    return idx


def _info(indices: np.ndarray, native_fps: float, total: int, backend: str) -> dict[str, Any]:
    rate = native_fps if native_fps > 0 else 1.0
    return {
        "indices": [int(i) for i in indices],
        "timestamps": [round(float(i) / rate, 4) for i in indices],
        "fps": float(native_fps),
        "frames_total": int(total),
        "duration": round(total / rate, 4),
        "backend": backend,
    }


def _check_bytes(data: bytes) -> None:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise SampleError("corrupt_media", f"video is a {type(data).__name__}, not bytes")
    if len(data) == 0:
        raise SampleError("corrupt_media", "video is empty (0 bytes)")


def _looks_like_container(head: bytes) -> bool:
    """A cheap signature check (mp4/mov, Matroska/WebM, AVI, Ogg, FLV, MPEG-TS/PS)."""
    return (
        head[4:8] in _BMFF_BOXES
        or head.startswith((b"\x1a\x45\xdf\xa3", b"RIFF", b"OggS", b"FLV", b"\x00\x00\x01\xba"))
        or (len(head) > 188 and head[0] == 0x47 and head[188] == 0x47)
    )


def _container_name(head: bytes) -> str:
    if head[4:8] in _BMFF_BOXES:
        return "mp4"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "webm" if b"webm" in head[:64] else "mkv"
    if head.startswith(b"RIFF"):
        return "avi"
    return "video"


def _bmff_problem(data: bytes) -> str | None:
    """For ISO-BMFF (mp4/mov) bytes: a message if a top-level box runs past the end or no ``moov``
    box (the index) is there; None when the top-level structure is whole (or it is not mp4)."""
    if data[4:8] not in _BMFF_BOXES:
        return None
    pos, boxes, n = 0, [], len(data)
    while pos + 8 <= n:
        size, kind = int.from_bytes(data[pos : pos + 4], "big"), bytes(data[pos + 4 : pos + 8])
        header = 8
        if size == 1 and pos + 16 <= n:
            size, header = int.from_bytes(data[pos + 8 : pos + 16], "big"), 16
        elif size == 0:
            size = n - pos
        name = kind.decode("latin-1")
        if size < header:
            return f"mp4 box {name!r} at byte {pos} has an invalid size {size}"
        if pos + size > n:
            return f"truncated mp4: box {name!r} at byte {pos} needs {size} bytes, {n - pos} present"
        boxes.append(kind)
        pos += size
    if b"moov" not in boxes:
        return "mp4 has no 'moov' box (truncated or never finished writing)"
    return None


def _fail(data: bytes, backend: str, e: BaseException) -> SampleError:
    """The SampleError for a backend failure, with what is structurally wrong when that is known."""
    msg = _short(e)
    if "cannot find video stream" in msg:
        return SampleError("corrupt_media", f"{_container_name(bytes(data[:64]))} has no video stream ({backend})")
    problem = _bmff_problem(data)
    return SampleError("corrupt_media", f"{problem}; {backend}: {msg}" if problem else f"{backend}: {msg}")


# ----------------------------------------------------------------------------- decord
def _unstride(frame: np.ndarray, width: int) -> np.ndarray:
    """decord's padded-row frames (``[H, W, C']`` with ``C' != 3``) -> ``[H, W, 3]``."""
    h = frame.shape[0]
    row = frame.reshape(h, -1)
    if row.shape[1] < 3 * width:
        raise SampleError("corrupt_media", f"decord returned a frame of shape {frame.shape} for width {width}")
    return np.ascontiguousarray(row[:, : 3 * width]).reshape(h, width, 3)


def _read_decord(data: bytes, num_frames: int, fps: float | None) -> tuple[np.ndarray, dict[str, Any]]:
    try:
        import decord
    except ImportError as e:
        raise SampleError(
            "unsupported_media", f"video backend 'decord' is not installed ({e}); install decord2 (or use backend pyav)"
        ) from None
    if not _looks_like_container(bytes(data[:256])):
        raise SampleError("corrupt_media", f"not a video container ({len(data)} bytes, starting {bytes(data[:8])!r})")
    try:
        vr = decord.VideoReader(io.BytesIO(data), ctx=decord.cpu(0), num_threads=1)
        total = len(vr)
        native_fps = float(vr.get_avg_fps()) if total else 0.0
    except Exception as e:  # DECORDError / RuntimeError: unreadable container, no video stream
        raise _fail(data, "decord", e) from None
    if total <= 0:
        raise SampleError("corrupt_media", "video has no frames")
    if not math.isfinite(native_fps):
        native_fps = 0.0
    indices = sample_indices(total, native_fps, num_frames, fps)
    unique, inverse = np.unique(indices, return_inverse=True)
    try:
        batch = vr.get_batch([int(i) for i in unique]).asnumpy()
        if batch.ndim != 4 or batch.shape[-1] != 3:
            raise ValueError(f"unexpected batch shape {batch.shape}")
    except Exception as e:
        if "DECORDArrayCopyFromTo" not in str(e) and "unexpected batch shape" not in str(e):
            raise _fail(data, "decord", e) from None
        batch = _read_decord_one_by_one(data, vr, unique)  # padded-row quirk (module docstring)
    return batch[inverse.reshape(-1)], _info(indices, native_fps, total, "decord")


def _read_decord_one_by_one(data: bytes, vr, unique: np.ndarray) -> np.ndarray:
    try:
        frames = [vr[int(i)].asnumpy() for i in unique]
    except Exception as e:
        raise _fail(data, "decord", e) from None
    # a padded frame still has the true height and width as its first two dimensions
    return np.stack([f if f.shape[-1] == 3 else _unstride(f, f.shape[1]) for f in frames])


# ----------------------------------------------------------------------------- pyav
def _stream_fps(stream) -> float:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            return float(rate)
    return 0.0


def _open_av(av, data: bytes):
    try:
        container = av.open(io.BytesIO(data), mode="r")
    except Exception as e:  # av.error.InvalidDataError and friends
        raise _fail(data, "pyav", e) from None
    if not container.streams.video:
        container.close()
        raise SampleError("corrupt_media", f"{_container_name(bytes(data[:64]))} has no video stream (pyav)")
    stream = container.streams.video[0]
    stream.thread_count = 1
    return container, stream


def _count_packets(av, data: bytes) -> int:
    container, stream = _open_av(av, data)
    try:
        return sum(1 for p in container.demux(stream) if p.size)
    except Exception as e:
        raise _fail(data, "pyav", e) from None
    finally:
        container.close()


def _decode_selected(av, data: bytes, wanted: np.ndarray) -> tuple[dict[int, np.ndarray], int, bool]:
    """Decode sequentially, keeping frames in ``wanted``; stops after the last one.
    Returns (index -> frame, frames decoded, whether the stream ended before the last wanted one)."""
    container, stream = _open_av(av, data)
    keep = set(int(i) for i in wanted)
    last = max(keep)
    got: dict[int, np.ndarray] = {}
    n = 0
    try:
        for frame in container.decode(stream):
            if n in keep:
                got[n] = frame.to_ndarray(format="rgb24")
            n += 1
            if n > last:
                return got, n, False
    except Exception as e:
        raise _fail(data, f"pyav (after {n} frames)", e) from None
    finally:
        container.close()
    return got, n, True


def _read_pyav(data: bytes, num_frames: int, fps: float | None) -> tuple[np.ndarray, dict[str, Any]]:
    try:
        import av
    except ImportError as e:
        raise SampleError("unsupported_media", f"video backend 'pyav' is not installed ({e}); install av") from None
    container, stream = _open_av(av, data)
    total, native_fps = int(stream.frames or 0), _stream_fps(stream)
    container.close()
    if total <= 0:
        total = _count_packets(av, data)
    if total <= 0:
        raise SampleError("corrupt_media", "video has no frames")
    indices = sample_indices(total, native_fps, num_frames, fps)
    got, decoded, ended = _decode_selected(av, data, indices)
    if ended and len(got) < len(set(indices.tolist())):
        # fewer frames decode than the container says: choose again among those that do
        if decoded == 0:
            raise SampleError("corrupt_media", f"video has no decodable frames (container says {total})")
        total = decoded
        indices = sample_indices(total, native_fps, num_frames, fps)
        got, decoded, ended = _decode_selected(av, data, indices)
    frames = np.stack([got[int(i)] for i in indices])
    return frames, _info(indices, native_fps, total, "pyav")


# ----------------------------------------------------------------------------- API
def _short(e: BaseException, limit: int = 160) -> str:
    """A backend's exception as one short line (decord's source-location prefixes, errno and
    PyAV's ``'<none>'`` file name removed)."""
    text = " ".join(str(e).split())
    text = re.sub(r"\[\d\d:\d\d:\d\d\] \S+:\d+: ", "", text)
    text = re.sub(r"\[Errno -?\d+\] |: '<none>'", "", text).strip() or type(e).__name__
    return text if len(text) <= limit else text[:limit] + "..."


def read_video(
    data: bytes, *, num_frames: int, fps: float | None = None, backend: str = "decord"
) -> tuple[np.ndarray, dict[str, Any]]:
    """Bytes of a video file -> (uint8 frames ``[num_frames, H, W, 3]``, info). See the module docstring."""
    if num_frames <= 0:
        raise ValueError(f"num_frames must be positive, got {num_frames}")
    _check_bytes(data)
    data = bytes(data)
    problem = _bmff_problem(data)  # a cut mp4 may still decode its first frames: reject it whole
    if problem:
        raise SampleError("corrupt_media", problem)
    if backend == "decord":
        return _read_decord(data, num_frames, fps)
    if backend == "pyav":
        return _read_pyav(data, num_frames, fps)
    raise SampleError("unsupported_media", f"unknown video backend {backend!r}; known: {', '.join(BACKENDS)}")


@MEDIA_DECODERS.register("video")
def decode_video(data: bytes, settings: MediaSettings) -> DecodedMedia:
    """The ``video`` decoder: frames through ``data.image``'s transform -> ``[T, 3, S, S]`` plus info
    (normalised float32, or uint8 with ``data.image.pixels: uint8``)."""
    v = settings.video
    frames, info = read_video(data, num_frames=v.num_frames or DEFAULT_NUM_FRAMES, fps=v.fps, backend=v.backend)
    return DecodedMedia(image_transform(settings.image).frames(frames), info)


def encode_mp4(
    frames: np.ndarray, fps: int = 8, *, crf: int = 10, preset: str = "superfast", gop: int | None = None
) -> bytes:
    """uint8 ``[T, H, W, 3]`` (H, W even) -> mp4 bytes (H.264 via libx264, yuv420p, one thread).

    Frame ``i`` gets pts ``i`` in time base ``1/fps``. ``crf`` 10 keeps pixels within a few levels
    of the input (solid colours); ``gop``: keyframe interval (None: libx264's default, 250).
    ``superfast`` (the default) turns off x264's mb-tree and lookahead, with which the same frames
    sometimes encoded to different bytes: this preset gives byte-identical files run after run."""
    import av

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
    t, h, w, _ = frames.shape
    if t == 0 or h % 2 or w % 2:
        raise ValueError(f"need at least one frame and even H, W for yuv420p, got {frames.shape}")
    tb = Fraction(1, int(fps))
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=int(fps), options={"crf": str(crf), "preset": preset})
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.codec_context.time_base = tb
        stream.codec_context.thread_count = 1
        if gop:
            stream.codec_context.gop_size = int(gop)
        for i, arr in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24")
            frame.pts, frame.time_base = i, tb
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()
