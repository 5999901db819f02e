"""The conversation template engine: parsed turns, text segments and the ``TEMPLATES`` registry.

``ConversationTemplate`` is the base class every template implements (``segments``, ``prefix``) and
whose ``tokenize`` builds ids and labels from emitted spans (see ``llava_wb.data.conversation``
for the whole story). This module imports no template: the built-ins live in
``llava_wb.data.templates`` and are registered by importing ``llava_wb.data.conversation``, the
public entry point (``get_template``, ``tokenize_conversation``, ``build_prompt``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from llava_wb.constants import IGNORE_INDEX, MEDIA_KINDS, PLACEHOLDERS
from llava_wb.data.errors import SampleError
from llava_wb.registry import Registry

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

PLACEHOLDER_RE = re.compile("(" + "|".join(re.escape(p) for p in PLACEHOLDERS.values()) + ")")
_KIND_OF = {p: kind for kind, p in PLACEHOLDERS.items()}
HUMAN, GPT = "human", "gpt"
ROLE_ALIASES = {"human": HUMAN, "user": HUMAN, "gpt": GPT, "assistant": GPT}

TEMPLATES: Registry[type[ConversationTemplate]] = Registry("conversation template")


@dataclass(frozen=True)
class Turn:
    """One validated turn: ``role`` is ``"human"`` or ``"gpt"``."""

    role: str
    text: str


@dataclass(frozen=True)
class Segment:
    """A piece of the rendered conversation; ``train`` segments are learned (labels = ids)."""

    text: str
    train: bool = False


@dataclass
class TokenizedConversation:
    """Token ids and labels of one conversation (``len(labels) == len(input_ids)`` always)."""

    input_ids: list[int]
    labels: list[int]
    num_media: dict[str, int] = field(default_factory=dict)
    truncated: bool = False
    # 1 for tokens of the non-assistant text (human turns and the template around them), 0 for
    # answers (learned or, in prompts, earlier reference answers), media placeholders and BOS:
    # what an instruction-aware reducer may look at (``instruct_resample``)
    instruction_mask: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class EvalTurn:
    """One evaluation item: the conversation up to a human turn, the reference answer, its index."""

    prompt: list[dict[str, str]]
    answer: str
    turn: int


def parse_conversation(conversations: Any, *, generation: bool = False) -> list[Turn]:
    """Validate a LLaVA conversation; raise ``SampleError("bad_conversation")`` on any problem.

    Rules: a non-empty list of ``{"from", "value"}`` dicts with string values, roles ``human``/``gpt``
    (``user``/``assistant`` accepted), starting with ``human`` and alternating. For training
    (``generation=False``) at least one ``gpt`` turn is required (a trailing human turn is kept,
    unlearned); for generation the last turn must be ``human``.
    """
    if not isinstance(conversations, Sequence) or isinstance(conversations, str) or not conversations:
        raise SampleError("bad_conversation", "conversation is empty or not a list")
    turns = []
    for i, item in enumerate(conversations):
        if not isinstance(item, Mapping) or "from" not in item or "value" not in item:
            raise SampleError("bad_conversation", f"turn {i} is not a {{'from', 'value'}} object")
        role = ROLE_ALIASES.get(item["from"]) if isinstance(item["from"], str) else None
        if role is None:
            raise SampleError("bad_conversation", f"turn {i} has unknown role {item['from']!r}")
        if not isinstance(item["value"], str):
            raise SampleError("bad_conversation", f"turn {i} value is {type(item['value']).__name__}, not str")
        expected = HUMAN if i % 2 == 0 else GPT
        if role != expected:
            raise SampleError(
                "bad_conversation", f"turn {i} is {role!r}, expected {expected!r} (roles must alternate from human)"
            )
        turns.append(Turn(role, item["value"]))
    if generation and turns[-1].role != HUMAN:
        raise SampleError("bad_conversation", "a generation prompt must end with a human turn")
    if not generation and not any(t.role == GPT for t in turns):
        raise SampleError("bad_conversation", "no assistant turn to learn from")
    return turns


def count_placeholders(text: str) -> dict[str, int]:
    """Count ``<image>``/``<video>``/``<audio>`` in ``text`` (only kinds that occur)."""
    counts: dict[str, int] = {}
    for match in PLACEHOLDER_RE.finditer(text):
        kind = _KIND_OF[match.group(0)]
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def special_token_id(tokenizer: PreTrainedTokenizerBase, token: str) -> int:
    """The id of ``token`` if the tokenizer encodes it as one unsplittable token; else ValueError."""
    tid = tokenizer.convert_tokens_to_ids(token)
    ids = tokenizer(token, add_special_tokens=False)["input_ids"]
    if not isinstance(tid, int) or tid == tokenizer.unk_token_id or ids != [tid]:
        raise ValueError(
            f"tokenizer has no single token for {token!r} (encodes as {ids}); add it with "
            f"tokenizer.add_special_tokens({{'extra_special_tokens': [{token!r}]}}) and resize the "
            "model's embeddings"
        )
    return tid


class ConversationTemplate:
    """Base class: subclasses define ``segments``; ``tokenize`` is shared by all templates.

    ``modalities`` are the media kinds this template must support: the tokenizer needs a single
    special token for each of their placeholders (checked here, once).
    """

    name: ClassVar[str] = ""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, *, modalities: Sequence[str] = MEDIA_KINDS):
        unknown = [m for m in modalities if m not in PLACEHOLDERS]
        if unknown:
            raise ValueError(f"unknown modalities {unknown}; known: {', '.join(MEDIA_KINDS)}")
        self.tokenizer = tokenizer
        self.media_ids = {m: special_token_id(tokenizer, PLACEHOLDERS[m]) for m in modalities}
        self.bos_id: int | None = tokenizer.bos_token_id

    def segments(self, turns: list[Turn], add_generation_prompt: bool) -> list[Segment]:
        """Render validated turns as segments; generation prompts end with the assistant prefix."""
        raise NotImplementedError

    def tokenize(
        self,
        conversations: Any,
        *,
        max_length: int | None,
        media_tokens: Mapping[str, int | Sequence[int]],
        add_generation_prompt: bool = False,
        expected_media: Mapping[str, int] | None = None,
    ) -> TokenizedConversation:
        """Tokenize one conversation; see ``tokenize_conversation``."""
        turns = parse_conversation(conversations, generation=add_generation_prompt)
        num_media = self._check_media(turns, expected_media)
        spans = self._media_spans(num_media, media_tokens)
        pieces: list[tuple[str, bool]] = []  # (text or placeholder, train)
        for seg in self.segments(turns, add_generation_prompt):
            pieces.extend((p, seg.train) for p in PLACEHOLDER_RE.split(seg.text) if p)
        texts = [p for p, _ in pieces if p not in _KIND_OF]
        encoded = iter(self.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else [])
        ids: list[int] = []
        labels: list[int] = []
        instruction: list[int] = []
        media_end = 0  # index just after the last media token
        for piece, train in pieces:
            if piece in _KIND_OF:
                kind = _KIND_OF[piece]
                if train or not spans.get(kind):  # a template bug: turns were checked above
                    raise RuntimeError(f"template {self.name!r} emitted an unexpected {piece}")
                n = spans[kind].pop(0)
                ids += [self.media_ids[kind]] * n
                labels += [IGNORE_INDEX] * n
                instruction += [0] * n
                media_end = len(ids)
            else:
                chunk = list(next(encoded))
                ids += chunk
                labels += chunk if train else [IGNORE_INDEX] * len(chunk)
                instruction += [0 if train else 1] * len(chunk)
        if self.bos_id is not None and (not ids or ids[0] != self.bos_id):
            ids.insert(0, self.bos_id)
            labels.insert(0, IGNORE_INDEX)
            instruction.insert(0, 0)
            media_end += 1 if media_end else 0
        if (
            len(ids) != len(labels) or len(ids) != len(instruction) or any(spans.values())
        ):  # explicit checks, survive python -O
            raise RuntimeError(f"template {self.name!r}: {len(ids)} ids, {len(labels)} labels, unused media {spans}")
        out = self._truncate(ids, labels, num_media, media_end, max_length, add_generation_prompt)
        out.instruction_mask = instruction[: len(out.input_ids)]
        return out

    def _check_media(self, turns: list[Turn], expected: Mapping[str, int] | None) -> dict[str, int]:
        counts: dict[str, int] = {}
        for i, turn in enumerate(turns):
            found = count_placeholders(turn.text)
            if found and turn.role == GPT:
                raise SampleError("placeholder_mismatch", f"assistant turn {i} contains {sorted(found)} placeholders")
            for kind, n in found.items():
                counts[kind] = counts.get(kind, 0) + n
        for kind in counts:
            if kind not in self.media_ids:
                raise SampleError(
                    "placeholder_mismatch", f"text has <{kind}> but the template supports only {sorted(self.media_ids)}"
                )
        if expected is not None:
            bad = [k for k in expected if k not in PLACEHOLDERS]
            if bad:
                raise ValueError(f"expected_media has unknown modalities {bad}")
            for kind in MEDIA_KINDS:
                if counts.get(kind, 0) != expected.get(kind, 0):
                    raise SampleError(
                        "placeholder_mismatch",
                        f"text has {counts.get(kind, 0)} <{kind}> placeholders, sample has {expected.get(kind, 0)} {kind} item(s)",
                    )
        return counts

    @staticmethod
    def _media_spans(
        num_media: dict[str, int], media_tokens: Mapping[str, int | Sequence[int]]
    ) -> dict[str, list[int]]:
        spans: dict[str, list[int]] = {}
        for kind, count in num_media.items():
            if kind not in media_tokens:
                raise SampleError(
                    "placeholder_mismatch", f"text has <{kind}> but media_tokens gives no count for {kind!r}"
                )
            per = media_tokens[kind]
            spans[kind] = [int(n) for n in per] if isinstance(per, Sequence) else [int(per)] * count
            if len(spans[kind]) != count or min(spans[kind]) < 1:
                raise SampleError(
                    "placeholder_mismatch", f"{count} <{kind}> placeholders but media_tokens[{kind!r}] = {per!r}"
                )
        return spans

    @staticmethod
    def _truncate(
        ids: list[int],
        labels: list[int],
        num_media: dict[str, int],
        media_end: int,
        max_length: int | None,
        generation: bool,
    ) -> TokenizedConversation:
        total = len(ids)
        first = next((i for i, lab in enumerate(labels) if lab != IGNORE_INDEX), total)
        if not generation and first == total:
            raise SampleError("bad_conversation", "the assistant turns produce no tokens to learn from")
        if max_length is None or total <= max_length:
            return TokenizedConversation(ids, labels, num_media, truncated=False)
        if media_end > max_length:
            media = ", ".join(f"{n} {k}" for k, n in num_media.items())
            raise SampleError(
                "too_long",
                f"media ({media}) ends at token {media_end} > max_length {max_length} (sequence {total} tokens)",
            )
        if generation:
            raise SampleError("too_long", f"prompt of {total} tokens > max_length {max_length}; prompts are never cut")
        if first >= max_length:
            raise SampleError(
                "too_long",
                f"no answer token left: first answer token at {first}, max_length {max_length}, sequence {total}",
            )
        ids, labels = ids[:max_length], labels[:max_length]
        return TokenizedConversation(ids, labels, num_media, truncated=True)
