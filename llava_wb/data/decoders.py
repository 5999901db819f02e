"""The ``MEDIA_DECODERS`` registry (modality -> decoder) and ``DecodedMedia``; imports no decoder.

A decoder takes ``(bytes, MediaSettings)`` and returns a tensor, or a ``DecodedMedia`` whose
``info`` (frame indices and timestamps, audio duration) lands in the sample's ``media_info``. The
built-ins (``image``, ``video``, ``audio``) live in their own modules and are registered by
importing ``llava_wb.data.decode``, which dispatches a sample's media to them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from llava_wb.data.config import MediaSettings
from llava_wb.registry import Registry

MEDIA_DECODERS: Registry = Registry("media decoder")


@dataclass
class DecodedMedia:
    """A decoder's result with side information (kept in the sample's ``media_info``)."""

    value: Any
    info: dict[str, Any]


Decoder = Callable[[bytes, MediaSettings], Any]
