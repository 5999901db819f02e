"""Audio samples: shard bytes -> 16 kHz mono waveform -> Whisper log-mel features, and encoding for tests.

* ``read_audio(data, sampling_rate=16000)``: soundfile (libsndfile: wav, flac, ogg, mp3) reads
  from an ``io.BytesIO`` as float32, channels are averaged to mono, and the wave is resampled
  with ``resample`` (below). Info: the file's own ``sampling_rate``, ``channels``, ``duration``
  (seconds) and ``frames`` (samples per channel).
* ``resample(wave, orig, target)``: band-limited resampling in numpy (no scipy). The ratio
  ``target/orig`` is reduced to ``L/M``; output sample ``k`` sits at input position ``k*M/L``
  and is a dot product of the input with a Kaiser-windowed sinc low-pass whose cutoff is
  0.94 x the lower of the two Nyquist frequencies (so downsampling filters before it decimates:
  a 12 kHz tone read at 44.1 kHz is removed, not folded to 4 kHz). Only ``L`` distinct fractional
  positions occur, so the taps are a table of ``L`` rows; each row is normalised to unit gain.
* ``features(wave, sampling_rate, seconds, n_mels)``: cut or zero-pad to ``round(100 * seconds)``
  10 ms hops, then ``transformers.WhisperFeatureExtractor`` (log-mel, Whisper's normalisation):
  float32 ``[n_mels, round(100 * seconds)]``. The extractor's ``chunk_length`` is an int of
  seconds, so the length is passed per call as ``max_length`` samples instead (fractional
  ``seconds`` work).
* ``decode_audio``: the registered ``audio`` decoder (``data.audio``; ``seconds`` null -> 30 s,
  Whisper's window); info adds ``truncated`` (the clip was longer than ``seconds``).

Errors are ``SampleError``: ``corrupt_media`` for empty, garbage, zero-sample or truncated input
(a WAV whose data chunk is shorter than its header says; FLAC/Ogg that lose sync; an MP3 cut
between frames decodes as a shorter clip and cannot be told apart), ``unsupported_media`` when
soundfile is missing.
"""

from __future__ import annotations

import io
import math
import re
import struct
from functools import lru_cache
from typing import Any

import numpy as np

from .config import MediaSettings
from .decoders import MEDIA_DECODERS, DecodedMedia
from .errors import SampleError

DEFAULT_SECONDS = 30.0
_ZEROS = 24  # sinc zero crossings on each side of the filter (at the cutoff rate)
_ROLLOFF = 0.94  # cutoff as a fraction of the lower Nyquist frequency
_BETA = 9.0  # Kaiser window shape (~ 90 dB stop band)
_CHUNK = 1 << 15  # output samples per vectorised block


# ----------------------------------------------------------------------------- resampling
@lru_cache(maxsize=16)
def _taps(up: int, down: int) -> tuple[np.ndarray, int]:
    """Polyphase table ``[up, 2*half]``: row ``p`` filters output samples at input offset ``p/up``."""
    cutoff = _ROLLOFF * min(1.0, up / down)  # in cycles per input sample x 2 (1.0 = input Nyquist)
    half = int(math.ceil(_ZEROS / cutoff))
    j = np.arange(-half + 1, half + 1, dtype=np.float64)  # taps at n0 + j for output at n0 + frac
    frac = np.arange(up, dtype=np.float64)[:, None] / up
    t = j[None, :] - frac  # distance (input samples) from the output position to each tap
    window = np.i0(_BETA * np.sqrt(np.clip(1.0 - (t / half) ** 2, 0.0, 1.0))) / np.i0(_BETA)
    h = cutoff * np.sinc(cutoff * t) * window
    h /= h.sum(axis=1, keepdims=True)
    return h.astype(np.float32), half


def resample(wave: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Band-limited resampling of a 1-D float wave; ``round(len * target / orig)`` samples out."""
    wave = np.asarray(wave, dtype=np.float32)
    if orig_sr == target_sr or wave.size == 0:
        return wave.copy()
    g = math.gcd(int(orig_sr), int(target_sr))
    up, down = int(target_sr) // g, int(orig_sr) // g
    h, half = _taps(up, down)
    n = wave.shape[0]
    n_out = (2 * n * up + down) // (2 * down)
    padded = np.concatenate([np.zeros(half, np.float32), wave, np.zeros(half + 1, np.float32)])
    offsets = np.arange(-half + 1, half + 1) + half  # into ``padded``
    out = np.empty(n_out, dtype=np.float32)
    for start in range(0, n_out, _CHUNK):
        k = np.arange(start, min(n_out, start + _CHUNK), dtype=np.int64)
        pos = k * down
        n0, phase = pos // up, pos % up
        out[start : start + k.size] = np.einsum("kt,kt->k", padded[n0[:, None] + offsets[None, :]], h[phase])
    return out


# ----------------------------------------------------------------------------- reading
def _clean(e: BaseException) -> str:
    text = re.sub(r"Error opening <[^>]*>: ", "", " ".join(str(e).split())) or type(e).__name__
    return text[:200]


def _wav_truncation(data: bytes) -> str | None:
    """For RIFF/WAVE bytes: a message if the data chunk is shorter than its header says. Chunk
    headers are looked for in the first 64 KiB; what is available is measured on all of ``data``."""
    head = bytes(data[: 1 << 16])
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    pos = 12
    while pos + 8 <= len(head):
        cid, size = head[pos : pos + 4], struct.unpack("<I", head[pos + 4 : pos + 8])[0]
        if cid == b"data":
            have = len(data) - pos - 8
            if size not in (0, 0xFFFFFFFF) and have < size:  # 0 / 0xFFFFFFFF: streamed, size unknown
                return f"truncated wav: data chunk has {have} of {size} bytes"
            return None
        pos += 8 + size + (size & 1)
    return None


def read_audio(data: bytes, *, sampling_rate: int = 16000) -> tuple[np.ndarray, dict[str, Any]]:
    """Bytes of an audio file -> (float32 mono wave at ``sampling_rate``, info). See the module docstring."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise SampleError("corrupt_media", f"audio is a {type(data).__name__}, not bytes")
    if len(data) == 0:
        raise SampleError("corrupt_media", "audio is empty (0 bytes)")
    try:
        import soundfile
    except ImportError as e:
        raise SampleError("unsupported_media", f"audio needs soundfile ({e}); install soundfile") from None
    problem = _wav_truncation(data)
    if problem:
        raise SampleError("corrupt_media", problem)
    try:
        wave, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception as e:  # LibsndfileError (RuntimeError): unknown format, lost sync, malformed
        raise SampleError(
            "corrupt_media", f"soundfile: {_clean(e)} ({len(data)} bytes, starting {bytes(data[:8])!r})"
        ) from None
    frames, channels = wave.shape
    if frames == 0:
        raise SampleError("corrupt_media", f"audio has 0 samples ({channels} channel(s) at {rate} Hz)")
    mono = wave.mean(axis=1) if channels > 1 else wave[:, 0]
    info = {
        "sampling_rate": int(rate),
        "channels": int(channels),
        "duration": round(frames / rate, 4),
        "frames": int(frames),
    }
    return resample(mono, int(rate), int(sampling_rate)), info


# ----------------------------------------------------------------------------- features
@lru_cache(maxsize=8)
def _extractor(n_mels: int, sampling_rate: int):
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor(
        feature_size=n_mels,
        sampling_rate=sampling_rate,
        hop_length=sampling_rate // 100,
        n_fft=int(round(0.025 * sampling_rate)),
    )


def features(wave: np.ndarray, *, sampling_rate: int, seconds: float, n_mels: int):
    """Mono wave at ``sampling_rate`` -> float32 tensor ``[n_mels, round(100 * seconds)]`` (10 ms hops)."""
    import torch

    hop = sampling_rate // 100
    n_frames = max(1, int(round(100 * seconds)))
    n_samples = n_frames * hop
    wave = np.asarray(wave, dtype=np.float32)[:n_samples]
    if wave.shape[0] < n_samples:
        wave = np.pad(wave, (0, n_samples - wave.shape[0]))
    out = _extractor(int(n_mels), int(sampling_rate))(
        wave,
        sampling_rate=sampling_rate,
        padding="max_length",
        max_length=n_samples,
        truncation=True,
        return_tensors="np",
    )
    feats = np.asarray(out["input_features"][0], dtype=np.float32)
    if feats.shape != (n_mels, n_frames):  # the extractor's own framing changed: say so, do not guess
        raise RuntimeError(f"WhisperFeatureExtractor gave {feats.shape}, expected {(n_mels, n_frames)}")
    return torch.from_numpy(feats)


@MEDIA_DECODERS.register("audio")
def decode_audio(data: bytes, settings: MediaSettings) -> DecodedMedia:
    """The ``audio`` decoder: log-mel ``[n_mels, 100 * seconds]`` plus info (``truncated``: longer than ``seconds``)."""
    a = settings.audio
    seconds = a.seconds or DEFAULT_SECONDS
    wave, info = read_audio(data, sampling_rate=a.sampling_rate)
    info["truncated"] = info["duration"] > seconds
    return DecodedMedia(features(wave, sampling_rate=a.sampling_rate, seconds=seconds, n_mels=a.n_mels), info)


def encode_audio(wave: np.ndarray, sampling_rate: int, fmt: str = "wav") -> bytes:
    """float32 mono ``[N]`` (or ``[N, C]``) in [-1, 1] -> ``wav``/``flac``/``mp3``/``ogg`` bytes via soundfile."""
    import soundfile

    formats = {"wav": ("WAV", "PCM_16"), "flac": ("FLAC", "PCM_16"), "mp3": ("MP3", None), "ogg": ("OGG", "VORBIS")}
    if fmt not in formats:
        raise ValueError(f"fmt must be one of {', '.join(formats)}, got {fmt!r}")
    fmt_name, subtype = formats[fmt]
    buf = io.BytesIO()
    soundfile.write(buf, np.asarray(wave, dtype=np.float32), int(sampling_rate), format=fmt_name, subtype=subtype)
    return buf.getvalue()
