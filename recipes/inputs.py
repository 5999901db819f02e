"""A notebook's inputs on a fresh checkout: make a small sample where one can be made, else say which
command writes them.

The notebooks' defaults name the demo's run folder (``runs/demo``), which only exists after
``make demo``. ``convert_inputs`` (notebook 01) swaps a missing LLaVA file for a small synthetic sample
made on the spot; ``require_model`` and ``require_shards`` (notebooks 03, 04) stop with the command
that produces what is missing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEMO_HINT = "run `make demo` (or `python -m recipes.demo --out runs/demo`)"


@dataclass(frozen=True)
class ConvertInputs:
    """What notebook 01 converts: LLaVA files, their media roots, the shard folder; ``note`` says why
    a sample stands in for the parameters (``None`` when the parameters were used as given)."""

    inputs: list[str]
    media_roots: list[str]
    output_dir: str
    note: str | None = None


def convert_inputs(
    inputs: str | list[str],
    media_roots: list[str],
    output_dir: str,
    *,
    sample_dir: str | None,
    sample_records: int = 200,
    seed: int = 0,
) -> ConvertInputs:
    """``inputs`` as given when they all exist; else, with ``sample_dir``, a synthetic LLaVA sample of
    ``sample_records`` instruction records written there (``data/``) and converted to ``sample_dir/shards``;
    without it, ``FileNotFoundError`` naming the missing files and the commands that write them."""
    files = [inputs] if isinstance(inputs, (str, os.PathLike)) else [str(p) for p in inputs]
    missing = [str(p) for p in files if not Path(p).is_file()]
    if not missing:
        return ConvertInputs([str(p) for p in files], [str(r) for r in media_roots], str(output_dir))
    if sample_dir is None:
        raise FileNotFoundError(
            f"input file(s) {missing} do not exist: {DEMO_HINT} to write runs/demo/data, or make a synthetic "
            "set with `python -m data_tools.make_synthetic OUT`, or set INPUT to your LLaVA JSON/JSONL"
        )
    from data_tools.make_synthetic import generate

    sample = Path(sample_dir)
    made = generate(sample / "data", n_pretrain=0, n_instruct=sample_records, n_heldout=0, seed=seed, progress=False)
    note = (
        f"input file(s) {missing} do not exist ({DEMO_HINT} writes them): converting a synthetic sample of "
        f"{sample_records} records made in {sample / 'data'} instead"
    )
    return ConvertInputs([str(made["files"]["instruct"])], [str(made["media_root"])], str(sample / "shards"), note)


def require_model(model_dir: str | os.PathLike) -> str:
    """``model_dir`` when it holds a saved model bundle; else ``FileNotFoundError`` with what to run first."""
    if not (Path(model_dir) / "config.json").is_file():
        raise FileNotFoundError(
            f"no trained model at {model_dir}: {DEMO_HINT} or notebooks/03_train.ipynb first (its run folder's "
            "final/ is a model), or set MODEL_DIR to a folder written by save_bundle"
        )
    return str(model_dir)


def require_shards(shards: list[str], what: str = "held-out") -> list[str]:
    """``shards`` when every local folder among them exists (URLs and globs pass); else ``FileNotFoundError``
    with what to run first."""
    missing = [
        s
        for s in shards
        if "://" not in s and not s.startswith("pipe:") and not any(c in s for c in "*?{[") and not Path(s).exists()
    ]
    if missing:
        raise FileNotFoundError(
            f"no {what} shards at {missing}: {DEMO_HINT}, or convert a LLaVA file with "
            "notebooks/01_convert_shards.ipynb (or `llava-wb-convert`) and set the path to its output"
        )
    return list(shards)
