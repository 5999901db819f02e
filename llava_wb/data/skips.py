"""Counting, logging and limiting skipped samples.

Each dataloader worker keeps a ``SkipCounter``; its counts travel with every batch (inside the
loader state), so the main process sees the totals of all workers, restores them on resume, and
prints one summary. ``check`` raises ``TooManySkipsError`` when the skip rate goes over the limit:
a run never quietly trains on a fraction of its data.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Iterable, Mapping

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

    def ok(self) -> None:
        self.seen += 1

    def skip(self, err: SampleError, where: str = "") -> None:
        self.seen += 1
        self.skipped[err.reason] += 1
        ex = self.examples.setdefault(err.reason, [])
        if len(ex) < 3:
            ex.append(str(err))
        n = self.skipped[err.reason]
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
                f"by reason: {dict(self.skipped)}; examples: {self.examples}")

    def state(self) -> dict:
        return {"seen": self.seen, "skipped": dict(self.skipped), "examples": self.examples}

    def load(self, state: Mapping) -> None:
        self.seen = int(state.get("seen", 0))
        self.skipped = Counter(state.get("skipped", {}))
        self.examples = {k: list(v) for k, v in state.get("examples", {}).items()}


def merge(states: Iterable[Mapping]) -> dict:
    """Sum the counter states of several workers (or ranks)."""
    seen, skipped, examples = 0, Counter(), {}
    for s in states:
        seen += int(s.get("seen", 0))
        skipped.update(s.get("skipped", {}))
        for k, v in s.get("examples", {}).items():
            examples.setdefault(k, []).extend(v[: 3 - len(examples.get(k, []))])
    return {"seen": seen, "skipped": dict(skipped), "examples": examples}


def format_summary(state: Mapping) -> str:
    seen, skipped = state.get("seen", 0), state.get("skipped", {})
    total = sum(skipped.values())
    lines = [f"samples seen {seen}, used {seen - total}, skipped {total}"
             + (f" ({100 * total / seen:.2f}%)" if seen else "")]
    for reason, n in sorted(skipped.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {reason:<20} {n:>8}   e.g. {state.get('examples', {}).get(reason, [''])[0]}")
    return "\n".join(lines)
