"""Megatron-Energon reads converted shards: ``llava-wb-convert --energon`` writes ``.nv-meta``,
``energon lint`` passes, and Energon's own loader yields every sample (jpg, png, gif, several
images, text-only, video, audio) with its conversation and decoded media."""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("megatron.energon", reason="megatron-energon not installed (the 'energon' extra)")

from _convert_fixtures import conv, read_shards  # noqa: E402
from _interop_fixtures import AUDIO_SECONDS, N_SAMPLES, VIDEO_FRAMES, mixed_shards  # noqa: E402
from train_fixtures import subprocess_env  # noqa: E402


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return mixed_shards(tmp_path_factory.mktemp("energon"), "--energon")


def _energon_samples(path: Path) -> list:
    from megatron.energon import WorkerConfig, get_loader, get_train_dataset

    ds = get_train_dataset(
        path,
        batch_size=None,
        shuffle_buffer_size=None,
        max_samples_per_sequence=None,
        worker_config=WorkerConfig(rank=0, world_size=1, num_workers=0),
        repeat=False,
    )
    return list(get_loader(ds))


def test_energon_lint_passes(shards: Path) -> None:
    meta = shards / ".nv-meta"
    assert {"dataset.yaml", "split.yaml", "sample_loader.py", ".info.json", "index.sqlite"} <= {
        p.name for p in meta.iterdir()
    }
    proc = subprocess.run(
        ["energon", "lint", str(shards)], env=subprocess_env(), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]


def test_energon_loader_yields_every_sample_with_media(shards: Path) -> None:
    expected = {
        json.loads(members["json"])["id"]: (json.loads(members["json"]), members)
        for _, members in read_shards(str(shards))
    }
    assert len(expected) == N_SAMPLES
    got = _energon_samples(shards)
    assert sorted(s.id for s in got) == sorted(expected), "Energon must yield every sample exactly once"
    seen = set()
    for s in got:
        record, members = expected[s.id]
        assert type(s).__name__ == "LlavaWbSample"
        assert s.conversations == record["conversations"]
        assert s.record == record
        fields = {m: [x["field"] for x in record["media"] if x["modality"] == m] for m in ("image", "video", "audio")}
        assert [len(s.images), len(s.videos), len(s.audios)] == [len(fields[m]) for m in ("image", "video", "audio")]
        for field, img in zip(fields["image"], s.images):
            seen.add(field.rsplit(".", 1)[-1])
            want = np.asarray(Image.open(io.BytesIO(members[field])).convert("RGB"), dtype=np.float32) / 255
            assert torch.allclose(img, torch.from_numpy(want).permute(2, 0, 1), atol=1e-6), (s.id, field)
        for video in s.videos:
            seen.add("video")
            clip = video.get_video().video_clips[0]
            assert tuple(clip.shape) == (VIDEO_FRAMES, 3, 32, 32), s.id
        for audio in s.audios:
            seen.add("audio")
            clip = audio.get_audio().audio_clips[0]
            assert abs(clip.shape[-1] / audio.get_audio_samples_per_second() - AUDIO_SECONDS) < 0.1, s.id
        if not record["media"]:
            seen.add("text")
    assert {"jpg", "png", "gif", "video", "audio", "text"} <= seen, seen


def test_energon_sample_loader_refuses_a_missing_media_member() -> None:
    from data_tools.energon import sample_loader

    record = {"id": "x", "conversations": conv("q"), "media": [{"modality": "image", "field": "jpg"}]}
    with pytest.raises(ValueError, match="media field 'jpg'"):
        sample_loader({"__key__": "000000000_x", "json": record})
