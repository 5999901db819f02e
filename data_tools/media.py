"""Media files for the converter: find them under the media roots, detect their real format from
their bytes, and optionally check that images decode.

LLaVA data names files by habit, not by content (some OCR-VQA ``.jpg`` files are GIFs), so the
shard field is chosen from magic bytes, never from the file name. Formats and shard fields
(``docs/data_format.md`` section 2):

* image: ``jpeg``->``jpg``, ``png``, ``gif``, ``webp``, ``bmp``, ``tiff``
* video: ``mp4``, ``webm``, ``mkv``, ``avi``
* audio: ``wav``, ``mp3``, ``flac``, ``ogg``

Every read goes through :func:`read_first`: the real path must lie inside a media root, only
regular files are read, with a per-file byte cap; image headers are checked against a pixel cap.
Problems come back as :class:`MediaProblem` carrying a rejection reason (``missing_media``,
``outside_media_root``, ``not_a_regular_file``, ``media_too_large``, ``bad_media_path``,
``unsupported_media``, ``image_too_large``, ``corrupt_media``) and a detail naming the file,
never holding its bytes.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import io
import os
import stat
from collections.abc import Sequence

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
_NON_VIDEO_BRANDS = {
    b"heic",
    b"heix",
    b"hevc",
    b"heim",
    b"heis",
    b"mif1",
    b"msf1",
    b"avif",
    b"avis",
    b"M4A ",
    b"M4B ",
    b"M4P ",
}


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


# Per-file byte cap (``--max-media-bytes``). 1 GiB holds any image, clip or audio file of LLaVA-style
# data (LLaVA-Video clips are tens of MB) while a worker, which holds one sample in memory at a
# time, stays far from running out of memory on a huge or endless file.
DEFAULT_MAX_MEDIA_BYTES = 1 << 30
# Per-image pixel cap (``--max-image-pixels``): PIL's own decompression-bomb threshold (~89.5 MP,
# a 9459 x 9459 image), checked from the header alone, so even ``--no-validate-media`` runs it.
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485


@functools.lru_cache(maxsize=64)
def _real_root(root: str) -> str:
    return os.path.realpath(root)


def _real_under(real_root: str, path: str) -> str:
    """``realpath(real_root/path)``, cheaply: only ``path``'s own components are checked (the root
    is already real); any ``..``, ``.`` or symlink component hands over to ``os.path.realpath``."""
    full = real_root
    for part in path.split("/"):
        if not part:
            continue
        if part in (".", ".."):
            return os.path.realpath(os.path.join(real_root, path))
        full = os.path.join(full, part)
        try:
            if stat.S_ISLNK(os.lstat(full).st_mode):
                return os.path.realpath(os.path.join(real_root, path))
        except OSError:  # missing (or unreadable) from here on: nothing left to resolve
            return os.path.realpath(os.path.join(real_root, path))
    return full


def _outside(path: str, real_root: str, real: str, root: str) -> None:
    if os.path.commonpath([real_root, real]) != real_root:
        raise MediaProblem("outside_media_root", f"{path!r} resolves outside media root {root}")


def resolve_media(path: str, roots: Sequence[str]) -> str:
    """The real path of ``root/path`` for the first root that has it, confined to that root.

    The path is resolved with symlinks followed (``os.path.realpath``) and must stay inside the
    resolved root, so ``..`` parts and symlinks pointing elsewhere are refused
    (``outside_media_root``). Nothing is read. :func:`read_first` takes a faster road to the same
    verdicts for plain paths and comes here for the rest.
    """
    if not roots:
        raise MediaProblem("missing_media", f"{path}: no media roots were given")
    if "\0" in path:
        raise MediaProblem("bad_media_path", f"{path!r}: media path holds a NUL byte")
    for root in roots:
        real_root = _real_root(root)
        real = _real_under(real_root, path)
        _outside(path, real_root, real, root)
        if os.path.lexists(real) and not os.path.isdir(real):
            return real
    raise MediaProblem("missing_media", f"{path} not found under {', '.join(roots)}")


# Media files are opened non-blocking (a FIFO cannot hang the open), never as a controlling tty.
_O_READ = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_DIR = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)
_FAST = bool(_O_NOFOLLOW and getattr(os, "O_DIRECTORY", 0) and os.open in os.supports_dir_fd)
_SYMLINK_ERRNOS = {errno.ELOOP, errno.EMLINK}  # O_NOFOLLOW on a symlink: ELOOP (Linux), EMLINK (BSD)

# Verified folders: (real root, folder as the records spell it) -> (descriptor, real path). Records
# share few folders, so each is resolved and checked against its root once per run, then held
# open and files are opened relative to the descriptor with O_NOFOLLOW: per file one open and one
# fstat. The descriptor pins the folder that was checked, so renaming it or putting a symlink in
# its place later in the run cannot redirect reads outside the root. Trust boundary
# (docs/reliability.md): the converter reads a tree it does not write; a folder that is deleted
# and re-created during a run is still read through the old, checked one. Bounded: closed when full.
_DIRS: dict[tuple[str, str], tuple[int, str]] = {}
_DIRS_MAX = 256


def _clear_dirs() -> None:
    while _DIRS:
        fd, _ = _DIRS.popitem()[1]
        try:
            os.close(fd)
        except OSError:
            pass


def _verified_dir(path: str, root: str, real_root: str, folder: str) -> tuple[int, str] | None:
    """The open, checked folder ``root/folder`` (None when it does not exist there as a folder);
    MediaProblem(outside_media_root) when it resolves outside the root."""
    key = (real_root, folder)
    hit = _DIRS.get(key)
    if hit is not None:
        return hit
    real = _real_under(real_root, folder) if folder else real_root
    _outside(path, real_root, real, root)
    try:
        fd = os.open(real, _O_DIR)
    except OSError:  # missing, a file, unreadable: this root does not have the path
        return None
    if len(_DIRS) >= _DIRS_MAX:
        _clear_dirs()
    _DIRS[key] = (fd, real)
    return fd, real


def _plain(path: str) -> bool:
    """A relative path of named components only (no ``.``, ``..``, empty part or trailing /)."""
    s = f"/{path}/"
    return not path.startswith("/") and "//" not in s and "/./" not in s and "/../" not in s


def _open_media(path: str, roots: Sequence[str]) -> tuple[str, int, os.stat_result]:
    """Open the media file ``path`` of the first root that has it; return (real path, descriptor,
    its ``fstat``).

    Plain paths: the folder comes from :func:`_verified_dir`, the file is opened relative to it
    with O_NOFOLLOW; a symlink as the last part (ELOOP) is resolved and confined like any other.
    Other paths, and systems without ``openat``/O_NOFOLLOW, go through :func:`resolve_media`.
    """
    if not roots:
        raise MediaProblem("missing_media", f"{path}: no media roots were given")
    if "\0" in path:
        raise MediaProblem("bad_media_path", f"{path!r}: media path holds a NUL byte")
    if not (_FAST and _plain(path)):
        full = resolve_media(path, roots)
        return _open_path(full)
    folder, _, name = path.rpartition("/")
    for root in roots:
        real_root = _real_root(root)
        found = _verified_dir(path, root, real_root, folder)
        if found is None:
            continue
        dir_fd, real_dir = found
        full = os.path.join(real_dir, name)
        try:
            fd = os.open(name, _O_READ | _O_NOFOLLOW, dir_fd=dir_fd)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as exc:
            if exc.errno not in _SYMLINK_ERRNOS:
                raise MediaProblem("missing_media", f"{full}: cannot be opened ({exc.strerror or exc})") from None
            real = os.path.realpath(full)  # the last part is a symlink: follow it, then confine it
            _outside(path, real_root, real, root)
            if not os.path.lexists(real) or os.path.isdir(real):
                continue
            return _open_path(real)
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):  # a folder of that name: not here, try the next root
            os.close(fd)
            continue
        return full, fd, st
    raise MediaProblem("missing_media", f"{path} not found under {', '.join(roots)}")


def _open_path(full: str) -> tuple[str, int, os.stat_result]:
    try:
        fd = os.open(full, _O_READ | _O_NOFOLLOW)
    except OSError as exc:
        raise MediaProblem("missing_media", f"{full}: cannot be opened ({exc.strerror or exc})") from None
    return full, fd, os.fstat(fd)


def read_first(path: str, roots: Sequence[str], max_bytes: int = DEFAULT_MAX_MEDIA_BYTES) -> tuple[str, bytes]:
    """Read the media file ``path`` of the first root that has it; return (real path, bytes).

    Confined as :func:`resolve_media` says (its real path must lie inside the root). Only regular
    files are read: the file is opened non-blocking (a FIFO cannot hang the open) and checked
    with ``fstat`` on the open descriptor (``not_a_regular_file`` for FIFOs, devices, sockets);
    a file over ``max_bytes`` is refused (``media_too_large``) and the read is bounded by the cap
    whatever the file does meanwhile. Details name the file, never its bytes.
    """
    full, fd, st = _open_media(path, roots)
    try:
        if not stat.S_ISREG(st.st_mode):
            raise MediaProblem("not_a_regular_file", f"{full}: not a regular file ({_file_kind(st.st_mode)})")
        if st.st_size > max_bytes:
            raise MediaProblem("media_too_large", f"{full}: {st.st_size} bytes > cap {max_bytes} (--max-media-bytes)")
        # Sized by fstat (a 1 GiB read buffer would cost a huge allocation per file), still
        # bounded by the cap: a file that grew meanwhile reads on, up to one byte past the cap.
        ask = min(st.st_size, max_bytes) + 1
        chunks: list[bytes] = []
        size = 0
        try:
            while size <= max_bytes:  # usually two reads: the file, then b"" at its end
                chunk = os.read(fd, ask)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
                ask = min(max_bytes + 1 - size, 1 << 24)
        except OSError as exc:
            raise MediaProblem("missing_media", f"{full}: cannot be read ({exc.strerror or exc})") from None
    finally:
        os.close(fd)
    data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    if len(data) > max_bytes:
        raise MediaProblem("media_too_large", f"{full}: grew past the cap {max_bytes} while read")
    return full, data


def _file_kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISDIR, "a folder"),
    ):
        if test(mode):
            return name
    return "not a plain file"


def read_media(
    path: str,
    roots: Sequence[str],
    modality: str,
    validate: bool,
    *,
    max_bytes: int = DEFAULT_MAX_MEDIA_BYTES,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> tuple[bytes, str]:
    """Find, read and check one media item; return (bytes exactly as on disk, format name).

    Raises MediaProblem when the file is missing, unreadable, outside the media roots, not a
    regular file or over the size cap; of no known format, of a format of another modality; an
    image whose header gives more than ``max_pixels`` pixels (always checked); or (``validate``
    on, images only) an image that does not fully decode.
    """
    full, data = read_first(path, roots, max_bytes)
    if not data:
        raise MediaProblem("unsupported_media", f"{full}: file is empty (0 bytes)")
    fmt = detect_format(data[:64])
    if fmt is None:
        raise MediaProblem("unsupported_media", f"{full}: bytes are of no known format")
    real_modality = FORMATS[fmt][0]
    if real_modality != modality:
        raise MediaProblem(
            "unsupported_media", f"{full}: listed as {modality} but its bytes are {fmt} ({real_modality})"
        )
    if real_modality == "image":
        if validate:  # the decode reads the header anyway and checks the pixel cap before decoding
            check_image_decodes(data, fmt, full, max_pixels)
        else:
            check_image_pixels(data, fmt, full, max_pixels)
    return data, fmt


_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _header_size(data: bytes, fmt: str) -> tuple[int, int] | None:
    """(width, height) read straight from a PNG IHDR or JPEG SOF header (about 10x cheaper than
    ``Image.open``); None when not found, and then PIL reads the header."""
    if fmt == "png" and len(data) >= 24 and data[12:16] == b"IHDR":
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if fmt == "jpeg":
        i = 2
        while i + 9 <= len(data) and data[i] == 0xFF:
            marker = data[i + 1]
            if marker == 0xFF:  # fill byte
                i += 1
                continue
            if marker in _JPEG_SOF:
                return int.from_bytes(data[i + 7 : i + 9], "big"), int.from_bytes(data[i + 5 : i + 7], "big")
            if marker == 0xD8 or 0xD0 <= marker <= 0xD7:
                i += 2
                continue
            i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    return None


def check_image_pixels(data: bytes, fmt: str, name: str, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> None:
    """Refuse an image whose header declares more than ``max_pixels`` pixels (a decompression
    bomb: a few KB of PNG can decode to gigabytes). Reads only the header: PIL opens lazily."""
    from PIL import Image

    size = _header_size(data, fmt)
    try:
        if size is not None:
            width, height = size
        else:
            with Image.open(io.BytesIO(data), formats=[_PIL_NAMES[fmt]]) as im:
                width, height = im.size
    except Image.DecompressionBombError as exc:
        raise MediaProblem("image_too_large", f"{name}: {exc}") from None
    except Exception:  # header unreadable: not a bomb; full validation (if on) judges the rest
        return
    _check_pixels(width, height, name, max_pixels)


def _check_pixels(width: int, height: int, name: str, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise MediaProblem(
            "image_too_large",
            f"{name}: {width} x {height} = {width * height} pixels > cap {max_pixels} (--max-image-pixels)",
        )


# Digests of image bytes that already decoded in this process. LLaVA data points many records at
# the same image (COCO images recur across VQA, captions and conversations); identical bytes
# decode identically, so each distinct image is decoded once per worker. Bounded: cleared when full.
_DECODED_OK: set[bytes] = set()
_DECODED_OK_MAX = 200_000


def reset_decode_cache() -> None:
    """Forget which images decoded and which folders were checked (the converter calls this at
    the start of every run, so a run sees the tree as it is when it starts)."""
    _DECODED_OK.clear()
    _clear_dirs()


def check_image_decodes(data: bytes, fmt: str, name: str, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> None:
    """Fully decode an image with PIL (structure check, then pixel decode); MediaProblem if not.

    The pixel cap is checked first, from the header PIL reads when it opens the image, so an
    image over ``max_pixels`` is refused (``image_too_large``) before anything is decoded; the
    same bytes seen again under the same cap are neither re-checked nor re-decoded.
    Grayscale, RGBA and palette images are valid: nothing is converted here.
    """
    digest = hashlib.blake2b(data, digest_size=16, person=max_pixels.to_bytes(8, "little")).digest()
    if digest in _DECODED_OK:
        return
    _decode(data, fmt, name, max_pixels)
    if len(_DECODED_OK) >= _DECODED_OK_MAX:
        _DECODED_OK.clear()
    _DECODED_OK.add(digest)


def _decode(data: bytes, fmt: str, name: str, max_pixels: int) -> None:
    from PIL import Image, ImageFile

    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set in this process; truncated "
            "images would pass validation. Unset it before converting."
        )
    pil_format = _PIL_NAMES[fmt]
    try:
        if fmt == "png":
            with Image.open(io.BytesIO(data), formats=[pil_format]) as im:
                _check_pixels(*im.size, name, max_pixels)
                im.verify()  # chunk CRCs and the closing IEND chunk, which load() does not need
        with Image.open(io.BytesIO(data), formats=[pil_format]) as im:
            _check_pixels(*im.size, name, max_pixels)
            if fmt == "jpeg":
                # Decode the whole entropy-coded stream but run the IDCT at 1/8 scale: a
                # truncated or broken stream fails exactly as in a full-size decode, ~3x faster.
                im.draft(im.mode, (max(1, im.width // 8), max(1, im.height // 8)))
            im.load()
    except MediaProblem:
        raise
    except Image.DecompressionBombError as exc:  # PIL's own cap, met before ours: still a bomb
        raise MediaProblem("image_too_large", f"{name}: {exc}") from None
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, EOFError, ...
        raise MediaProblem("corrupt_media", f"{name}: {fmt} does not decode ({type(exc).__name__}: {exc})") from None
