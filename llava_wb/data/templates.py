"""The built-in conversation templates: ``plain``, ``vicuna_v1`` and ``chat_template``.

Each template only renders validated turns into text ``Segment``s and marks the learned ones;
tokenization, placeholder expansion, labels and truncation live in ``conversation`` and are
shared. Register a new template with ``@TEMPLATES.register("name")`` on a subclass of
``ConversationTemplate``.

In every template the learned span of an assistant turn is *everything the model must generate
after the generation prompt*: so ``build_prompt`` ids are exactly the first ids of the training
sequence, and what is learned is what generation produces.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from llava_wb.data.errors import SampleError
from llava_wb.data.template_base import (
    HUMAN,
    MEDIA_KINDS,
    PLACEHOLDER_RE,
    TEMPLATES,
    ConversationTemplate,
    Segment,
    Turn,
    special_token_id,
)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
VICUNA_ROLES = ("USER", "ASSISTANT")


@TEMPLATES.register("plain")
class PlainTemplate(ConversationTemplate):
    """LLaVA pretraining: ``[bos] <media placeholders of the human turn> caption "\\n"``.

    The human turn's text is dropped, only its placeholders (in order) remain; the loss is on the
    caption plus ``"\\n"``. Exactly one human and one gpt turn.
    """

    name = "plain"

    def segments(self, turns: list[Turn], add_generation_prompt: bool) -> list[Segment]:
        if len(turns) > 2:
            raise SampleError(
                "bad_conversation", f"plain template takes one human and one gpt turn, got {len(turns)} turns"
            )
        segs = [Segment("".join(PLACEHOLDER_RE.findall(turns[0].text)))]
        if not add_generation_prompt:
            segs.append(Segment(turns[1].text + "\n", train=True))
        return segs


@TEMPLATES.register("vicuna_v1")
class VicunaV1Template(ConversationTemplate):
    """LLaVA-1.5 finetuning, LLaVA's ``conv_vicuna_v1`` layout (separators ``" "`` and eos)::

        {system} USER: {q1} ASSISTANT: {a1}</s>USER: {q2} ASSISTANT: {a2}</s>

    Learned: ``" {a}</s>"`` of every assistant turn (``</s>`` is the tokenizer's eos token). The
    generation prompt ends with ``"ASSISTANT:"``.
    """

    name = "vicuna_v1"

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        *,
        modalities: Sequence[str] = MEDIA_KINDS,
        system: str = VICUNA_SYSTEM,
    ):
        super().__init__(tokenizer, modalities=modalities)
        if tokenizer.eos_token is None:
            raise ValueError("vicuna_v1 needs a tokenizer with an eos token (it ends assistant turns)")
        special_token_id(tokenizer, str(tokenizer.eos_token))
        self.eos = str(tokenizer.eos_token)
        self.system = system

    def segments(self, turns: list[Turn], add_generation_prompt: bool) -> list[Segment]:
        user, assistant = VICUNA_ROLES
        segs: list[Segment] = []
        text = self.system + " "
        for i, turn in enumerate(turns):
            if turn.role == HUMAN:
                text += f"{user}: {turn.text}"
                if i + 1 < len(turns) or add_generation_prompt:
                    text += f" {assistant}:"
            else:
                segs += [Segment(text), Segment(f" {turn.text}{self.eos}", train=True)]
                text = ""
        segs.append(Segment(text))
        return segs


@TEMPLATES.register("chat_template")
class ChatTemplate(ConversationTemplate):
    """The tokenizer's own jinja chat template (``tokenizer.apply_chat_template``).

    Roles map ``human`` -> ``user``, ``gpt`` -> ``assistant`` (optional ``system`` message first).
    Assistant spans are found by rendering prefixes of the conversation as text:

    - ``head`` = render(messages before assistant turn i, add_generation_prompt=True): the text the
      model sees before it starts answering;
    - ``upto`` = render(messages up to and including turn i).

    Both must be prefixes of the full rendering (the template is "prefix-stable"; templates that
    rewrite earlier turns depending on later ones are rejected with ``ValueError``). The learned
    span is ``upto[len(head):]`` without trailing whitespace: the assistant content plus the
    end-of-turn marker the template writes (``</s>``, ``<|im_end|>``), i.e. exactly what the model
    has to generate and then stop. With ``learn_end_of_turn=False`` the span ends with the content.
    The content must appear verbatim (after ``strip()``) in that span, or ``ValueError`` is raised.
    The text is then tokenized segment by segment like every other template.
    """

    name = "chat_template"

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        *,
        modalities: Sequence[str] = MEDIA_KINDS,
        system: str | None = None,
        learn_end_of_turn: bool = True,
    ):
        super().__init__(tokenizer, modalities=modalities)
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("chat_template: the tokenizer has no chat_template set")
        self.system = system
        self.learn_end_of_turn = learn_end_of_turn

    def _render(self, messages: list[dict[str, Any]], add_generation_prompt: bool) -> str:
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
        if not isinstance(text, str):
            raise ValueError(f"apply_chat_template(tokenize=False) returned {type(text).__name__}, not str")
        return text

    def segments(self, turns: list[Turn], add_generation_prompt: bool) -> list[Segment]:
        messages: list[dict[str, Any]] = [{"role": "system", "content": self.system}] if self.system is not None else []
        messages += [{"role": "user" if t.role == HUMAN else "assistant", "content": t.text} for t in turns]
        full = self._render(messages, add_generation_prompt)
        segs: list[Segment] = []
        pos = 0
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            head = self._render(messages[:i], True)
            upto = self._render(messages[: i + 1], False)
            if not (upto.startswith(head) and full.startswith(upto) and len(head) >= pos):
                raise ValueError(
                    f"chat template is not prefix-stable at message {i}: rendering the conversation up to "
                    "a turn does not give a prefix of the full rendering, so assistant spans cannot be located"
                )
            span = upto[len(head) :]
            needle = message["content"].strip()
            found = span.find(needle)
            if found < 0:
                raise ValueError(f"chat template does not render assistant message {i} verbatim: {needle[:60]!r}")
            end = len(head) + (len(span.rstrip()) if self.learn_end_of_turn else found + len(needle))
            segs += [Segment(full[pos : len(head)]), Segment(full[len(head) : end], train=True)]
            pos = end
        segs.append(Segment(full[pos:]))
        return segs
