"""Stream LLaVA records out of JSON-array and JSONL files without loading a whole file.

A LLaVA metadata file can be several GB; ``json.load`` on it costs several times its size in RAM
in every process that does it. The readers here hold at most one read chunk plus the record being
parsed:

* JSON array files are read in text chunks and decoded one element at a time with
  ``json.JSONDecoder.raw_decode`` over a buffer that grows only while an element is incomplete
  (the read size doubles while it grows, so a huge element costs linear, not quadratic, time).
* JSONL files are read line by line. Blank lines are not records and get no index; every other
  line is one record, including lines that do not parse (the converter rejects those as
  ``invalid_json``, naming the line).

Each record comes out as a :class:`RawRecord` holding its raw JSON text (workers parse it), its
**global index** (0-based position across all input files, in the order given, counting every
record including the ones later rejected) and where it came from. A syntax error inside a JSON
array cannot be skipped safely (the element boundaries are lost), so it raises
:class:`InputError` naming the file, line and column.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

CHUNK_CHARS = 1 << 20
_WHITESPACE = " \t\n\r"
_NUMBER_START = "-0123456789"
_NUMBER_CHARS = "0123456789.eE+-"
_DECODER = json.JSONDecoder()


class InputError(ValueError):
    """An input file cannot be read as LLaVA JSON / JSONL; the message names the file and place."""


@dataclass(frozen=True)
class RawRecord:
    """One record as found in the input, not yet parsed or validated."""

    index: int  # global 0-based position across all input files
    source: int  # position of the input file in the list of inputs
    location: str  # human-readable place in the file, e.g. "line 17"
    text: str | None  # raw JSON text of the record; None when it could not even be decoded
    error: str | None = None  # why ``text`` is None (e.g. invalid UTF-8 on a JSONL line)


def detect_kind(path: str) -> str:
    """Return ``"jsonl"`` or ``"json"`` for an input file.

    ``.jsonl`` / ``.ndjson`` are JSONL. Otherwise the first non-blank character decides: ``[`` is
    a JSON array, ``{`` is JSONL (one object per line, whatever the file is called).
    """
    lower = path.lower()
    if lower.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        while True:
            chunk = f.read(4096)
            if not chunk:
                raise InputError(f"{path}: file is empty or blank; expected a JSON array or JSONL")
            stripped = chunk.lstrip(_WHITESPACE)
            if stripped:
                first = stripped[0]
                break
    if first == "[":
        return "json"
    if first == "{":
        return "jsonl"
    raise InputError(f"{path}: starts with {first!r}; expected a JSON array ('[') or JSONL objects ('{{')")


def iter_records(paths: Sequence[str], chunk_chars: int = CHUNK_CHARS) -> Iterator[RawRecord]:
    """Yield every record of every input file in order, with global indices starting at 0."""
    index = 0
    for source, path in enumerate(paths):
        kind = detect_kind(path)
        reader = _iter_jsonl(path) if kind == "jsonl" else _iter_json_array(path, chunk_chars)
        for location, text, error in reader:
            yield RawRecord(index=index, source=source, location=location, text=text, error=error)
            index += 1


def _iter_jsonl(path: str) -> Iterator[tuple[str, str | None, str | None]]:
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            if line_no == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield f"line {line_no}", None, f"line is not valid UTF-8 ({exc.reason} at byte {exc.start})"
                continue
            yield f"line {line_no}", text, None


class _ArrayScanner:
    """Incremental reader of one JSON array: a text buffer, a cursor, and line bookkeeping."""

    def __init__(self, path: str, chunk_chars: int):
        self.path = path
        self.file = open(path, encoding="utf-8-sig", newline="")
        self.chunk_chars = chunk_chars
        self.buf = ""
        self.pos = 0
        self.eof = False
        self.dropped_lines = 0  # newlines in the part of the file already dropped from ``buf``
        self.dropped_col = 0  # characters of the current line that were dropped from ``buf``

    def close(self) -> None:
        self.file.close()

    def where(self, pos: int | None = None) -> str:
        p = self.pos if pos is None else pos
        line = self.dropped_lines + self.buf.count("\n", 0, p) + 1
        newline = self.buf.rfind("\n", 0, p)
        col = p - newline if newline >= 0 else self.dropped_col + p + 1
        return f"line {line} column {col}"

    def fail(self, message: str, pos: int | None = None) -> InputError:
        return InputError(f"{self.path}: {message} at {self.where(pos)}")

    def read_more(self, at_least: int = 0) -> bool:
        """Append more text to the buffer; return False at end of file."""
        if self.eof:
            return False
        try:
            chunk = self.file.read(max(self.chunk_chars, at_least))
        except UnicodeDecodeError as exc:
            raise InputError(f"{self.path}: not valid UTF-8 ({exc.reason})") from exc
        if not chunk:
            self.eof = True
            return False
        if self.pos > len(self.buf) // 2:  # compact: drop what has been consumed
            self.dropped_lines += self.buf.count("\n", 0, self.pos)
            newline = self.buf.rfind("\n", 0, self.pos)
            self.dropped_col = self.pos - newline - 1 if newline >= 0 else self.dropped_col + self.pos
            self.buf = self.buf[self.pos :]
            self.pos = 0
        self.buf += chunk
        return True

    def skip_ws(self) -> str:
        """Move past whitespace; return the next character, or "" at end of file."""
        while True:
            while self.pos < len(self.buf) and self.buf[self.pos] in _WHITESPACE:
                self.pos += 1
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self.read_more():
                return ""

    def decode_value(self) -> str:
        """Decode the value at the cursor and return its raw text."""
        while True:
            start = self.pos
            try:
                _, end = _DECODER.raw_decode(self.buf, start)
            except json.JSONDecodeError as exc:
                # An error at (or just before) the end of the buffer, or a string that runs to
                # the end, may only mean "incomplete": read more (at least as much as is pending,
                # so retries stay linear) and decode again. An error earlier is a real one.
                incomplete = exc.msg.startswith("Unterminated string") or exc.pos >= len(self.buf) - 16
                if incomplete and self.read_more(at_least=len(self.buf) - self.pos):
                    continue
                raise self.fail(f"invalid JSON in array element ({exc.msg})", exc.pos) from None
            if self.buf[start] in _NUMBER_START:
                # A bare number ("0" of "0.5") is complete only once a non-number character
                # follows its longest possible run; until then read more and decode again.
                run_end = end
                while run_end < len(self.buf) and self.buf[run_end] in _NUMBER_CHARS:
                    run_end += 1
                if run_end == len(self.buf) and self.read_more(at_least=len(self.buf) - self.pos):
                    continue
            elif end == len(self.buf) and self.read_more(at_least=len(self.buf) - self.pos):
                continue  # a literal could continue in the next chunk: decode again
            text = self.buf[start:end]
            self.pos = end
            return text


def _iter_json_array(path: str, chunk_chars: int) -> Iterator[tuple[str, str | None, str | None]]:
    scanner = _ArrayScanner(path, chunk_chars)
    try:
        if scanner.skip_ws() != "[":
            raise scanner.fail("expected '[' (a JSON array of records)")
        scanner.pos += 1
        if scanner.skip_ws() == "]":
            scanner.pos += 1
        else:
            element = 0
            while True:
                if scanner.skip_ws() == "":
                    raise scanner.fail("unexpected end of file inside the array")
                text = scanner.decode_value()
                yield f"array element {element}", text, None
                element += 1
                nxt = scanner.skip_ws()
                if nxt == ",":
                    scanner.pos += 1
                    continue
                if nxt == "]":
                    scanner.pos += 1
                    break
                if nxt == "":
                    raise scanner.fail("unexpected end of file: array not closed with ']'")
                raise scanner.fail(f"expected ',' or ']' after element {element - 1}, found {nxt!r}")
        if scanner.skip_ws() != "":
            raise scanner.fail("unexpected data after the closing ']'")
    finally:
        scanner.close()


def input_fingerprint(path: str) -> dict[str, object]:
    """Identify an input file's version (absolute path, size, mtime) for resume checks."""
    st = os.stat(path)
    return {"path": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
