"""``ImageConfig.pixels: uint8``: decoders return un-normalised uint8 pixels that batch as uint8,
and ``normalise_pixels`` / ``normalise_batch`` turn them into exactly the float32 path's numbers."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from llava_wb.data.collate import Collator
from llava_wb.data.config import DataConfig, DataConfigError, ImageConfig, MediaSettings, VideoConfig
from llava_wb.data.decode import decode_sample
from llava_wb.data.image import ImageTransform, image_transform, normalise_batch, normalise_pixels
from llava_wb.data.video import encode_mp4

S = 32
FLOAT, UINT8 = ImageConfig(size=S), ImageConfig(size=S, pixels="uint8")
TOL = 1e-6  # the two paths run the same addcmul on the same constants; allow one float32 ulp


def photo(w: int, h: int, mode: str = "RGB") -> Image.Image:
    """A smooth colour gradient with texture (not a flat colour, so resampling has work to do)."""
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x * y) % 256], -1).astype(np.uint8)
    img = Image.fromarray(rgb)
    if mode == "RGBA":
        alpha = np.where((x + y) % 7 == 0, 0, np.where(x < w // 3, 128, 255)).astype(np.uint8)
        img.putalpha(Image.fromarray(alpha))
    return img


def enc(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def raw(field: str, data: bytes, modality: str = "image") -> dict:
    meta = {
        "id": "x",
        "conversations": [{"from": "human", "value": f"<{modality}>\nq"}, {"from": "gpt", "value": "a"}],
        "media": [{"modality": modality, "field": field}],
    }
    return {"__key__": "000000001_x", "json": json.dumps(meta).encode(), field: data}


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape and a.dtype == b.dtype == torch.float32
    return (a - b).abs().max().item()


@pytest.mark.parametrize(
    "field,data",
    [
        ("jpg", enc(photo(61, 40), "JPEG")),
        ("png", enc(photo(40, 61, "RGBA"), "PNG")),  # transparent pixels take the background colour
    ],
    ids=["jpg", "png-rgba"],
)
def test_uint8_image_then_normalise_equals_the_float_path(field, data):
    (f,) = decode_sample(raw(field, data), FLOAT)["media"]["image"]
    (u,) = decode_sample(raw(field, data), UINT8)["media"]["image"]
    assert u.dtype == torch.uint8 and u.shape == (3, S, S)
    assert f.dtype == torch.float32 and f.shape == (3, S, S)
    assert int(u.max()) > int(u.min())  # real pixels, not a constant
    assert max_diff(normalise_pixels(u, FLOAT), f) <= TOL
    assert max_diff(normalise_pixels(u, UINT8), f) <= TOL  # pixels does not change the constants


@pytest.fixture(scope="module")
def mp4() -> bytes:
    t, h, w = 12, 48, 64
    y, x = np.mgrid[0:h, 0:w]
    frames = np.stack(
        [np.stack([(x * 4 + 20 * i) % 256, (y * 5) % 256, np.full_like(x, 20 * i)], -1) for i in range(t)]
    ).astype(np.uint8)
    return encode_mp4(frames, fps=8)


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_uint8_video_frames_then_normalise_equal_the_float_path(mp4, backend):
    video = VideoConfig(num_frames=6, backend=backend)
    f_out = decode_sample(raw("mp4", mp4, "video"), MediaSettings(image=FLOAT, video=video))
    u_out = decode_sample(raw("mp4", mp4, "video"), MediaSettings(image=UINT8, video=video))
    (f,), (u,) = f_out["media"]["video"], u_out["media"]["video"]
    assert u.dtype == torch.uint8 and u.shape == (6, 3, S, S)
    assert f.dtype == torch.float32 and f.shape == (6, 3, S, S)
    assert u_out["media_info"] == f_out["media_info"]
    assert max_diff(normalise_pixels(u, FLOAT), f) <= TOL


def test_float_input_passes_through_and_other_dtypes_are_refused():
    x = torch.randn(2, 3, S, S)
    assert normalise_pixels(x, FLOAT) is x
    half = x.to(torch.bfloat16)
    assert normalise_pixels(half, FLOAT) is half
    with pytest.raises(TypeError, match="uint8 or floating-point.*int16"):
        normalise_pixels(torch.zeros(3, S, S, dtype=torch.int16), FLOAT)
    with pytest.raises(ValueError, match=r"\[\.\.\., 3, S, S\].*\(4, 8, 8\)"):
        normalise_pixels(torch.zeros(4, 8, 8, dtype=torch.uint8), FLOAT)


def test_the_transform_cache_keeps_float_and_uint8_apart():
    assert image_transform(FLOAT) is image_transform(ImageConfig(size=S))
    assert image_transform(FLOAT) is not image_transform(UINT8)
    data = enc(photo(20, 20), "PNG")
    assert image_transform(FLOAT)(data).dtype == torch.float32
    assert image_transform(UINT8)(data).dtype == torch.uint8


def test_config_field_parses_and_rejects_unknown_values():
    assert DataConfig.from_dict({"image": {"pixels": "uint8"}}).image.pixels == "uint8"
    assert DataConfig.from_dict({}).image.pixels == "float32"
    with pytest.raises(DataConfigError, match="data.image.pixels"):
        DataConfig.from_dict({"image": {"pixels": "float16"}})


def _samples(cfg: ImageConfig, mp4: bytes) -> list[dict]:
    """Three training-like samples: two images, one video, one text-only."""
    settings = MediaSettings(image=cfg, video=VideoConfig(num_frames=4, backend="pyav"))
    img = decode_sample(raw("jpg", enc(photo(50, 30), "JPEG")), settings)["media"]
    png = decode_sample(raw("png", enc(photo(30, 50, "RGBA"), "PNG")), settings)["media"]
    vid = decode_sample(raw("mp4", mp4, "video"), settings)["media"]
    return [
        {"input_ids": [1, 2, 3], "labels": [-100, 2, 3], "media": {"image": [img["image"][0], png["image"][0]]}},
        {"input_ids": [4, 5], "labels": [-100, 5], "media": vid},
        {"input_ids": [6], "labels": [6]},
    ]


def test_collated_batch_stays_uint8_and_normalise_batch_matches_the_float_batch(mp4):
    collate = Collator(pad_token_id=0)
    fb, ub = collate(_samples(FLOAT, mp4)), collate(_samples(UINT8, mp4))
    assert ub["pixel_values"].dtype == torch.uint8 and ub["pixel_values"].shape == (2, 3, S, S)
    assert ub["video_values"].dtype == torch.uint8 and ub["video_values"].shape == (1, 4, 3, S, S)
    assert ub["pixel_values"].is_contiguous()  # the stack of per-image CHW views is written contiguous
    before = dict(ub)
    nb = normalise_batch(ub, FLOAT)
    assert set(ub) == set(before) and all(ub[k] is v for k, v in before.items())  # input batch untouched
    assert ub["pixel_values"].dtype == torch.uint8
    for key in ("pixel_values", "video_values"):
        assert max_diff(nb[key], fb[key]) <= TOL
    for key in ("input_ids", "labels", "attention_mask", "image_counts", "video_counts"):
        assert nb[key] is ub[key]
    assert normalise_batch(fb, FLOAT)["pixel_values"] is fb["pixel_values"]  # float batches pass through


def test_normalise_batch_leaves_a_batch_without_media_alone():
    batch = Collator(pad_token_id=0)([{"input_ids": [1, 2], "labels": [1, 2]}])
    assert batch["pixel_values"] is None and "video_values" not in batch
    out = normalise_batch(batch, FLOAT)
    assert out["pixel_values"] is None and "video_values" not in out


def test_training_loader_ships_uint8_through_worker_processes(tmp_path):
    from shardkit import write_shards

    from llava_wb.data.loader import build_train_loader
    from llava_wb.tokenizer import build_demo_tokenizer, demo_corpus

    write_shards(str(tmp_path), [5, 5])
    tok = build_demo_tokenizer(demo_corpus(["question answer " * 10]))

    def batches(pixels: str) -> list[dict]:
        cfg = DataConfig.from_dict(
            {
                "sources": [str(tmp_path)],
                "batch_size": 4,
                "num_workers": 2,
                "epoch_mode": "exact",
                "shuffle_shards": False,
                "shuffle_buffer": 0,
                "image": {"size": 16, "pixels": pixels},
            }
        )
        return list(build_train_loader(cfg, tok, media_tokens={"image": 4}))

    fl, ul = batches("float32"), batches("uint8")
    assert [b["id"] for b in ul] == [b["id"] for b in fl] and sum(len(b["id"]) for b in ul) == 10
    for f, u in zip(fl, ul):
        assert u["pixel_values"].dtype == torch.uint8 and u["pixel_values"].shape[1:] == (3, 16, 16)
        assert max_diff(normalise_batch(u, ImageConfig(size=16))["pixel_values"], f["pixel_values"]) <= TOL


rgb = st.tuples(*[st.floats(0.0, 1.0)] * 3)
positive = st.tuples(*[st.floats(0.01, 2.0)] * 3)


@settings(max_examples=60, deadline=None)
@given(
    x=st.integers(1, 3).flatmap(
        lambda n: arrays(np.uint8, st.tuples(st.just(n), st.integers(1, 9), st.integers(1, 9), st.just(3)))
    ),
    mean=rgb,
    std=positive,
)
def test_normalise_pixels_is_the_float_path_for_any_pixels_and_constants(x, mean, std):
    cfg = ImageConfig(size=S, mean=mean, std=std)
    view = torch.from_numpy(x).movedim(-1, -3)  # what the uint8 decoders return per sample
    float_path = ImageTransform(cfg).normalise(x)
    expected = (view.double() / 255 - torch.tensor(mean).double().view(3, 1, 1)) / torch.tensor(std).double().view(
        3, 1, 1
    )
    for chw in (view, view.contiguous(), view[0], view.contiguous()[0]):  # + a collated batch, single images
        out = normalise_pixels(chw, cfg)
        assert out.dtype == torch.float32 and out.shape == chw.shape
        ref, exact = (float_path, expected) if chw.dim() == 4 else (float_path[0], expected[0])
        assert max_diff(out, ref) <= TOL * max(1.0, out.abs().max().item())
        assert (out.double() - exact).abs().max().item() <= 1e-5 * max(1.0, exact.abs().max().item())
