"""decode_sample: image modes, LLaVA pad-to-square geometry, foreign shards, and failure reasons."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from llava_wb.data.config import ImageConfig
from llava_wb.data.decode import ImageTransform, decode_sample
from llava_wb.data.errors import SampleError

CFG = ImageConfig(size=32)
CONV = [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]


def enc(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def raw(field: str, data: bytes, *, media=True, key="000000001_x") -> dict:
    meta = {"id": "x", "conversations": CONV}
    if media:
        meta["media"] = [{"modality": "image", "field": field}]
    return {"__key__": key, "json": json.dumps(meta).encode(), field: data}


def unnormalise(t: torch.Tensor) -> np.ndarray:
    mean = torch.tensor(CFG.mean).view(3, 1, 1)
    std = torch.tensor(CFG.std).view(3, 1, 1)
    return ((t * std + mean) * 255).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()


@pytest.mark.parametrize(
    "mode,fmt,field",
    [
        ("RGB", "JPEG", "jpg"),
        ("L", "PNG", "png"),
        ("RGBA", "PNG", "png"),
        ("P", "GIF", "gif"),
        ("RGB", "WEBP", "webp"),
        ("I;16", "PNG", "png"),
    ],
)
def test_any_image_mode_becomes_rgb_tensor(mode, fmt, field):
    img = (
        Image.new("RGB", (40, 20), (250, 20, 20)).convert(mode) if mode != "I;16" else Image.new("I;16", (40, 20), 300)
    )
    out = decode_sample(raw(field, enc(img, fmt)), CFG)
    (t,) = out["media"]["image"]
    assert t.shape == (3, 32, 32) and t.dtype == torch.float32
    assert out["modal_list"] == ["IMAGE"] and out["conversations"] == CONV


def test_pad_mode_expands_to_square_with_mean_colour():
    img = Image.new("RGB", (64, 32), (255, 0, 0))
    t = decode_sample(raw("png", enc(img, "PNG")), CFG)["media"]["image"][0]
    px = unnormalise(t)
    mean_rgb = np.array([round(255 * m) for m in CFG.mean])
    assert np.abs(px[1, 16].astype(int) - mean_rgb).max() <= 2, "top band is padding"
    assert np.abs(px[16, 16].astype(int) - [255, 0, 0]).max() <= 2, "centre is the image"
    resized = ImageTransform(ImageConfig(size=32, aspect="resize")).pil(enc(img, "PNG"))
    assert np.asarray(resized)[1, 16].tolist() == [255, 0, 0], "resize mode squashes, no padding"


def test_transparent_pixels_take_the_background_not_black():
    img = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    px = unnormalise(decode_sample(raw("png", enc(img, "PNG")), CFG)["media"]["image"][0])
    assert px.mean() > 80


def test_foreign_shard_without_media_list_is_read_by_extension():
    out = decode_sample(raw("jpg", enc(Image.new("RGB", (8, 8)), "JPEG"), media=False), CFG)
    assert out["modal_list"] == ["IMAGE"] and len(out["media"]["image"]) == 1


@pytest.mark.parametrize(
    "make,reason",
    [
        (lambda: raw("jpg", enc(Image.new("RGB", (64, 64), (1, 2, 3)), "JPEG")[:200]), "corrupt_media"),
        (lambda: raw("png", b"not an image"), "corrupt_media"),
        (lambda: {**raw("png", b""), "png": b""}, "corrupt_media"),
        (lambda: {k: v for k, v in raw("png", b"x").items() if k != "png"}, "missing_media"),
        (lambda: {"__key__": "k", "json": b"{not json"}, "bad_json"),
        (lambda: {"__key__": "k", "json": b"[1, 2]"}, "bad_json"),
        (lambda: {"__key__": "k", "json": json.dumps({"id": "x"}).encode()}, "missing_field"),
        (lambda: {"__key__": "k"}, "missing_field"),
    ],
)
def test_bad_samples_raise_sample_error_with_reason_and_key(make, reason):
    sample = make()
    with pytest.raises(SampleError) as info:
        decode_sample(sample, CFG)
    assert info.value.reason == reason
    assert info.value.key == sample["__key__"]
