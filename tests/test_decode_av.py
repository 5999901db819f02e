"""Video and audio decoding: frame sampling (uniform, fps), pixels from both backends, Whisper
log-mel audio, mono mixing and resampling, and the failure reasons of bad media."""

from __future__ import annotations

import io
import json
import sys

import numpy as np
import pytest
import torch

from llava_wb.data.audio import encode_audio, features, read_audio, resample
from llava_wb.data.config import AudioConfig, ImageConfig, MediaSettings, VideoConfig
from llava_wb.data.decode import decode_sample
from llava_wb.data.errors import SampleError
from llava_wb.data.video import encode_mp4, read_video, sample_indices

BACKENDS = ["decord", "pyav"]
T, H, W, FPS = 24, 32, 48, 8  # 3 s; width 48 also exercises decord's padded-row quirk
TOL = 8.0  # codec tolerance: mean abs error per frame, in 0-255 levels (crf 10 gives ~1-2)
PALETTE = np.array([(10 * i, 255 - 10 * i, 68 if i % 2 == 0 else 188) for i in range(T)], dtype=np.uint8)
CONV = [{"from": "human", "value": "<video>\nq"}, {"from": "gpt", "value": "a"}]


@pytest.fixture(scope="module")
def clip() -> tuple[np.ndarray, bytes]:
    frames = np.broadcast_to(PALETTE[:, None, None, :], (T, H, W, 3)).copy()  # frame i: solid colour i
    return frames, encode_mp4(frames, fps=FPS)


def frame_ids(frames: np.ndarray) -> list[int]:
    """Which written frame each decoded one is (nearest palette colour of its mean)."""
    means = frames.reshape(len(frames), -1, 3).mean(axis=1)
    return np.abs(means[:, None, :] - PALETTE[None].astype(float)).sum(-1).argmin(1).tolist()


def sample(field: str, data: bytes, modality: str, key: str = "000000007_av") -> dict:
    meta = {"id": "x", "conversations": CONV, "media": [{"modality": modality, "field": field}]}
    return {"__key__": key, "json": json.dumps(meta).encode(), field: data}


# ----------------------------------------------------------------------------- sampling
def test_sample_indices_rules():
    assert sample_indices(24, 8.0, 8, None).tolist() == [1, 4, 7, 10, 13, 16, 19, 22]  # segment centres
    assert sample_indices(24, 8.0, 12, 4.0).tolist() == list(range(0, 24, 2))  # fps: exactly 12 timestamps
    assert sample_indices(24, 8.0, 8, 2.0).tolist() == [0, 4, 8, 12, 16, 20, 20, 20]  # shorter: last repeats
    assert sample_indices(24, 8.0, 4, 2.0).tolist() == [3, 9, 15, 21]  # 6 > 4 timestamps: uniform
    assert sample_indices(5, 8.0, 8, None).tolist() == [0, 0, 1, 2, 2, 3, 4, 4]  # fewer frames than asked
    # NTSC rate: 30 frames last 1.001 s, so t = 0, 1/3, 2/3, 1 s; t = 1/3 s is frame 9.99 -> 10 (nearest)
    assert sample_indices(30, 30000 / 1001, 4, 3.0).tolist() == [0, 10, 20, 29]
    # exactly 1 s at 30 fps: t = 1 s is not < duration, whatever the float error of 30 * (1/30)
    assert sample_indices(30, 30.0, 4, 3.0).tolist() == [0, 10, 20, 20]


@pytest.mark.parametrize("backend", BACKENDS)
def test_uniform_sampling_indices_timestamps_and_pixels(clip, backend):
    frames, data = clip
    out, info = read_video(data, num_frames=8, backend=backend)
    assert out.shape == (8, H, W, 3) and out.dtype == np.uint8
    assert info["indices"] == [1, 4, 7, 10, 13, 16, 19, 22]
    assert info["timestamps"] == [i / FPS for i in info["indices"]]
    assert (info["fps"], info["frames_total"], info["duration"], info["backend"]) == (8.0, T, 3.0, backend)
    assert frame_ids(out) == info["indices"]
    err = np.abs(out.astype(float) - frames[info["indices"]]).mean(axis=(1, 2, 3))
    assert err.max() < TOL, f"mean abs error per frame {err.round(2)}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "num_frames,fps,expected",
    [
        (12, 4.0, list(range(0, 24, 2))),  # one frame every 0.25 s
        (8, 2.0, [0, 4, 8, 12, 16, 20, 20, 20]),  # clip shorter than 8 x 0.5 s: last frame repeats
        (4, 2.0, [3, 9, 15, 21]),  # 6 timestamps > 4: uniform fallback
        (3, 0.25, [0, 0, 0]),  # one timestamp (t=0) in a 3 s clip
    ],
)
def test_fps_sampling(clip, backend, num_frames, fps, expected):
    frames, data = clip
    out, info = read_video(data, num_frames=num_frames, fps=fps, backend=backend)
    assert info["indices"] == expected and len(out) == num_frames
    assert info["timestamps"] == [round(i / FPS, 4) for i in expected]
    assert frame_ids(out) == expected
    assert np.abs(out.astype(float) - frames[expected]).mean() < TOL


def test_backends_pick_the_same_frames(clip):
    _, data = clip
    (a, ia), (b, ib) = (read_video(data, num_frames=10, fps=None, backend=be) for be in BACKENDS)
    assert {k: v for k, v in ia.items() if k != "backend"} == {k: v for k, v in ib.items() if k != "backend"}
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 2  # same bitstream, same decoder family


def test_decord_padded_row_widths_are_repaired():
    """decord returns rows padded to a wider stride at some widths (16, 24, 32, 48, 96, 144 px)."""
    frames = np.zeros((4, 16, 32, 3), np.uint8)
    frames[:, :, :16] = (200, 40, 40)
    frames[:, :, 16:] = (30, 220, 60)
    out, _ = read_video(encode_mp4(frames, fps=4), num_frames=4, backend="decord")
    assert out.shape == (4, 16, 32, 3)
    assert np.abs(out.astype(float) - frames).mean() < TOL


@pytest.mark.parametrize("backend", BACKENDS)
def test_decode_sample_video(clip, backend):
    _, data = clip
    settings = MediaSettings(image=ImageConfig(size=32), video=VideoConfig(num_frames=6, backend=backend))
    out = decode_sample(sample("mp4", data, "video"), settings)
    (v,) = out["media"]["video"]
    assert v.shape == (6, 3, 32, 32) and v.dtype == torch.float32
    assert out["media_info"]["video"][0]["indices"] == [2, 6, 10, 14, 18, 22]
    assert out["modal_list"] == ["VIDEO"]
    default = decode_sample(sample("mp4", data, "video"), ImageConfig(size=32))  # num_frames null -> 8
    assert default["media"]["video"][0].shape == (8, 3, 32, 32)


# ----------------------------------------------------------------------------- audio
def tone(freq: float, sr: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * np.arange(int(sr * seconds)) / sr)).astype(np.float32)


def dominant_hz(wave: np.ndarray, sr: int) -> float:
    spec = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.argmax(spec) * sr / len(wave))


@pytest.fixture(scope="module")
def stereo_wav() -> bytes:
    left, right = tone(440, 44100, 1.5, 0.5), tone(440, 44100, 1.5, 0.3)
    return encode_audio(np.stack([left, right], axis=1), 44100, "wav")


def test_stereo_44k_wav_is_mixed_to_mono_and_resampled(stereo_wav):
    wave, info = read_audio(stereo_wav, sampling_rate=16000)
    assert info == {"sampling_rate": 44100, "channels": 2, "duration": 1.5, "frames": 66150}
    assert wave.dtype == np.float32 and abs(len(wave) - 1.5 * 16000) <= 1
    assert abs(dominant_hz(wave, 16000) - 440) <= 5
    assert abs(np.abs(wave[1000:-1000]).max() - 0.4) < 0.01, "mono = mean of 0.5 and 0.3 amplitudes"


def test_resampler_is_band_limited():
    aliased = resample(tone(12000, 44100, 1.0, 1.0), 44100, 16000)  # above 8 kHz: must vanish, not fold to 4 kHz
    assert np.sqrt(np.mean(aliased[500:-500] ** 2)) < 1e-3
    kept = resample(tone(1000, 48000, 1.0, 1.0), 48000, 16000)
    assert np.abs(kept - tone(1000, 16000, 1.0, 1.0))[200:-200].max() < 1e-3
    up = resample(tone(1000, 8000, 1.0, 1.0), 8000, 16000)
    assert len(up) == 16000 and np.abs(up - tone(1000, 16000, 1.0, 1.0))[200:-200].max() < 1e-3


@pytest.mark.parametrize("fmt", ["mp3", "flac"])
def test_mp3_and_flac_read(fmt):
    wave, info = read_audio(encode_audio(tone(440, 22050, 1.0), 22050, fmt))
    assert info["sampling_rate"] == 22050 and info["channels"] == 1
    assert abs(info["duration"] - 1.0) < 0.05 and abs(len(wave) - 16000 * info["duration"]) <= 1
    assert abs(dominant_hz(wave, 16000) - 440) <= 5


def test_features_shape_and_fractional_seconds():
    wave = tone(440, 16000, 1.0)
    assert features(wave, sampling_rate=16000, seconds=2.0, n_mels=80).shape == (80, 200)
    assert features(wave, sampling_rate=16000, seconds=0.25, n_mels=80).shape == (80, 25)


def test_decode_sample_audio(stereo_wav):
    settings = MediaSettings(audio=AudioConfig(seconds=1.0))
    out = decode_sample(sample("wav", stereo_wav, "audio"), settings)
    (a,) = out["media"]["audio"]
    assert a.shape == (80, 100) and a.dtype == torch.float32 and torch.isfinite(a).all()
    info = out["media_info"]["audio"][0]
    assert info["truncated"] is True and info["duration"] == 1.5 and out["modal_list"] == ["AUDIO"]
    longer = decode_sample(sample("wav", stereo_wav, "audio"), MediaSettings(audio=AudioConfig(seconds=2.0)))
    assert longer["media"]["audio"][0].shape == (80, 200) and longer["media_info"]["audio"][0]["truncated"] is False


# ----------------------------------------------------------------------------- failures
def _audio_only_mp4() -> bytes:
    import av

    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = 16000, 0
        for packet in list(stream.encode(frame)) + list(stream.encode()):
            container.mux(packet)
    return buf.getvalue()


def _zero_sample_wav() -> bytes:
    import soundfile

    buf = io.BytesIO()
    soundfile.write(buf, np.zeros((0, 1), np.float32), 16000, format="WAV")
    return buf.getvalue()


BAD_VIDEO = {
    "garbage": (lambda mp4: b"this is not a video " * 20, "container"),
    "truncated": (lambda mp4: mp4[: len(mp4) // 2], "truncated mp4"),
    "empty": (lambda mp4: b"", "0 bytes"),
    "no_video_stream": (lambda mp4: _audio_only_mp4(), "no video stream"),
}
BAD_AUDIO = {
    "garbage": (lambda wav: b"this is not audio " * 20, "soundfile"),
    "zero_samples": (lambda wav: _zero_sample_wav(), "0 samples"),
    "empty": (lambda wav: b"", "0 bytes"),
    "truncated": (lambda wav: wav[: len(wav) // 2], "truncated wav"),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", sorted(BAD_VIDEO))
def test_bad_video_is_corrupt_media_with_a_detail(clip, backend, case):
    make, words = BAD_VIDEO[case]
    data = make(clip[1])
    if case == "garbage" and backend == "pyav":
        words = "pyav"
    with pytest.raises(SampleError) as e:
        read_video(data, num_frames=4, backend=backend)
    assert e.value.reason == "corrupt_media" and words in e.value.detail, e.value.detail
    settings = MediaSettings(video=VideoConfig(num_frames=4, backend=backend))
    with pytest.raises(SampleError) as e:
        decode_sample(sample("mp4", data, "video", key="bad_clip"), settings)
    assert e.value.reason == "corrupt_media" and e.value.key == "bad_clip" and "'bad_clip'" in str(e.value)


@pytest.mark.parametrize("case", sorted(BAD_AUDIO))
def test_bad_audio_is_corrupt_media_with_a_detail(stereo_wav, case):
    make, words = BAD_AUDIO[case]
    data = make(stereo_wav)
    with pytest.raises(SampleError) as e:
        read_audio(data)
    assert e.value.reason == "corrupt_media" and words in e.value.detail, e.value.detail
    with pytest.raises(SampleError) as e:
        decode_sample(sample("wav", data, "audio", key="bad_wav"), MediaSettings(audio=AudioConfig(seconds=1.0)))
    assert e.value.reason == "corrupt_media" and e.value.key == "bad_wav" and "'bad_wav'" in str(e.value)


@pytest.mark.parametrize("module,backend", [("decord", "decord"), ("av", "pyav")])
def test_missing_backend_is_unsupported_media(clip, monkeypatch, module, backend):
    monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError
    with pytest.raises(SampleError) as e:
        read_video(clip[1], num_frames=2, backend=backend)
    assert e.value.reason == "unsupported_media" and "install" in e.value.detail


def test_missing_soundfile_is_unsupported_media(stereo_wav, monkeypatch):
    monkeypatch.setitem(sys.modules, "soundfile", None)
    with pytest.raises(SampleError) as e:
        read_audio(stereo_wav)
    assert e.value.reason == "unsupported_media" and "soundfile" in e.value.detail
