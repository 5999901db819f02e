"""Counting, logging and limiting skipped samples.

Each dataloader worker keeps a ``SkipCounter``; its counts travel with every batch (inside the
loader state), so the main process sees the totals of all workers, restores them on resume, and
prints one summary. ``check`` raises ``TooManySkipsError`` when the skip rate goes over the limit:
a run never quietly trains on a fraction of its data.

Samples that never arrive count too: where ``index.json`` gives a shard's sample count, every
sample the shard should hold and did not yield (a zero-byte, cut or unreadable shard) is skipped
under its reason with the shard named (``skip(..., count=n)``), and ``shard_done`` sums expected
and read samples for the "expected N, read M" line. ``note`` counts samples that are kept but
changed (an answer cut at ``max_length``: ``truncated_answer``); notes are not skips.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping

from .errors import SampleError, TooManySkipsError

log = logging.getLogger("llava_wb.data")


class SkipCounter:
    """Seen/skipped counts by reason, plus the first few examples of each reason."""

    def __init__(self, max_rate: float = 0.05, min_samples: int = 200, log_first: int = 20):
        self.max_rate = max_rate
        self.min_samples = min_samples
        self.log_first = log_first
        self.seen = 0
        self.skipped: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}
        self.noted: Counter[str] = Counter()
        self.expected = 0  # samples index.json promised for the shards finished so far
        self.read = 0  # ... and how many of them the shards yielded

    def ok(self) -> None:
        self.seen += 1

    def note(self, reason: str) -> None:
        """A sample kept with a change worth knowing (e.g. ``truncated_answer``); not a skip."""
        self.noted[reason] += 1

    def shard_done(self, expected: int, read: int) -> None:
        self.expected += expected
        self.read += read

    def skip(self, err: SampleError, where: str = "", count: int = 1) -> None:
        """Count ``count`` samples lost to ``err`` (more than one: samples a shard never yielded)."""
        self.seen += count
        self.skipped[err.reason] += count
        ex = self.examples.setdefault(err.reason, [])
        if len(ex) < 3:
            ex.append(str(err))
        n = self.skipped[err.reason] - count + 1
        if n <= self.log_first:
            log.warning("skipped %s%s", f"[{where}] " if where else "", err)
        elif n == self.log_first + 1:
            log.warning("further '%s' skips are counted but not logged", err.reason)
        self.check()

    @property
    def total_skipped(self) -> int:
        return sum(self.skipped.values())

    def check(self) -> None:
        if self.seen >= self.min_samples and self.total_skipped > self.max_rate * self.seen:
            raise TooManySkipsError(
                f"{self.total_skipped} of {self.seen} samples skipped "
                f"({100 * self.total_skipped / self.seen:.1f}% > max_skip_rate {100 * self.max_rate:.1f}%); "
                f"by reason: {dict(self.skipped)}; examples: {self.examples}"
            )

    def state(self) -> dict:
        return {
            "seen": self.seen,
            "skipped": dict(self.skipped),
            "examples": {k: list(v) for k, v in self.examples.items()},
            "noted": dict(self.noted),
            "expected": self.expected,
            "read": self.read,
        }

    def load(self, state: Mapping) -> None:
        self.seen = int(state.get("seen", 0))
        self.skipped = Counter(state.get("skipped", {}))
        self.examples = {k: list(v) for k, v in state.get("examples", {}).items()}
        self.noted = Counter(state.get("noted", {}))
        self.expected, self.read = int(state.get("expected", 0)), int(state.get("read", 0))


def merge(states: Iterable[Mapping]) -> dict:
    """Sum the counter states of several workers (or ranks)."""
    seen, skipped, noted, examples, expected, read = 0, Counter(), Counter(), {}, 0, 0
    for s in states:
        seen += int(s.get("seen", 0))
        skipped.update(s.get("skipped", {}))
        noted.update(s.get("noted", {}))
        expected += int(s.get("expected", 0))
        read += int(s.get("read", 0))
        for k, v in s.get("examples", {}).items():
            examples.setdefault(k, []).extend(v[: 3 - len(examples.get(k, []))])
    return {
        "seen": seen,
        "skipped": dict(skipped),
        "examples": examples,
        "noted": dict(noted),
        "expected": expected,
        "read": read,
    }


def format_summary(state: Mapping) -> str:
    seen, skipped = state.get("seen", 0), state.get("skipped", {})
    total = sum(skipped.values())
    lines = [
        f"samples seen {seen}, used {seen - total}, skipped {total}" + (f" ({100 * total / seen:.2f}%)" if seen else "")
    ]
    if state.get("expected"):
        lines.append(f"finished shards: expected {state['expected']} samples (index.json), read {state.get('read', 0)}")
    for reason, n in sorted(skipped.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {reason:<20} {n:>8}   e.g. {state.get('examples', {}).get(reason, [''])[0]}")
    for reason, n in sorted(state.get("noted", {}).items(), key=lambda kv: -kv[1]):
        lines.append(f"  kept, {reason:<14} {n:>8}")
    return "\n".join(lines)
