"""Projectors: map vision features ``[..., D_vision]`` to LLM embeddings ``[..., D_llm]``.

Registry ``PROJECTORS`` maps a name to a factory ``(in_dim, out_dim, **options) -> nn.Module``:

- ``linear``: one ``nn.Linear`` (LLaVA-1.0);
- ``mlp2x_gelu``: ``Linear(in, out), GELU, Linear(out, out)`` (LLaVA-1.5), stored as an
  ``nn.Sequential`` so its parameters are ``0.weight`` and ``2.weight`` like LLaVA's
  ``mm_projector``.

Adding one is a decorated function; ``build_projector`` turns bad options into a clear error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from llava_wb.registry import Registry

PROJECTORS: Registry[Callable[..., nn.Module]] = Registry("projector")


@PROJECTORS.register("linear")
def linear_projector(in_dim: int, out_dim: int) -> nn.Module:
    """One linear layer."""
    return nn.Linear(in_dim, out_dim)


@PROJECTORS.register("mlp2x_gelu")
def mlp2x_gelu_projector(in_dim: int, out_dim: int) -> nn.Module:
    """Two linear layers with an exact (erf) GELU between them, as in LLaVA-1.5."""
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))


def build_projector(name: str, in_dim: int, out_dim: int, options: dict[str, Any] | None = None) -> nn.Module:
    """Instantiate the projector registered as ``name`` (``UnknownNameError`` lists known names)."""
    factory = PROJECTORS.get(name)
    try:
        return factory(in_dim, out_dim, **(options or {}))
    except TypeError as exc:
        raise ValueError(f"bad options for projector {name!r}: {options!r} ({exc})") from None
