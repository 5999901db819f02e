"""Execute the repo's parameterized notebooks headless with papermill (demo, tests, cluster jobs).

Executed copies go to ``runs/`` (git-ignored); the committed notebooks stay output-free.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def run_notebook(
    name: str,
    out_path: str | os.PathLike,
    parameters: dict[str, Any] | None = None,
    *,
    cwd: str | os.PathLike | None = None,
    progress: bool = False,
) -> Path:
    """Run ``notebooks/<name>`` with ``parameters`` and write the executed copy to ``out_path``.

    Paths in parameters should be absolute (the kernel runs in ``cwd``, default the notebooks folder).
    Raises papermill's ``PapermillExecutionError`` naming the failing cell when a cell fails.
    """
    import papermill as pm

    src = NOTEBOOKS / name
    if not src.exists():
        known = ", ".join(sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")))
        raise FileNotFoundError(f"no notebook {name!r} in {NOTEBOOKS}; known: {known}")
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    pm.execute_notebook(
        str(src),
        str(out),
        parameters=parameters or {},
        kernel_name="python3",
        cwd=str(cwd or NOTEBOOKS),
        progress_bar=progress,
        log_output=False,
    )
    return out
