"""Shared helpers of the synthetic-generator tests: read a split, snapshot a folder, build a dataset."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from data_tools import make_synthetic as ms


def load_records(path: str | Path) -> list[dict[str, Any]]:
    """The records of one split file."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def file_tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` by relative path (for byte-for-byte determinism checks)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def generated(root: Path, **params: Any) -> dict[str, Any]:
    """``make_synthetic.generate(root, **params)`` with its records per split and all together."""
    result = ms.generate(root, **params)
    records = {split: load_records(path) for split, path in result["files"].items()}
    info = json.loads((root / "dataset_info.json").read_text())
    return {
        "root": root,
        "result": result,
        "records": records,
        "info": info,
        "all": [r for recs in records.values() for r in recs],
    }
