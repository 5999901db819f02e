"""The demo tokenizer: a small word-level tokenizer trained locally on the demo corpus.

No model hub is needed: ``build_demo_tokenizer`` trains a ``tokenizers`` WordLevel model on the
given texts and wraps it as a transformers fast tokenizer with

- special tokens ``<pad>`` ``<unk>`` ``<s>`` ``</s>`` (ids 0-3: pad, unk, bos, eos) and the media
  placeholders ``<image>`` ``<video>`` ``<audio>`` (ids 4-6, extra special tokens: never split);
- lowercasing, words split on whitespace, every punctuation character its own token (an
  apostrophe inside a word stays: ``user's``);
- a decoder that joins words with spaces and glues punctuation back (``"what colour is it?"``);
- a jinja ``chat_template`` (``role: content`` lines, assistant turns end with ``</s>``); content is
  a string or HF's list of parts (``{"type": "image"}``, ``{"type": "text", "text": ...}``).

``tokenizer(text)`` adds no special tokens (the conversation templates add BOS themselves), so
``decode(encode("red")) == "red"``. ``save_pretrained(dir)`` / ``AutoTokenizer.from_pretrained(dir)``
round-trips everything. ``demo_corpus`` gathers the texts to train on: the synthetic records'
conversation texts plus the template strings (vicuna system prompt and roles, chat roles), so
``vicuna_v1`` and ``chat_template`` never produce ``<unk>``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from llava_wb.data.templates import VICUNA_ROLES, VICUNA_SYSTEM

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<s>", "</s>"
MEDIA_PLACEHOLDERS = ["<image>", "<video>", "<audio>"]
SPECIAL_TOKENS = [PAD, UNK, BOS, EOS, *MEDIA_PLACEHOLDERS]
CHAT_ROLES = ("system", "user", "assistant")
WORD_PATTERN = r"\w+(?:'\w+)*|[^\w\s]"

# Message content is a string (LLaVA style: ``"<image>\nWhat colour ...?"``) or HF's list of parts
# (``[{"type": "image"}, {"type": "text", "text": ...}]``): parts render in order, joined by a
# newline, each media part as its placeholder, so both forms give the same text. An unknown part
# type raises (``raise_exception``) instead of vanishing from the prompt.
CONTENT_MACRO = (
    "{% macro render_content(content) %}"
    "{% if content is string %}{{ content }}"
    "{% else %}{% for part in content %}"
    "{% if not loop.first %}{{ '\\n' }}{% endif %}"
    "{% if part['type'] == 'text' %}{{ part['text'] }}"
    "{% elif part['type'] in ['image', 'video', 'audio'] %}{{ '<' + part['type'] + '>' }}"
    "{% else %}{{ raise_exception('unknown content part type ' + \"'\" + part['type'] | string + \"'\") }}"
    "{% endif %}{% endfor %}{% endif %}"
    "{% endmacro %}"
)

# Prefix-stable (see llava_wb.data.templates.ChatTemplate): rendering a prefix of a conversation
# gives a prefix of the full text; the generation prompt is "assistant:".
DEMO_CHAT_TEMPLATE = CONTENT_MACRO + (
    "{% for message in messages %}"
    "{{ message['role'] + ': ' + render_content(message['content']) }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}"
    "{{ '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'assistant:' }}{% endif %}"
)


def template_texts() -> list[str]:
    """The fixed strings the conversation templates emit, so their words are in the vocabulary."""
    return [VICUNA_SYSTEM, " ".join(f"{role}:" for role in VICUNA_ROLES), " ".join(f"{r}:" for r in CHAT_ROLES)]


def demo_corpus(texts: Iterable[str] = (), records: Iterable[Mapping[str, Any]] = ()) -> Iterator[str]:
    """Texts to train the demo tokenizer on: ``texts``, every conversation value of ``records``
    (LLaVA records, ``{"conversations": [{"from", "value"}]}``) and ``template_texts()``."""
    yield from texts
    for record in records:
        for turn in record.get("conversations", ()):
            value = turn.get("value") if isinstance(turn, Mapping) else None
            if isinstance(value, str):
                yield value
    yield from template_texts()


def build_demo_tokenizer(
    texts: Iterable[str],
    *,
    vocab_size: int | None = None,
    min_frequency: int = 1,
    chat_template: str = DEMO_CHAT_TEMPLATE,
) -> PreTrainedTokenizerFast:
    """Train a word-level tokenizer on ``texts`` and wrap it for transformers.

    ``vocab_size`` caps the vocabulary (special tokens included; the most frequent words are
    kept); ``None`` keeps every word seen at least ``min_frequency`` times. Words outside the
    vocabulary encode as ``<unk>``.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size is not None and vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(
            f"vocab_size={vocab_size} leaves no room for words next to {len(SPECIAL_TOKENS)} special tokens"
        )
    backend = Tokenizer(models.WordLevel(unk_token=UNK))
    backend.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    # Keep only the matches: words (with inner apostrophes: "user's", "don't") and single
    # punctuation characters; whitespace separates and is dropped.
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(WORD_PATTERN), behavior="removed", invert=True)
    # WordPiece joins tokens with spaces and removes the space before . ? ! , and 's n't ...;
    # the Replace steps glue a few more punctuation marks to the preceding word.
    backend.decoder = decoders.Sequence(
        [decoders.WordPiece(prefix="##", cleanup=True)] + [decoders.Replace(f" {p}", p) for p in ":;)%"]
    )
    trainer_kwargs: dict[str, Any] = {"special_tokens": SPECIAL_TOKENS, "min_frequency": min_frequency}
    if vocab_size is not None:
        trainer_kwargs["vocab_size"] = vocab_size
    backend.train_from_iterator(texts, trainer=trainers.WordLevelTrainer(**trainer_kwargs))
    vocab = backend.get_vocab()
    for i, token in enumerate(SPECIAL_TOKENS):  # the trainer puts special tokens first, in order
        if vocab.get(token) != i:
            raise RuntimeError(f"special token {token!r} got id {vocab.get(token)}, expected {i}")
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD,
        unk_token=UNK,
        bos_token=BOS,
        eos_token=EOS,
        extra_special_tokens=list(MEDIA_PLACEHOLDERS),
        chat_template=chat_template,
        clean_up_tokenization_spaces=False,
    )
