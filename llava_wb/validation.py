"""Typed config sections on pydantic v2, and the one translation of its errors into field-named messages.

``@section`` is ``pydantic.dataclasses.dataclass`` with unknown keys forbidden: a section stays a
plain dataclass (``dataclasses.replace`` / ``asdict`` work) whose fields are validated on
construction from their annotations (nested sections from mappings, ``Literal`` choices, bounds
such as ``PositiveInt``, numbers from YAML 1.1's ``1e-3`` strings). ``parse(cls, data, root, error)``
builds a section from plain data and raises ``error`` whose message names each bad field:
``train.max_steps: Input should be greater than 0 (got 0)``, ``unknown field(s)
model.vision.feture_layer; known: ...``. A check across fields raises ``ValueError`` in the
section's ``__post_init__`` with a message that starts with the dotted field it is about.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar

from pydantic import ConfigDict, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass as _dataclass

T = TypeVar("T")
UNKNOWN_KEY = ("unexpected_keyword_argument", "extra_forbidden")


def section(cls: type[T] | None = None, **kwargs: Any) -> Any:
    """``@section`` / ``@section(kw_only=True)``: a validated dataclass that refuses unknown keys."""
    decorate = _dataclass(config=ConfigDict(extra="forbid"), **kwargs)
    return decorate if cls is None else decorate(cls)


def parse(cls: type[T], data: Any, root: str, error: type[Exception]) -> T:
    """``cls`` from plain data (a parsed YAML section); ``error`` names the fields on failure."""
    if not isinstance(data, dict):
        raise error(f"{root or 'the config'} must be a mapping, got {type(data).__name__}")
    try:
        return TypeAdapter(cls).validate_python(data)
    except ValidationError as exc:
        raise error(describe(exc, cls, root)) from None


def dump(obj: Any) -> dict[str, Any]:
    """Plain YAML/JSON-safe data of a section (tuples as lists) that ``parse`` reads back."""
    return TypeAdapter(type(obj)).dump_python(obj, mode="json")


def describe(exc: ValidationError, cls: type, root: str) -> str:
    """One clause per bad field, ``; ``-joined; unknown keys grouped per section with its known fields."""
    unknown: dict[tuple[str, ...], list[str]] = {}
    problems: dict[str, list[str]] = {}
    inputs: dict[str, str] = {}
    for err in exc.errors():
        path, known = _walk(cls, err["loc"], root, err["type"] in UNKNOWN_KEY)
        if err["type"] in UNKNOWN_KEY and known is not None:
            unknown.setdefault(tuple(known), []).append(path)
            continue
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "value_error" and (not path or msg.startswith(path.split(".")[0].split("[")[0] + ".")):
            problems.setdefault("", []).append(msg)  # a __post_init__ check: its message names the field
            continue
        if err["type"] != "missing":
            inputs[path] = f" (got {_short(err.get('input'))})"
        problems.setdefault(path, []).append(msg)
    out = [f"unknown field(s) {', '.join(paths)}; known: {', '.join(known)}" for known, paths in unknown.items()]
    out += [
        f"{path}: {' or '.join(msgs)}{inputs.get(path, '')}" if path else "; ".join(msgs)
        for path, msgs in problems.items()
    ]
    return "; ".join(out)


def _walk(cls: Any, loc: tuple[Any, ...], root: str, unknown_key: bool) -> tuple[str, list[str] | None]:
    """The dotted path of ``loc`` through the annotations of ``cls`` (union-member tags that
    pydantic adds to ``loc`` are dropped), and the known fields when the last step is unknown."""
    path, current = root, cls
    for i, step in enumerate(loc):
        current = _unwrap_optional(current)
        if dataclasses.is_dataclass(current):
            hints = typing.get_type_hints(current)
            if step not in hints:
                if unknown_key and i == len(loc) - 1:
                    return _join(path, str(step)), sorted(f.name for f in dataclasses.fields(current))
                break
            path, current = _join(path, str(step)), hints[step]
        elif isinstance(step, int) and typing.get_origin(current) in (list, tuple):
            path, current = f"{path}[{step}]", (typing.get_args(current) or (Any,))[0]
        elif typing.get_origin(current) is dict:
            path, current = _join(path, str(step)), (typing.get_args(current) or (Any, Any))[-1]
        else:
            break
    return path, None


def _unwrap_optional(tp: Any) -> Any:
    while typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(members) == 1:
            return _unwrap_optional(members[0])
    return tp


def _join(path: str, step: str) -> str:
    return f"{path}.{step}" if path else step


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
