"""Conversation preprocessing: templates, media placeholder expansion, labels from emitted spans.

A template turns a validated LLaVA conversation (``[{"from": "human"|"gpt", "value": str}]``) into
a list of text ``Segment``s, each marked ``train`` (an assistant span, learned) or not. The engine
(``ConversationTemplate.tokenize``) then tokenizes every segment on its own (no special tokens
added inside segments), splits the text on ``<image>``/``<video>``/``<audio>`` and inserts ``n``
placeholder token ids per media item, and concatenates. Labels are a copy of the ids of ``train``
segments and ``IGNORE_INDEX`` elsewhere, built in the same loop as the ids: the two can never
disagree, so LLaVA's silent "tokenization mismatch" (a sample whose loss is quietly zeroed) cannot
happen here. Bad samples raise ``SampleError`` with a loader skip reason (``bad_conversation``,
``placeholder_mismatch``, ``too_long``); a template that cannot work with a tokenizer raises
``ValueError`` when it is built.

Templates (registry ``TEMPLATES``): ``plain`` (pretraining), ``vicuna_v1`` (LLaVA-1.5
finetuning) and ``chat_template`` (the tokenizer's own jinja chat template), see ``templates``.
Placeholders stay where the data puts them (``<image>`` after the text, as in LCS-558K, works).
Evaluation uses ``build_prompt`` (ids ending with the assistant prefix, a strict prefix of the
training ids of the same conversation) and ``split_for_eval`` (one prompt per assistant turn).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from llava_wb.data import templates as _templates  # noqa: F401  (registers the built-in templates)
from llava_wb.data.template_base import (  # noqa: F401  (re-exported: the public names of the engine)
    GPT,
    HUMAN,
    IGNORE_INDEX,
    MEDIA_KINDS,
    PLACEHOLDER_RE,
    PLACEHOLDERS,
    ROLE_ALIASES,
    TEMPLATES,
    ConversationTemplate,
    EvalTurn,
    Segment,
    TokenizedConversation,
    Turn,
    count_placeholders,
    parse_conversation,
    special_token_id,
)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def get_template(
    template: str | ConversationTemplate,
    tokenizer: PreTrainedTokenizerBase,
    *,
    modalities: Sequence[str] = MEDIA_KINDS,
    **options: Any,
) -> ConversationTemplate:
    """Build the registered template ``template`` for ``tokenizer`` (an instance is returned as is)."""
    if isinstance(template, ConversationTemplate):
        if template.tokenizer is not tokenizer:
            raise ValueError("template was built for a different tokenizer")
        return template
    return TEMPLATES.get(template)(tokenizer, modalities=modalities, **options)


def tokenize_conversation(
    conversations: Any,
    tokenizer: PreTrainedTokenizerBase,
    template: str | ConversationTemplate,
    *,
    max_length: int | None,
    media_tokens: Mapping[str, int | Sequence[int]],
    add_generation_prompt: bool = False,
    expected_media: Mapping[str, int] | None = None,
) -> TokenizedConversation:
    """Tokenize a LLaVA conversation with ``template`` (a registered name or a built template).

    ``media_tokens`` gives the tokens per item of each modality (``{"image": 576}``), or a list of
    counts, one per item in placeholder order. ``expected_media`` (the sample's media counts) is
    checked against the placeholders. Truncation to ``max_length`` cuts text at the end, never a
    media span; prompts (``add_generation_prompt``) are never cut. Build the template once with
    ``get_template`` in hot loops: a name builds (and checks) it on every call.
    """
    modalities = tuple(k for k in MEDIA_KINDS if k in media_tokens)
    tpl = get_template(template, tokenizer, modalities=modalities)
    return tpl.tokenize(
        conversations,
        max_length=max_length,
        media_tokens=media_tokens,
        add_generation_prompt=add_generation_prompt,
        expected_media=expected_media,
    )


def build_prompt(
    conversations: Any,
    tokenizer: PreTrainedTokenizerBase,
    template: str | ConversationTemplate,
    *,
    max_length: int | None,
    media_tokens: Mapping[str, int | Sequence[int]],
    expected_media: Mapping[str, int] | None = None,
) -> TokenizedConversation:
    """Generation prompt for a conversation ending with a human turn (labels all ignored).

    Its ids end with the template's assistant prefix and are exactly the first tokens of the
    training ids of the same conversation with the answer appended.
    """
    return tokenize_conversation(
        conversations,
        tokenizer,
        template,
        max_length=max_length,
        media_tokens=media_tokens,
        add_generation_prompt=True,
        expected_media=expected_media,
    )


def split_for_eval(conversations: Any) -> list[EvalTurn]:
    """One ``EvalTurn`` per assistant turn: the conversation before it (ending with the human
    question, earlier reference answers included) and the reference answer; ``turn`` counts
    assistant turns from 0."""
    turns = parse_conversation(conversations)
    items = []
    for i, turn in enumerate(turns):
        if turn.role == GPT:
            prompt = [{"from": t.role, "value": t.text} for t in turns[:i]]
            items.append(EvalTurn(prompt=prompt, answer=turn.text, turn=len(items)))
    return items
