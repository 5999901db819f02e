"""A tiny name -> object registry, one per extension point.

llava_wb picks its parts by name from configs: vision towers, projectors, token reducers,
conversation templates, datasets. Each extension point owns one ``Registry``; an unknown name
fails with ``UnknownNameError`` whose message lists every known name, so a typo in a config is
caught before any work starts::

    PROJECTORS = Registry("projector")

    @PROJECTORS.register("linear")
    def build_linear(...): ...

    PROJECTORS.get("mlp2x")  # UnknownNameError: unknown projector 'mlp2x'; known: linear
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar, overload

T = TypeVar("T")


class UnknownNameError(ValueError):
    """A name was looked up that is not registered; the message lists the known names."""

    def __init__(self, kind: str, name: str, known: list[str]):
        self.kind = kind
        self.name = name
        self.known = known
        listed = ", ".join(known) if known else "(none registered)"
        super().__init__(f"unknown {kind} {name!r}; known: {listed}")


class Registry(Generic[T]):
    """Maps names to objects (usually factories or classes) for one ``kind`` of extension."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    @overload
    def register(self, name: str) -> Callable[[T], T]: ...

    @overload
    def register(self, name: str, obj: T) -> T: ...

    def register(self, name: str, obj: T | None = None) -> T | Callable[[T], T]:
        """Register ``obj`` under ``name``; without ``obj``, return a decorator that does so.

        Registering a name twice raises ``ValueError``: two parts silently shadowing each other
        is a bug, not a feature.
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} name must be a non-empty string, got {name!r}")

        def add(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = item
            return item

        return add if obj is None else add(obj)

    def get(self, name: str) -> T:
        """Return the object registered as ``name`` or raise ``UnknownNameError``."""
        try:
            return self._items[name]
        except (KeyError, TypeError):
            raise UnknownNameError(self.kind, str(name), self.names()) from None

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, names={self.names()})"
