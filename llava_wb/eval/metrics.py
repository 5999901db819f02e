"""Exact-match scoring per question type, with the majority-class baseline beside it.

Kept free of torch so results can be re-scored and tabulated anywhere.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

_PUNCT = re.compile(r"[\s.,!?;:\"']+$")


def normalize(text: str) -> str:
    """Lowercase, collapse whitespace, strip trailing punctuation: 'Red.' == 'red'."""
    return _PUNCT.sub("", " ".join(text.lower().split())).strip()


@dataclass
class EvalResult:
    """Predictions and per-type scores. ``per_type[t]``: n, correct, accuracy, majority answer and its accuracy."""

    predictions: list[dict[str, Any]] = field(default_factory=list)

    def add(self, *, id: str, qtype: str, turn: int, question: str, answer: str, prediction: str) -> None:
        self.predictions.append(
            {
                "id": id,
                "qtype": qtype,
                "turn": turn,
                "question": question,
                "answer": answer,
                "prediction": prediction,
                "correct": normalize(prediction) == normalize(answer),
            }
        )

    @property
    def per_type(self) -> dict[str, dict[str, Any]]:
        groups: dict[str, list[dict]] = defaultdict(list)
        for p in self.predictions:
            groups[p["qtype"]].append(p)
        out = {}
        for qtype in sorted(groups):
            items = groups[qtype]
            answer, count = Counter(normalize(p["answer"]) for p in items).most_common(1)[0]
            correct = sum(p["correct"] for p in items)
            out[qtype] = {
                "n": len(items),
                "correct": correct,
                "accuracy": correct / len(items),
                "majority_answer": answer,
                "majority_accuracy": count / len(items),
            }
        return out

    @property
    def overall(self) -> dict[str, Any]:
        n = len(self.predictions)
        correct = sum(p["correct"] for p in self.predictions)
        return {"n": n, "correct": correct, "accuracy": correct / n if n else 0.0}

    def to_markdown(self) -> str:
        rows = ["| question type | n | accuracy | majority baseline (answer) |", "|---|---:|---:|---|"]
        for t, r in self.per_type.items():
            rows.append(
                f"| {t} | {r['n']} | {100 * r['accuracy']:.1f}% | {100 * r['majority_accuracy']:.1f}% "
                f"({r['majority_answer']}) |"
            )
        o = self.overall
        rows.append(f"| **all** | {o['n']} | {100 * o['accuracy']:.1f}% | |")
        return "\n".join(rows)

    def to_json(self, n_examples: int = 50) -> dict[str, Any]:
        return {"overall": self.overall, "per_type": self.per_type, "examples": self.predictions[:n_examples]}

    def save(self, path: str) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_json(), f, indent=1)
