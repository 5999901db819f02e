"""``decode_sample``: one raw shard sample (bytes) -> decoded media + conversation, lazily, per modality.

A raw sample is what the tar reader yields: ``{"__key__", "__url__", "json": bytes, "<field>": bytes}``.
The sample's json names each media field (``docs/data_format.md``); shards from other tools that
lack that list are read by extension. Decoders are registered per modality in ``MEDIA_DECODERS``
(``image``, ``video`` and ``audio``, each in its own module, registered on import of this one); each takes ``(bytes, MediaSettings)``
and returns a tensor, or a ``DecodedMedia`` whose ``info`` (frame indices and timestamps, audio
duration) lands in the sample's ``media_info``. Every failure is a ``SampleError`` with a reason,
so the stream can skip and count it.
"""

from __future__ import annotations

import json
from typing import Any

from . import audio as _audio  # noqa: F401  (registers the audio decoder)
from . import video as _video  # noqa: F401  (registers the video decoder)
from .config import ImageConfig, MediaSettings
from .decoders import MEDIA_DECODERS, DecodedMedia
from .errors import SampleError
from .image import (  # noqa: F401  (re-exported: the image decoder's public names)
    ImageTransform,
    decode_image,
    expand_to_square,
    image_transform,
    normalise_batch,
    normalise_pixels,
    open_image,
    to_rgb,
)

IMAGE_EXTS = ("jpg", "jpeg", "png", "gif", "webp", "bmp", "tiff", "tif")
MODAL_TAGS = {"image": "IMAGE", "video": "VIDEO", "audio": "AUDIO"}
EXT_MODALITY = {
    **{e: "image" for e in IMAGE_EXTS},
    **{e: "video" for e in ("mp4", "webm", "mkv", "avi")},
    **{e: "audio" for e in ("wav", "mp3", "flac", "ogg")},
}


def parse_json(raw: dict[str, Any]) -> dict[str, Any]:
    data = raw.get("json")
    if data is None:
        raise SampleError("missing_field", "sample has no .json member")
    try:
        meta = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise SampleError("bad_json", str(e)[:200]) from e
    if not isinstance(meta, dict):
        raise SampleError("bad_json", f"json is a {type(meta).__name__}, not an object")
    if not isinstance(meta.get("conversations"), list):
        raise SampleError("missing_field", "json has no 'conversations' list")
    return meta


def media_fields(raw: dict[str, Any], meta: dict[str, Any]) -> list[tuple[str, str]]:
    """(modality, field) pairs in placeholder order: from the json's media list, else by extension."""
    if "media" in meta:
        try:
            return [(m["modality"], m["field"]) for m in meta["media"]]
        except (TypeError, KeyError) as e:
            raise SampleError("bad_json", f"malformed 'media' list: {e!r}") from e
    found = [
        (EXT_MODALITY[k.rsplit(".", 1)[-1]], k)
        for k in sorted(raw)
        if not k.startswith("__") and k.rsplit(".", 1)[-1] in EXT_MODALITY
    ]
    return found


def decode_sample(
    raw: dict[str, Any], settings: MediaSettings | ImageConfig, *, decode_media: bool = True
) -> dict[str, Any]:
    """Decode one raw sample. With ``decode_media=False`` media stay as bytes (round trips, tests).
    ``settings``: the run's ``MediaSettings`` (an ``ImageConfig`` alone means default video/audio)."""
    key = raw.get("__key__", "?")
    if isinstance(settings, ImageConfig):
        settings = MediaSettings(image=settings)
    try:
        meta = parse_json(raw)
        media: dict[str, list] = {}
        media_info: dict[str, list] = {}
        modal_list: list[str] = []
        for modality, fieldname in media_fields(raw, meta):
            if fieldname not in raw:
                raise SampleError("missing_media", f"json lists field {fieldname!r} but the shard has none")
            if modality not in MODAL_TAGS:
                raise SampleError("unsupported_media", f"unknown modality {modality!r}")
            value = raw[fieldname]
            if decode_media:
                if modality not in MEDIA_DECODERS:
                    raise SampleError("unsupported_media", f"no decoder registered for {modality}")
                value = MEDIA_DECODERS.get(modality)(value, settings)
                if isinstance(value, DecodedMedia):
                    media_info.setdefault(modality, []).append(value.info)
                    value = value.value
            media.setdefault(modality, []).append(value)
            modal_list.append(MODAL_TAGS[modality])
    except SampleError as e:
        raise e.with_key(key) from None
    return {
        "key": key,
        "url": raw.get("__url__"),
        "id": meta.get("id", key),
        "meta": meta,
        "conversations": meta["conversations"],
        "media": media,
        "media_info": media_info,
        "modal_list": modal_list,
    }
