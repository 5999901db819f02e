"""Check one LLaVA record (structure, conversation, placeholders) before its media are read.

Implements the converter side of ``docs/data_format.md`` section 3. A record either becomes a
:class:`CheckedRecord` (possibly with repairs listed in ``fixes``) or raises :class:`Rejected`
with one of the rejection reasons below and a detail a person can act on.

Repairs that keep a record (as LLaVA's own loader does):

* ``dropped_leading_gpt_turn``: a conversation starting with a ``gpt`` turn loses that turn.
* ``converted_role_names``: ``user`` / ``assistant`` become ``human`` / ``gpt``.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

from data_tools.media import MODALITIES

REASONS = (
    "invalid_json",
    "bad_record",
    "bad_conversation",
    "placeholder_mismatch",
    "missing_media",
    "outside_media_root",  # the path resolves (.., symlinks) outside every media root
    "not_a_regular_file",  # a FIFO, device, socket: never read
    "media_too_large",  # over --max-media-bytes
    "bad_media_path",
    "unsupported_media",
    "image_too_large",  # header declares more pixels than --max-image-pixels (decompression bomb)
    "corrupt_media",
    "conversion_error",  # any other failure inside one record (the detail names the exception)
)
FIX_DROPPED_GPT = "dropped_leading_gpt_turn"
FIX_ROLE_NAMES = "converted_role_names"
# Fields the converter writes into the sample json; an input record must not carry them.
RESERVED_FIELDS = ("index", "source", "media", "fixes")
PLACEHOLDERS = {m: f"<{m}>" for m in MODALITIES}
_ROLES = {"human": "human", "gpt": "gpt", "user": "human", "assistant": "gpt"}
_SLUG_BAD = re.compile(r"[^A-Za-z0-9_-]")
SLUG_LEN = 32


class Rejected(Exception):
    """A record is not converted; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, detail: str):
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass
class CheckedRecord:
    """A record that passed the checks; ``media`` lists (modality, path) in shard order."""

    record: dict[str, Any]  # the input record with the repaired conversation
    media: list[tuple[str, str]] = field(default_factory=list)
    fixes: list[str] = field(default_factory=list)


def make_key(index: int, record_id: Any) -> str:
    """The sample key ``{index:09d}_{slug}``: no dot, no slash, unique per index."""
    slug = _SLUG_BAD.sub("_", str(record_id))[:SLUG_LEN]
    return f"{index:09d}_{slug}"


def parse_record(text: str | None, decode_error: str | None) -> Any:
    """Parse a record's raw JSON text; Rejected(invalid_json) when it does not parse."""
    if text is None:
        raise Rejected("invalid_json", decode_error or "record could not be decoded")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        snippet = text.strip()[:80]
        raise Rejected("invalid_json", f"{exc.msg} at column {exc.colno}: {snippet!r}") from None
    except RecursionError:
        raise Rejected("invalid_json", "JSON nested too deeply to parse") from None
    except ValueError as exc:  # e.g. an integer over the 4300-digit conversion limit
        raise Rejected("invalid_json", str(exc)[:200]) from None


def check_record(obj: Any) -> CheckedRecord:
    """Validate a parsed record; return it checked and repaired, or raise Rejected."""
    if not isinstance(obj, dict):
        raise Rejected("bad_record", f"record is a JSON {_json_type(obj)}, not an object")
    if "id" not in obj:
        raise Rejected("bad_record", "record has no 'id'")
    if not isinstance(obj["id"], (str, int)) or isinstance(obj["id"], bool):
        raise Rejected("bad_record", f"'id' must be a string or integer, got {_json_type(obj['id'])}")
    reserved = [k for k in RESERVED_FIELDS if k in obj]
    if reserved:
        raise Rejected("bad_record", f"field(s) {reserved} are reserved for the converter's output")
    if "conversations" not in obj:
        raise Rejected("bad_record", "record has no 'conversations'")
    media = _media_paths(obj)
    turns, fixes = _check_conversation(obj["conversations"])
    _check_placeholders(turns, media)
    record = dict(obj)
    record["conversations"] = turns
    return CheckedRecord(record=record, media=media, fixes=fixes)


def _media_paths(obj: dict[str, Any]) -> list[tuple[str, str]]:
    media: list[tuple[str, str]] = []
    for modality in MODALITIES:
        if modality not in obj:
            continue
        value = obj[modality]
        paths = value if isinstance(value, list) else [value]
        for i, path in enumerate(paths):
            name = modality if not isinstance(value, list) else f"{modality}[{i}]"
            if not isinstance(path, str):
                raise Rejected("bad_record", f"'{name}' must be a path string, got {_json_type(path)}")
            if not path.strip():
                raise Rejected("bad_record", f"'{name}' is an empty path")
            if "\0" in path:
                raise Rejected("bad_record", f"'{name}' = {path!r} holds a NUL byte")
            if os.path.isabs(path):
                raise Rejected(
                    "bad_record", f"'{name}' = {path!r} is absolute; media paths are relative to a media root"
                )
            media.append((modality, path))
    return media


def _check_conversation(conv: Any) -> tuple[list[Any], list[str]]:
    if not isinstance(conv, list):
        raise Rejected("bad_conversation", f"'conversations' is a JSON {_json_type(conv)}, not a list")
    if not conv:
        raise Rejected("bad_conversation", "'conversations' is empty")
    fixes: list[str] = []
    turns: list[Any] = []
    for i, turn in enumerate(conv):
        if not isinstance(turn, dict):
            raise Rejected("bad_conversation", f"turn {i} is a JSON {_json_type(turn)}, not an object")
        role, value = turn.get("from"), turn.get("value")
        if role not in _ROLES:
            raise Rejected(
                "bad_conversation", f"turn {i} has unknown role {role!r} (expected human/gpt or user/assistant)"
            )
        if not isinstance(value, str):
            raise Rejected("bad_conversation", f"turn {i} value is a JSON {_json_type(value)}, not a string")
        if _ROLES[role] != role:
            turn = {**turn, "from": _ROLES[role]}
            if FIX_ROLE_NAMES not in fixes:
                fixes.append(FIX_ROLE_NAMES)
        turns.append(turn)
    if turns[0]["from"] == "gpt":
        turns = turns[1:]
        fixes.append(FIX_DROPPED_GPT)
        if not turns:
            raise Rejected("bad_conversation", "only turn is from gpt; nothing left after dropping it")
    for i, turn in enumerate(turns):
        expected = "human" if i % 2 == 0 else "gpt"
        if turn["from"] != expected:
            offset = 1 if FIX_DROPPED_GPT in fixes else 0
            raise Rejected(
                "bad_conversation",
                f"roles do not alternate: turn {i + offset} is {turn['from']!r}, expected {expected!r}",
            )
    if len(turns) < 2:
        raise Rejected("bad_conversation", "no assistant (gpt) turn")
    return turns, fixes


def _check_placeholders(turns: list[dict[str, Any]], media: list[tuple[str, str]]) -> None:
    human = "\n".join(t["value"] for t in turns if t["from"] == "human")
    gpt = "\n".join(t["value"] for t in turns if t["from"] == "gpt")
    for modality, token in PLACEHOLDERS.items():
        want = 0
        for m, _ in media:
            want += m == modality
        in_human = human.count(token)
        in_gpt = gpt.count(token)
        if in_gpt:
            raise Rejected(
                "placeholder_mismatch", f"{token} appears {in_gpt}x in gpt turns; placeholders belong in human turns"
            )
        if in_human != want:
            raise Rejected(
                "placeholder_mismatch", f"{in_human}x {token} in the conversation but {want} {modality} path(s) given"
            )


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__
