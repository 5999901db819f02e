"""Converted shards with every kind of sample other loaders must read: jpg, RGBA png, gif, three
images in one sample, text-only (two turns), video (mp4) and audio (wav/flac/mp3), 17 in all."""

from __future__ import annotations

from pathlib import Path

from _convert_fixtures import Dataset, conv, image_bytes

from data_tools.convert_to_wds import main as convert_main
from data_tools.make_synthetic import generate

AUDIO_SECONDS = 1.6
VIDEO_FRAMES = 4
N_SAMPLES = 17


def mixed_shards(base: Path, *extra_args: str) -> Path:
    """Convert the mix with ``llava-wb-convert`` (plus ``extra_args``) into ``base/shards`` (5 per shard)."""
    syn = generate(
        base / "syn",
        n_pretrain=0,
        n_instruct=12,
        n_heldout=0,
        seed=1,
        progress=False,
        image_size=32,
        mix={"image": 0.25, "video": 0.25, "audio": 0.25, "text": 0.25},
        video_frames=VIDEO_FRAMES,
        audio_seconds=AUDIO_SECONDS,
    )
    ds = Dataset(root=str(base / "media"))
    jpg = ds.add_media("a.jpg", image_bytes("JPEG", seed=1))
    png = ds.add_media("b.png", image_bytes("PNG", mode="RGBA", seed=2))
    gif = ds.add_media("c.gif", image_bytes("GIF", mode="P", seed=3))
    ds.add({"id": "jpg", "image": jpg, "conversations": conv("jpg?")})
    ds.add({"id": "png", "image": png, "conversations": conv("png?")})
    ds.add({"id": "gif", "image": gif, "conversations": conv("gif?")})
    ds.add({"id": "multi", "image": [jpg, gif, png], "conversations": conv("three <image> <image>")})
    ds.add({"id": "text", "conversations": conv("text?", placeholder="") + conv("more?", placeholder="")})
    mixed = ds.write_json(str(base / "mixed.json"))
    out = base / "shards"
    rc = convert_main(
        [
            syn["files"]["instruct"],
            mixed,
            "--media-root",
            syn["media_root"],
            "--media-root",
            ds.root,
            "--out",
            str(out),
            "--shard-size",
            "5",
            "--workers",
            "1",
            "--no-progress",
            *extra_args,
        ]
    )
    assert rc == 0
    return out
