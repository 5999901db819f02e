"""Benchmark inputs, built once and cached, and the two loaders under comparison.

``prepare(sizes, cache)`` returns a :class:`Fixture` with (every path cached under ``cache``,
default ``runs/bench_cache/``, git-ignored; a folder is reused only when its ``.complete.json``
marker matches the parameters that built it, so reruns skip generation and conversion):

- ``data``: the synthetic generator's output: ``sizes.n`` instruct records (JPEG, ``image_size`` px,
  about 5% text-only) in the LLaVA layout; the records file is ``instruct.json``;
- ``big_records``: the same records repeated ``big_factor`` times with new ids (the metadata grows
  ``big_factor``x, images are reused), for the memory measurement;
- ``image_records``: only the image records (the seed-note converter cannot take text-only ones);
- ``shards`` / ``big_shards``: ``llava-wb-convert`` output of ``instruct.json`` / the big file;
- ``tokenizer``: the demo tokenizer trained on the records, saved with ``save_pretrained``.

``stream_loader()`` and ``baseline_loader()`` build the two loaders with identical preprocessing
settings (template, ``max_length``, image size, ``media_tokens``, batch size, prefetch). Pixels
differ as in training: the streaming loader ships uint8 pixels (``image_config(sizes, "uint8")``,
what ``build_train_loader`` uses for training) and the consumer normalises each batch
(``iterate(..., normalise=...)``, i.e. ``normalise_batch``); the baseline normalises to float32
per sample in its workers, as LLaVA does.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import DEFAULT_CACHE


@dataclass(frozen=True)
class Sizes:
    """Every knob of one benchmark run (``FULL`` or ``QUICK``)."""

    n: int = 20_000  # records in the main set
    big_factor: int = 10  # metadata growth for the memory measurement
    image_size: int = 128  # stored JPEG side (px)
    proc_size: int = 224  # ImageTransform output side (CLIP ViT-L/14 at 224: 16 x 16 patches)
    media_tokens: int = 256  # placeholder tokens per image = (224 / 14) ** 2
    max_length: int = 2048
    template: str = "vicuna_v1"
    batch_size: int = 32
    shard_size: int = 1000
    workers: tuple[int, ...] = (0, 2)
    repeats: int = 3  # timed runs per configuration (interleaved)
    pass_batches: int | None = 120  # batches per throughput run (a fresh loader each); None: a full epoch
    mem_batches: int = 60  # batches iterated per memory probe (2 workers)
    mem_repeats: int = 3  # probes per (loader, metadata size); the median peak is reported
    mem_workers: int = 2
    convert_repeats: int = 3
    ceiling_samples: int = 1000  # raw samples held in memory for the decode+preprocess ceiling
    seed: int = 0


FULL = Sizes()
QUICK = Sizes(
    n=400,
    shard_size=50,
    repeats=1,
    pass_batches=None,
    mem_batches=8,
    mem_repeats=1,
    convert_repeats=1,
    ceiling_samples=200,
)


@dataclass
class Fixture:
    sizes: Sizes
    data: str
    records: str
    big_records: str
    image_records: str
    media_root: str
    shards: str
    big_shards: str
    tokenizer: str
    counts: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["sizes"] = asdict(self.sizes)
        return d


def _key(params: dict[str, Any]) -> str:
    return hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]


def _cached(folder: Path, params: dict[str, Any], build) -> dict[str, Any]:
    """Run ``build(folder)`` unless ``folder`` holds a finished build with the same ``params``."""
    marker = folder / ".complete.json"
    if marker.exists():
        done = json.loads(marker.read_text())
        if done.get("params") == params:
            return done.get("info", {})
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    info = build(folder) or {}
    marker.write_text(json.dumps({"params": params, "info": info}, indent=1))
    return info


def _write_repeated(src: str, dst: Path, factor: int) -> int:
    with open(src, encoding="utf-8") as f:
        records = json.load(f)  # the benchmark driver only; the loaders under test never do this here
    n = 0
    with open(dst, "w", encoding="utf-8") as out:
        out.write("[")
        for k in range(factor):
            for r in records:
                rec = r if k == 0 else {**r, "id": f"{r['id']}-x{k}"}
                out.write(("\n" if n == 0 else ",\n") + json.dumps(rec, ensure_ascii=False))
                n += 1
        out.write("\n]\n")
    return n


def _write_image_only(src: str, dst: Path) -> int:
    with open(src, encoding="utf-8") as f:
        records = [r for r in json.load(f) if "image" in r]
    dst.write_text(json.dumps(records, ensure_ascii=False))
    return len(records)


def prepare(sizes: Sizes, cache: str | os.PathLike | None = None, progress: bool = True) -> Fixture:
    """Build (or reuse) every input of the data benchmark; see the module docstring."""
    from data_tools.convert_to_wds import convert
    from data_tools.journal import CONVERTER_VERSION
    from data_tools.make_synthetic import GENERATOR_VERSION, generate

    cache = Path(cache or DEFAULT_CACHE)
    gen_params = {
        "n": sizes.n,
        "image_size": sizes.image_size,
        "format": "jpg",
        "seed": sizes.seed,
        "generator": GENERATOR_VERSION,
    }
    root = cache / f"synth-n{sizes.n}-{sizes.image_size}px-{_key(gen_params)}"
    data_dir = root / "data"

    def gen(folder: Path) -> dict[str, Any]:
        out = generate(
            folder,
            n_pretrain=0,
            n_instruct=sizes.n,
            n_heldout=0,
            seed=sizes.seed,
            image_size=sizes.image_size,
            image_format="jpg",
            progress=progress,
        )
        return dict(out["counts"]["instruct"])

    counts = _cached(data_dir, gen_params, gen)
    records = str(data_dir / "instruct.json")

    derived = {**gen_params, "factor": sizes.big_factor}
    extra = _cached(
        root / "records",
        derived,
        lambda d: {
            "big": _write_repeated(records, d / f"instruct_x{sizes.big_factor}.json", sizes.big_factor),
            "image_only": _write_image_only(records, d / "instruct_images.json"),
        },
    )
    big_records = str(root / "records" / f"instruct_x{sizes.big_factor}.json")
    image_records = str(root / "records" / "instruct_images.json")

    def shards(src: str, validate: bool):
        def build(folder: Path) -> dict[str, Any]:
            s = convert(
                [src],
                [str(data_dir)],
                folder,
                shard_size=sizes.shard_size,
                workers=os.cpu_count(),
                validate_media=validate,
                progress=progress,
                overwrite=True,
            )
            return {"converted": s.converted, "rejected": s.rejected, "shards": s.shards}

        return build

    conv = {**gen_params, "shard_size": sizes.shard_size, "converter": CONVERTER_VERSION}
    main_info = _cached(root / "shards", {**conv, "src": "main"}, shards(records, True))
    # The big set repeats the already-validated images: convert it without full image decoding.
    big_info = _cached(
        root / f"shards_x{sizes.big_factor}",
        {**conv, "src": "big", "factor": sizes.big_factor},
        shards(big_records, False),
    )

    def tok(folder: Path) -> dict[str, Any]:
        from llava_wb.tokenizer import build_demo_tokenizer, demo_corpus

        with open(records, encoding="utf-8") as f:
            recs = json.load(f)
        t = build_demo_tokenizer(demo_corpus(records=recs))
        t.save_pretrained(str(folder))
        return {"vocab": len(t)}

    tok_info = _cached(root / "tokenizer", gen_params, tok)
    return Fixture(
        sizes=sizes,
        data=str(data_dir),
        records=records,
        big_records=big_records,
        image_records=image_records,
        media_root=str(data_dir),
        shards=str(root / "shards"),
        big_shards=str(root / f"shards_x{sizes.big_factor}"),
        tokenizer=str(root / "tokenizer"),
        counts={**counts, **extra, "shards": main_info, "big_shards": big_info, "tokenizer": tok_info},
    )


def load_tokenizer(path: str):
    import transformers
    from transformers import AutoTokenizer

    transformers.logging.set_verbosity_error()
    return AutoTokenizer.from_pretrained(path)


STREAM_PIXELS = "uint8"  # what the streaming (training) loader ships; the baseline stays float32


def image_config(sizes: Sizes, pixels: str = "float32"):
    """The ``ImageConfig`` both loaders preprocess with (``pixels`` aside)."""
    from llava_wb.data.config import ImageConfig

    return ImageConfig(size=sizes.proc_size, pixels=pixels)


def stream_loader(shards: str, tokenizer, sizes: Sizes, *, num_workers: int, seed: int = 0):
    """Our loader: converted shards -> ``build_train_loader`` (one exact epoch per iteration),
    pixels shipped as ``STREAM_PIXELS`` (normalise them with ``iterate(..., normalise=...)``)."""
    from llava_wb.data.config import DataConfig
    from llava_wb.data.loader import build_train_loader

    cfg = DataConfig.from_dict(
        {
            "sources": [shards],
            "batch_size": sizes.batch_size,
            "num_workers": num_workers,
            "epoch_mode": "exact",
            "seed": seed,
            "template": sizes.template,
            "max_length": sizes.max_length,
            "image": {"size": sizes.proc_size, "pixels": STREAM_PIXELS},
        }
    )
    return build_train_loader(cfg, tokenizer, media_tokens={"image": sizes.media_tokens})


def baseline_dataset(records: str, media_root: str, tokenizer, sizes: Sizes):
    from benchmarks.llava_baseline import LazySupervisedDataset

    return LazySupervisedDataset(
        records,
        media_root,
        tokenizer,
        template=sizes.template,
        max_length=sizes.max_length,
        image=image_config(sizes),  # float32 per sample, as LLaVA does
        media_tokens={"image": sizes.media_tokens},
    )


def baseline_loader(dataset, tokenizer, sizes: Sizes, *, num_workers: int, seed: int = 0):
    from benchmarks.llava_baseline import build_baseline_loader

    return build_baseline_loader(
        dataset, batch_size=sizes.batch_size, num_workers=num_workers, pad_token_id=tokenizer.pad_token_id, seed=seed
    )


def iterate(loader, max_batches: int | None = None, normalise=None, spent: list[float] | None = None) -> int:
    """Consume batches; return the number of samples seen. ``normalise`` (an ``ImageConfig``):
    each batch goes through ``normalise_batch`` in this process, as the trainer does once the batch
    is on its device (uint8 pixels become float32; float pixels pass through untouched); ``spent``
    (a list) gets the CPU seconds those calls took appended, once per call of ``iterate``."""
    import time

    from llava_wb.data.image import normalise_batch

    n, cpu = 0, 0.0
    it = iter(loader)
    try:
        for i, batch in enumerate(it):
            if normalise is not None:
                t0 = time.process_time()
                batch = normalise_batch(batch, normalise)
                cpu += time.process_time() - t0
            n += int(batch["input_ids"].shape[0])
            if max_batches is not None and i + 1 >= max_batches:
                break
    finally:
        close = getattr(it, "close", None) or getattr(it, "_shutdown_workers", None)
        if close is not None:
            close()  # stop the workers now, so their CPU time is counted (and reaped) here
        if spent is not None:
            spent.append(cpu)
    return n
