"""Image decoding: bytes -> RGB, padded or resized, normalised ``[3, S, S]`` tensors (LLaVA style).

``image_transform(cfg)`` is shared by images and video frames; ``decode_image`` is the ``image``
entry of ``MEDIA_DECODERS``. Every failure is a ``SampleError("corrupt_media", ...)``.

With ``ImageConfig.pixels: uint8`` the decoders stop before normalisation and return uint8
``[3, S, S]`` / ``[T, 3, S, S]`` tensors (what the training loader batches and ships between
processes); ``normalise_pixels`` / ``normalise_batch`` then normalise on the training device,
with the same constants and the same arithmetic as the float path, so both give the same numbers.
"""

from __future__ import annotations

import dataclasses
import io
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from .config import ImageConfig, MediaSettings
from .decoders import MEDIA_DECODERS
from .errors import SampleError

_RESAMPLE = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}


def open_image(data: bytes) -> Image.Image:
    """Bytes -> PIL image (header read, pixels not yet decoded). A header declaring more pixels
    than PIL's ``Image.MAX_IMAGE_PIXELS`` (a decompression bomb) is ``corrupt_media``, never decoded."""
    try:
        img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise SampleError("corrupt_media", f"decompression bomb: {e}") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise SampleError("corrupt_media", f"not a readable image ({len(data)} bytes, starting {data[:8]!r})") from e
    limit = Image.MAX_IMAGE_PIXELS
    if limit and img.width * img.height > limit:
        raise SampleError(
            "corrupt_media",
            f"decompression bomb: {img.width} x {img.height} pixels > PIL.Image.MAX_IMAGE_PIXELS {limit}",
        )
    return img


def to_rgb(img: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Any mode -> RGB; transparent pixels become ``background`` (not black)."""
    if img.mode == "RGB":
        return img
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        base = Image.new("RGB", img.size, background)
        base.paste(img.convert("RGBA"), mask=img.convert("RGBA").getchannel("A"))
        return base
    return img.convert("RGB")


def expand_to_square(img: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """LLaVA's ``expand2square``: pad the short side symmetrically with the background colour."""
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    out = Image.new("RGB", (side, side), background)
    out.paste(img, ((side - w) // 2, (side - h) // 2))
    return out


class ImageTransform:
    """PIL image -> tensor [3, S, S], LLaVA style (pad with mean colour or resize): normalised
    float32, or uint8 un-normalised when ``cfg.pixels == "uint8"`` (then ``normalise_tensor``)."""

    def __init__(self, cfg: ImageConfig):
        import torch

        self.cfg = cfg
        # int(255 * mean), truncated: LLaVA's expand2square and transformers' LlavaImageProcessor pad so
        self.background = tuple(int(255 * m) for m in cfg.mean)
        self._scale = torch.tensor([1.0 / (255.0 * s) for s in cfg.std]).view(3, 1, 1)
        self._shift = torch.tensor([-m / s for m, s in zip(cfg.mean, cfg.std)]).view(3, 1, 1)
        self._on_device: dict[Any, tuple[Any, Any]] = {}

    def pil(self, data: bytes) -> Image.Image:
        """Decode and geometrically transform to an RGB S x S image (no normalisation)."""
        size = self.cfg.size
        img = open_image(data)
        try:
            if img.format == "JPEG":
                img.draft("RGB", (size, size))  # DCT-domain downscale: decode only what is needed
            img.load()
            return self.geometry(img)
        except (OSError, ValueError, SyntaxError) as e:
            raise SampleError("corrupt_media", f"image does not decode: {e}") from e

    def geometry(self, img: Image.Image) -> Image.Image:
        """A loaded PIL image -> RGB, padded (``aspect: pad``) and resized to S x S."""
        size = self.cfg.size
        img = to_rgb(img, self.background)
        if self.cfg.aspect == "pad":
            img = expand_to_square(img, self.background)
        if img.size != (size, size):
            img = img.resize((size, size), _RESAMPLE[self.cfg.resample])
        return img

    def normalise(self, arr: np.ndarray):
        """uint8 ``[..., S, S, 3]`` -> float ``[..., 3, S, S]``, normalised with mean/std."""
        import torch

        return self._normalise_whole(torch.from_numpy(np.ascontiguousarray(arr)).movedim(-1, -3))

    def normalise_tensor(self, x):
        """uint8 ``[..., 3, S, S]`` on any device -> float32, normalised with mean/std (the numbers
        ``normalise`` gives). A CPU batch goes one image at a time: each image's second pass then
        reads what its first pass just wrote from cache (a 32 x 3 x 224^2 batch: ~8 vs ~10 ms on one
        core); elsewhere the whole tensor goes in two kernels."""
        if x.dim() > 3 and x.device.type == "cpu":
            return self._normalise_per_image(x)
        return self._normalise_whole(x)

    def _constants(self, device) -> tuple[Any, Any]:
        consts = self._on_device.get(device)
        if consts is None:
            consts = self._on_device[device] = (self._shift.to(device), self._scale.to(device))
        return consts

    def _normalise_whole(self, x):
        import torch

        shift, scale = self._constants(x.device)
        # (x / 255 - mean) / std as one fused pass: x * scale + shift (0.22 vs 0.32 ms at 224 px),
        # written over the float copy: one allocation, not two (a 32 x 3 x 224^2 batch: 3.8 vs 16 ms
        # on one CPU core, where the second 19 MB allocation page-faults); the same numbers.
        y = x.float()
        return torch.addcmul(shift, y, scale, out=y)

    def _normalise_per_image(self, x):
        import torch

        shift, scale = self._constants(x.device)
        y = torch.empty(x.shape, dtype=torch.float32, device=x.device)
        image = x.shape[-3:]
        for src, dst in zip(x.reshape(-1, *image).unbind(0), y.view(-1, *image).unbind(0)):
            dst.copy_(src)
            torch.addcmul(shift, dst, scale, out=dst)
        return y

    def tensor(self, arr: np.ndarray):
        """uint8 ``[..., S, S, 3]`` -> ``[..., 3, S, S]``: uint8 or normalised float, as ``cfg.pixels``
        says. The uint8 tensor is a ``movedim`` view (channels-last strides, no copy): the collator's
        ``torch.stack`` writes the batch contiguous anyway, and a per-image transposing copy first
        cost ~4% of the training path's CPU time (measured on the bench_data samples)."""
        import torch

        if self.cfg.pixels == "uint8":
            return torch.from_numpy(np.ascontiguousarray(arr)).movedim(-1, -3)
        return self.normalise(arr)

    def frames(self, frames: np.ndarray):
        """Video frames uint8 ``[T, H, W, 3]`` -> ``[T, 3, S, S]``, each frame like an image."""
        return self.tensor(np.stack([np.asarray(self.geometry(Image.fromarray(f))) for f in frames]))

    def __call__(self, data: bytes):
        return self.tensor(np.array(self.pil(data), dtype=np.uint8))


_transforms: dict[tuple, ImageTransform] = {}


def image_transform(cfg: ImageConfig) -> ImageTransform:
    """The (cached) transform for ``cfg``: images and video frames share it. The cache key is every
    field of ``cfg``, so a field added later can never alias two different transforms."""
    key = tuple(getattr(cfg, f.name) for f in dataclasses.fields(cfg))
    if key not in _transforms:
        _transforms[key] = ImageTransform(cfg)
    return _transforms[key]


def normalise_pixels(x, cfg: ImageConfig):
    """uint8 pixels ``[..., 3, S, S]`` (images, or video frames ``[..., T, 3, S, S]``) on any device
    -> float32 normalised with ``cfg.mean`` / ``cfg.std``: the numbers the float32 decoding path
    gives (same constants, same ``addcmul``). A floating-point tensor is returned unchanged, so
    this is safe on any batch; any other dtype is a ``TypeError``."""
    import torch

    if x.is_floating_point():
        return x
    if x.dtype != torch.uint8:
        raise TypeError(f"normalise_pixels: expected uint8 or floating-point pixels, got {x.dtype}")
    if x.dim() < 3 or x.shape[-3] != 3:
        raise ValueError(f"normalise_pixels: expected [..., 3, S, S] pixels, got shape {tuple(x.shape)}")
    return image_transform(cfg).normalise_tensor(x)


PIXEL_KEYS = ("pixel_values", "video_values")


def normalise_batch(batch: dict[str, Any], cfg: ImageConfig) -> dict[str, Any]:
    """A collated batch with its uint8 ``pixel_values`` / ``video_values`` normalised
    (``normalise_pixels``); other keys, absent or ``None`` media and float media are left as they
    are. Returns a new dict (the input batch is not modified). Call it after moving the batch
    to the training device."""
    import torch

    out = dict(batch)
    for key in PIXEL_KEYS:
        value = out.get(key)
        if isinstance(value, torch.Tensor) and value.dtype == torch.uint8:
            out[key] = normalise_pixels(value, cfg)
    return out


@MEDIA_DECODERS.register("image")
def decode_image(data: bytes, settings: MediaSettings):
    return image_transform(settings.image)(data)
