"""Media files for the converter: find them under the media roots, detect their real format from
their bytes, and optionally check that images decode.

LLaVA data names files by habit, not by content (some OCR-VQA ``.jpg`` files are GIFs), so the
shard field is chosen from magic bytes, never from the file name. Formats and shard fields
(``docs/data_format.md`` section 2):

* image: ``jpeg``->``jpg``, ``png``, ``gif``, ``webp``, ``bmp``, ``tiff``
* video: ``mp4``, ``webm``, ``mkv``, ``avi``
* audio: ``wav``, ``mp3``, ``flac``, ``ogg``

Problems come back as :class:`MediaProblem` carrying a rejection reason (``missing_media``,
``unsupported_media``, ``corrupt_media``) and a detail naming the file.
"""

from __future__ import annotations

import hashlib
import io
import os
from typing import Sequence

MODALITIES = ("image", "video", "audio")

# format name -> (modality, shard field extension)
FORMATS: dict[str, tuple[str, str]] = {
    "jpeg": ("image", "jpg"),
    "png": ("image", "png"),
    "gif": ("image", "gif"),
    "webp": ("image", "webp"),
    "bmp": ("image", "bmp"),
    "tiff": ("image", "tiff"),
    "mp4": ("video", "mp4"),
    "webm": ("video", "webm"),
    "mkv": ("video", "mkv"),
    "avi": ("video", "avi"),
    "wav": ("audio", "wav"),
    "mp3": ("audio", "mp3"),
    "flac": ("audio", "flac"),
    "ogg": ("audio", "ogg"),
}

_PIL_NAMES = {"jpeg": "JPEG", "png": "PNG", "gif": "GIF", "webp": "WEBP", "bmp": "BMP", "tiff": "TIFF"}
# ISO-BMFF brands that are still images or audio, not video.
_NON_VIDEO_BRANDS = {b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1", b"avif",
                     b"avis", b"M4A ", b"M4B ", b"M4P "}


class MediaProblem(Exception):
    """A media item cannot be stored; ``reason`` is a converter rejection reason."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def detect_format(head: bytes) -> str | None:
    """Return the format name of media starting with ``head`` (>= 64 bytes if available), or None."""
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if head[:4] == b"RIFF" and len(head) >= 12:
        return {b"WEBP": "webp", b"AVI ": "avi", b"WAVE": "wav"}.get(head[8:12])
    if head.startswith(b"BM") and len(head) >= 14 and head[6:10] == b"\x00\x00\x00\x00":
        return "bmp"  # "BM", file size, 4 reserved zero bytes
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return "tiff"
    if len(head) >= 12 and head[4:8] == b"ftyp":
        return None if head[8:12] in _NON_VIDEO_BRANDS else "mp4"
    if head.startswith(b"\x1a\x45\xdf\xa3"):  # EBML: Matroska family, DocType says which
        return "webm" if b"webm" in head[:64] else "mkv"
    if head.startswith(b"fLaC"):
        return "flac"
    if head.startswith(b"OggS"):
        return "ogg"
    if head.startswith(b"ID3") or _is_mpeg_audio_frame(head):
        return "mp3"
    return None


def _is_mpeg_audio_frame(head: bytes) -> bool:
    """An MPEG-1/2/2.5 audio frame header (layer I-III) with a valid bitrate and sample rate."""
    if len(head) < 4 or head[0] != 0xFF or (head[1] & 0xE0) != 0xE0:
        return False
    version = (head[1] >> 3) & 0x3
    layer = (head[1] >> 1) & 0x3
    bitrate = head[2] >> 4
    rate = (head[2] >> 2) & 0x3
    return version != 1 and layer != 0 and bitrate not in (0, 15) and rate != 3


def read_first(path: str, roots: Sequence[str]) -> tuple[str, bytes]:
    """Read ``root/path`` from the first root that has it as a file; return (full path, bytes).

    Raises MediaProblem(missing_media) when no root has it, or it exists but cannot be read.
    """
    if not roots:
        raise MediaProblem("missing_media", f"{path}: no media roots were given")
    for root in roots:
        full = os.path.join(root, path)
        try:
            with open(full, "rb") as f:
                return full, f.read()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            continue
        except OSError as exc:
            raise MediaProblem("missing_media", f"{full}: cannot be read ({exc.strerror or exc})") from None
    raise MediaProblem("missing_media", f"{path} not found under {', '.join(roots)}")


def read_media(path: str, roots: Sequence[str], modality: str, validate: bool) -> tuple[bytes, str]:
    """Find, read and check one media item; return (bytes exactly as on disk, format name).

    Raises MediaProblem when the file is missing or unreadable, of no known format, of a format
    of another modality, or (``validate`` on, images only) does not fully decode.
    """
    full, data = read_first(path, roots)
    if not data:
        raise MediaProblem("unsupported_media", f"{full}: file is empty (0 bytes)")
    fmt = detect_format(data[:64])
    if fmt is None:
        raise MediaProblem("unsupported_media", f"{full}: bytes are of no known format "
                                                f"(starts with {data[:8].hex()})")
    real_modality = FORMATS[fmt][0]
    if real_modality != modality:
        raise MediaProblem("unsupported_media", f"{full}: listed as {modality} but its bytes are "
                                                f"{fmt} ({real_modality})")
    if validate and real_modality == "image":
        check_image_decodes(data, fmt, full)
    return data, fmt


# Digests of image bytes that already decoded in this process. LLaVA data points many records at
# the same image (COCO images recur across VQA, captions and conversations); identical bytes
# decode identically, so each distinct image is decoded once per worker. Bounded: cleared when full.
_DECODED_OK: set[bytes] = set()
_DECODED_OK_MAX = 200_000


def reset_decode_cache() -> None:
    """Forget which images decoded (the converter calls this at the start of every run)."""
    _DECODED_OK.clear()


def check_image_decodes(data: bytes, fmt: str, name: str) -> None:
    """Fully decode an image with PIL (structure check, then pixel decode); MediaProblem if not.

    Grayscale, RGBA and palette images are valid: nothing is converted here.
    """
    digest = hashlib.blake2b(data, digest_size=16).digest()
    if digest in _DECODED_OK:
        return
    _decode(data, fmt, name)
    if len(_DECODED_OK) >= _DECODED_OK_MAX:
        _DECODED_OK.clear()
    _DECODED_OK.add(digest)


def _decode(data: bytes, fmt: str, name: str) -> None:
    from PIL import Image, ImageFile

    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set in this process; truncated "
                           "images would pass validation. Unset it before converting.")
    pil_format = _PIL_NAMES[fmt]
    try:
        if fmt == "png":
            with Image.open(io.BytesIO(data), formats=[pil_format]) as im:
                im.verify()  # chunk CRCs and the closing IEND chunk, which load() does not need
        with Image.open(io.BytesIO(data), formats=[pil_format]) as im:
            if fmt == "jpeg":
                # Decode the whole entropy-coded stream but run the IDCT at 1/8 scale: a
                # truncated or broken stream fails exactly as in a full-size decode, ~3x faster.
                im.draft(im.mode, (max(1, im.width // 8), max(1, im.height // 8)))
            im.load()
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, EOFError, ...
        raise MediaProblem("corrupt_media", f"{name}: {fmt} does not decode "
                                            f"({type(exc).__name__}: {exc})") from None
