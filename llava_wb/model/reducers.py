"""Token reducers, the public entry point: every built-in registered, and ``build_reducer``.

The base class ``TokenReducer``, ``ReducerOutput``, the ``REDUCERS`` registry and the window helpers
live in ``llava_wb.model.reducer_base`` (which imports no implementation; read its docstring for
the contract). Importing this module registers the built-ins: ``identity`` and ``avgpool``
(``reducer_base``), ``local_merge`` and ``tome_sd`` (``merging``), ``instruct_resample``
(``resample``). A new reducer subclasses ``TokenReducer`` in its own module, registers itself in
``REDUCERS`` and is imported here.
"""

from __future__ import annotations

from typing import Any

from llava_wb.model import merging as _merging  # noqa: F401  (registers local_merge, tome_sd)
from llava_wb.model import resample as _resample  # noqa: F401  (registers instruct_resample)
from llava_wb.model.reducer_base import (  # noqa: F401  (re-exported: the public names of the reducers)
    POSITION_MODES,
    REDUCERS,
    AvgPoolReducer,
    Grid,
    IdentityReducer,
    ReducerOutput,
    TokenReducer,
    check_budget,
    check_grid,
    gather_kept,
    num_windows,
    window_partition,
)


def build_reducer(name: str, options: dict[str, Any] | None = None) -> TokenReducer:
    """Instantiate the reducer registered as ``name`` (``UnknownNameError`` lists known names)."""
    cls = REDUCERS.get(name)
    try:
        return cls(**(options or {}))
    except TypeError as exc:
        raise ValueError(f"bad options for token reducer {name!r}: {options!r} ({exc})") from None
