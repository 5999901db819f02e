"""Tests for llava_wb.tokenizer: special tokens, decoding round trips, save/load round trip."""

from __future__ import annotations

import pytest

from llava_wb.data.conversation import IGNORE_INDEX, tokenize_conversation
from llava_wb.tokenizer import SPECIAL_TOKENS, build_demo_tokenizer, demo_corpus, template_texts

RECORDS = [
    {
        "id": "a",
        "conversations": [
            {"from": "human", "value": "<image>\nWhat colour is the triangle?"},
            {"from": "gpt", "value": "Red"},
            {"from": "human", "value": "Is the circle left or right of the square?"},
            {"from": "gpt", "value": "left"},
        ],
    },
    {
        "id": "b",
        "conversations": [
            {"from": "human", "value": "How many shapes are there? Answer with a number."},
            {"from": "gpt", "value": "2"},
        ],
    },
]
SENTENCES = [
    "what colour is the triangle?",
    "is the circle left or right of the square?",
    "how many shapes are there? answer with a number.",
    "a chat between a curious user and an artificial intelligence assistant.",
    "the assistant gives helpful, detailed, and polite answers to the user's questions.",
    "user: what colour is the triangle? assistant: red",
]


@pytest.fixture(scope="module")
def tok():
    return build_demo_tokenizer(demo_corpus(records=RECORDS))


def test_special_tokens(tok):
    assert [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == list(range(7))
    assert (tok.pad_token, tok.unk_token, tok.bos_token, tok.eos_token) == ("<pad>", "<unk>", "<s>", "</s>")
    assert (tok.pad_token_id, tok.unk_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2, 3)
    assert list(tok.extra_special_tokens) == ["<image>", "<video>", "<audio>"]
    ids = tok("a<image>the <video><audio> red</s>", add_special_tokens=False)["input_ids"]
    a, the, red = (tok.convert_tokens_to_ids(w) for w in ("a", "the", "red"))
    assert ids == [a, 4, the, 5, 6, red, 3]  # never split, even glued to words
    assert tok("zebra", add_special_tokens=False)["input_ids"] == [tok.unk_token_id]


def test_single_words_round_trip(tok):
    words = [w for w in tok.get_vocab() if w not in SPECIAL_TOKENS]
    assert {"red", "left", "2", "user", "assistant", ":"} <= set(words)
    for word in words:
        ids = tok(word)["input_ids"]  # no special tokens are added by default
        assert len(ids) == 1 and tok.decode(ids) == word


@pytest.mark.parametrize("sentence", SENTENCES)
def test_sentences_decode_with_normal_spacing(tok, sentence):
    ids = tok(sentence)["input_ids"]
    assert tok.unk_token_id not in ids
    assert tok.decode(ids) == sentence


def test_lowercases_and_skips_specials_on_request(tok):
    ids = tok("RED</s>")["input_ids"]
    assert tok.decode(ids) == "red </s>" and tok.decode(ids, skip_special_tokens=True) == "red"


def test_save_load_round_trip(tok, tmp_path):
    from transformers import AutoTokenizer

    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(str(tmp_path))
    texts = SENTENCES + ["<image>\nWhat colour? zebra!", "RED </s> <s> <pad> <audio>"]
    assert loaded(texts)["input_ids"] == tok(texts)["input_ids"]
    assert loaded.get_vocab() == tok.get_vocab()
    for attr in ("pad_token_id", "unk_token_id", "bos_token_id", "eos_token_id", "chat_template"):
        assert getattr(loaded, attr) == getattr(tok, attr), attr
    assert list(loaded.extra_special_tokens) == list(tok.extra_special_tokens)
    ids = tok(texts[0])["input_ids"]
    assert loaded.decode(ids) == tok.decode(ids)
    messages = [{"role": "user", "content": "what colour?"}, {"role": "assistant", "content": "red"}]
    assert loaded.apply_chat_template(messages, tokenize=False) == tok.apply_chat_template(messages, tokenize=False)
    for template in ("vicuna_v1", "chat_template"):
        a = tokenize_conversation(
            RECORDS[0]["conversations"], tok, template, max_length=None, media_tokens={"image": 3}
        )
        b = tokenize_conversation(
            RECORDS[0]["conversations"], loaded, template, max_length=None, media_tokens={"image": 3}
        )
        assert a == b


@pytest.mark.parametrize("template", ["vicuna_v1", "chat_template"])
def test_templates_have_no_unknown_words(tok, template):
    out = tokenize_conversation(RECORDS[0]["conversations"], tok, template, max_length=None, media_tokens={"image": 2})
    assert tok.unk_token_id not in out.input_ids
    answers = [
        tok.decode([i for i, lab in zip(out.input_ids, out.labels) if lab != IGNORE_INDEX], skip_special_tokens=True)
    ]
    assert answers == ["red left"]
    if template == "vicuna_v1":
        text = tok.decode(out.input_ids)
        assert "user:" in text and "assistant:" in text and text.endswith("</s>")


def test_demo_corpus_and_vocab_size():
    corpus = list(demo_corpus(["extra words"], records=RECORDS))
    assert corpus[0] == "extra words" and "Red" in corpus and corpus[-len(template_texts()) :] == template_texts()
    small = build_demo_tokenizer(corpus, vocab_size=12)
    assert len(small.get_vocab()) == 12
    assert small("the")["input_ids"] != [small.unk_token_id]  # the most frequent words are kept
    with pytest.raises(ValueError, match="vocab_size"):
        build_demo_tokenizer(corpus, vocab_size=7)


def test_chat_template_takes_list_of_parts_content(tok):
    """HF's list-of-parts messages render like the LLaVA string form (parts joined by a newline)."""
    as_string = [
        {"role": "user", "content": "<image>\nWhat colour is the triangle?"},
        {"role": "assistant", "content": "red"},
        {"role": "user", "content": "Is the circle left or right of the square?\n<image>"},
    ]
    as_parts = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is the triangle?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "red"}]},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Is the circle left or right of the square?"},
                {"type": "image", "image": "ignored.png"},
            ],
        },
    ]
    text = tok.apply_chat_template(as_string, tokenize=False, add_generation_prompt=True)
    assert tok.apply_chat_template(as_parts, tokenize=False, add_generation_prompt=True) == text
    assert text == (
        "user: <image>\nWhat colour is the triangle?\nassistant: red</s>\n"
        "user: Is the circle left or right of the square?\n<image>\nassistant:"
    )
    video_audio = [{"role": "user", "content": [{"type": "video"}, {"type": "audio"}, {"type": "text", "text": "hi"}]}]
    assert tok.apply_chat_template(video_audio, tokenize=False) == "user: <video>\n<audio>\nhi\n"
    with pytest.raises(Exception, match="unknown content part type 'pointcloud'"):
        tok.apply_chat_template([{"role": "user", "content": [{"type": "pointcloud"}]}], tokenize=False)
