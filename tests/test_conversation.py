"""Tests for llava_wb.data.conversation / templates and llava_wb.registry: labels from spans,
placeholder expansion, truncation, validation reasons, eval prompts, chat_template spans."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llava_wb.data.conversation import (
    IGNORE_INDEX,
    TEMPLATES,
    build_prompt,
    get_template,
    split_for_eval,
    tokenize_conversation,
)
from llava_wb.data.errors import SampleError
from llava_wb.registry import Registry, UnknownNameError
from llava_wb.tokenizer import build_demo_tokenizer, demo_corpus

WORDS = "red green blue yellow circle square triangle left right of the is what colour shape how many".split()
CORPUS = [" ".join(WORDS), "Render a clear and concise summary of the photo. Yes, there are 2 shapes?"]
N_IMG = 4  # tokens per image in most tests


@pytest.fixture(scope="module")
def tok():
    return build_demo_tokenizer(demo_corpus(CORPUS))


def conv(*values: str) -> list[dict[str, str]]:
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": v} for i, v in enumerate(values)]


def label_runs(labels: list[int]) -> list[list[int]]:
    """Maximal runs of learned (non-ignored) labels."""
    runs: list[list[int]] = []
    prev = IGNORE_INDEX
    for lab in labels:
        if lab != IGNORE_INDEX:
            if prev == IGNORE_INDEX:
                runs.append([])
            runs[-1].append(lab)
        prev = lab
    return runs


def check_consistent(out, tok) -> None:
    assert len(out.input_ids) == len(out.labels)
    for i, lab in zip(out.input_ids, out.labels):
        assert lab == IGNORE_INDEX or lab == i
    img = tok.convert_tokens_to_ids("<image>")
    assert all(lab == IGNORE_INDEX for i, lab in zip(out.input_ids, out.labels) if i == img)


MULTI = conv("<image>\nWhat colour is the circle?", "red", "Is the square left or right?", "left of the circle")


def test_vicuna_labels_are_assistant_text_plus_eos(tok):
    out = tokenize_conversation(MULTI, tok, "vicuna_v1", max_length=None, media_tokens={"image": N_IMG})
    check_consistent(out, tok)
    runs = label_runs(out.labels)
    assert [tok.decode(r) for r in runs] == ["red </s>", "left of the circle </s>"]
    assert all(r[-1] == tok.eos_token_id for r in runs)
    assert out.input_ids[0] == tok.bos_token_id and out.input_ids.count(tok.bos_token_id) == 1
    text = tok.decode(out.input_ids, skip_special_tokens=True)
    assert text.startswith("a chat between a curious user") and "user: what colour" in text
    assert out.num_media == {"image": 1} and not out.truncated


def test_plain_is_placeholders_then_caption(tok):
    c = conv("Render a clear and concise summary of the photo.\n<image>", "a red circle")
    out = tokenize_conversation(c, tok, "plain", max_length=None, media_tokens={"image": N_IMG})
    img = tok.convert_tokens_to_ids("<image>")
    caption = tok("a red circle", add_special_tokens=False)["input_ids"]
    assert out.input_ids == [tok.bos_token_id] + [img] * N_IMG + caption
    assert out.labels == [IGNORE_INDEX] * (1 + N_IMG) + caption
    with pytest.raises(SampleError) as err:
        tokenize_conversation(MULTI, tok, "plain", max_length=None, media_tokens={"image": N_IMG})
    assert err.value.reason == "bad_conversation"


@pytest.mark.parametrize("template", ["plain", "vicuna_v1", "chat_template"])
def test_image_after_text_lcs_style(tok, template):
    c = conv("Render a clear and concise summary of the photo.\n<image>", "a red circle")
    out = tokenize_conversation(c, tok, template, max_length=None, media_tokens={"image": N_IMG})
    check_consistent(out, tok)
    img = tok.convert_tokens_to_ids("<image>")
    first = out.input_ids.index(img)
    assert out.input_ids[first : first + N_IMG] == [img] * N_IMG and out.input_ids.count(img) == N_IMG
    if template != "plain":  # the text stays before the image
        assert "photo" in tok.decode(out.input_ids[:first])


def test_placeholder_expansion_counts(tok):
    c = conv("<image> compare <image> and <video>", "left")
    media = {"image": 3, "video": 7}
    out = tokenize_conversation(
        c, tok, "vicuna_v1", max_length=None, media_tokens=media, expected_media={"image": 2, "video": 1}
    )
    ids = out.input_ids
    assert ids.count(tok.convert_tokens_to_ids("<image>")) == 6 and ids.count(tok.convert_tokens_to_ids("<video>")) == 7
    assert out.num_media == {"image": 2, "video": 1}
    per_item = tokenize_conversation(c, tok, "vicuna_v1", max_length=None, media_tokens={"image": [2, 5], "video": 1})
    img = tok.convert_tokens_to_ids("<image>")
    first = per_item.input_ids.index(img)
    assert per_item.input_ids[first : first + 3] == [img, img, tok.convert_tokens_to_ids("compare")]
    assert per_item.input_ids.count(img) == 7


def test_truncation_keeps_media_or_raises(tok):
    c = conv("<image>\nWhat colour is the circle?", "red green blue yellow red green blue yellow")
    full = tokenize_conversation(c, tok, "vicuna_v1", max_length=None, media_tokens={"image": 50})
    first_label = next(i for i, lab in enumerate(full.labels) if lab != IGNORE_INDEX)
    cut = tokenize_conversation(c, tok, "vicuna_v1", max_length=first_label + 2, media_tokens={"image": 50})
    assert cut.truncated and len(cut.input_ids) == first_label + 2
    assert cut.input_ids == full.input_ids[: first_label + 2] and cut.labels == full.labels[: first_label + 2]
    assert cut.input_ids.count(tok.convert_tokens_to_ids("<image>")) == 50
    with pytest.raises(SampleError) as err:  # media itself does not fit
        tokenize_conversation(c, tok, "vicuna_v1", max_length=40, media_tokens={"image": 50})
    assert err.value.reason == "too_long" and "max_length 40" in err.value.detail
    with pytest.raises(SampleError) as err:  # bos + 50 image tokens: the media end at 51
        tokenize_conversation(c, tok, "plain", max_length=50, media_tokens={"image": 50})
    assert err.value.reason == "too_long" and "media (1 image) ends at token 51" in err.value.detail
    assert len(tokenize_conversation(c, tok, "plain", max_length=52, media_tokens={"image": 50}).input_ids) == 52
    with pytest.raises(SampleError) as err:  # media fits, no answer token left
        tokenize_conversation(c, tok, "vicuna_v1", max_length=first_label, media_tokens={"image": 50})
    assert err.value.reason == "too_long" and "no answer token" in err.value.detail
    with pytest.raises(SampleError) as err:  # prompts are never cut
        build_prompt(c[:1], tok, "vicuna_v1", max_length=first_label - 1, media_tokens={"image": 50})
    assert err.value.reason == "too_long"


@pytest.mark.parametrize(
    "conversations, reason",
    [
        ([], "bad_conversation"),
        ("not a list", "bad_conversation"),
        ([{"from": "robot", "value": "hi"}, {"from": "gpt", "value": "x"}], "bad_conversation"),
        ([{"from": "human", "value": 3}, {"from": "gpt", "value": "x"}], "bad_conversation"),
        ([{"from": "human"}, {"from": "gpt", "value": "x"}], "bad_conversation"),
        (conv("hi", "red")[::-1], "bad_conversation"),  # starts with gpt
        (conv("hi", "red") + conv("again"), None),  # trailing human turn is fine for training
        (conv("hi"), "bad_conversation"),  # no assistant turn
        ([{"from": "human", "value": "a"}, {"from": "human", "value": "b"}], "bad_conversation"),
        (conv("hi", "<image> red"), "placeholder_mismatch"),  # placeholder in an assistant turn
        (conv("<audio> hi", "red"), "placeholder_mismatch"),  # no token count for audio
    ],
)
def test_validation_reasons(tok, conversations, reason):
    def call():
        return tokenize_conversation(conversations, tok, "vicuna_v1", max_length=None, media_tokens={"image": N_IMG})

    if reason is None:
        check_consistent(call(), tok)
        return
    with pytest.raises(SampleError) as err:
        call()
    assert err.value.reason == reason and err.value.detail


def test_expected_media_mismatch(tok):
    with pytest.raises(SampleError) as err:
        tokenize_conversation(
            conv("<image> hi", "red"),
            tok,
            "vicuna_v1",
            max_length=None,
            media_tokens={"image": 2},
            expected_media={"image": 2},
        )
    assert err.value.reason == "placeholder_mismatch" and "1 <image>" in err.value.detail
    with pytest.raises(SampleError):  # media given for a text-only conversation
        tokenize_conversation(
            conv("hi", "red"), tok, "vicuna_v1", max_length=None, media_tokens={"image": 2}, expected_media={"image": 1}
        )
    out = tokenize_conversation(
        conv("hi", "red"), tok, "vicuna_v1", max_length=None, media_tokens={"image": 2}, expected_media={}
    )
    assert out.num_media == {}


def test_tokenizer_without_placeholder_tokens_fails_at_construction(tok):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"<unk>": 0, "</s>": 1, "red": 2}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    bare = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="</s>")
    with pytest.raises(ValueError, match="no single token for '<image>'"):
        get_template("vicuna_v1", bare, modalities=("image",))
    assert get_template("vicuna_v1", bare, modalities=()).media_ids == {}


def test_chat_template_labels_cover_exactly_assistant_contents(tok):
    out = tokenize_conversation(MULTI, tok, "chat_template", max_length=None, media_tokens={"image": N_IMG})
    check_consistent(out, tok)
    runs = label_runs(out.labels)
    assert [tok.decode(r, skip_special_tokens=True) for r in runs] == ["red", "left of the circle"]
    assert all(r[-1] == tok.eos_token_id for r in runs)  # the template's end of turn is learned
    bare = get_template("chat_template", tok, learn_end_of_turn=False)
    runs = label_runs(bare.tokenize(MULTI, max_length=None, media_tokens={"image": N_IMG}).labels)
    assert runs == [
        tok("red", add_special_tokens=False)["input_ids"],
        tok("left of the circle", add_special_tokens=False)["input_ids"],
    ]


def test_chat_template_with_bos_in_template_and_unstable_template(tok):
    with_bos = "{{ bos_token }}" + tok.chat_template
    tok2 = build_demo_tokenizer(demo_corpus(CORPUS), chat_template=with_bos)
    out = tokenize_conversation(MULTI, tok2, "chat_template", max_length=None, media_tokens={"image": N_IMG})
    assert out.input_ids.count(tok2.bos_token_id) == 1 and out.input_ids[0] == tok2.bos_token_id
    # renders the number of messages first: a prefix of the conversation is not a prefix of the text
    unstable = "{{ messages | length }} " + tok.chat_template
    tok3 = build_demo_tokenizer(demo_corpus(CORPUS + ["1 2 3 4"]), chat_template=unstable)
    with pytest.raises(ValueError, match="prefix-stable"):
        tokenize_conversation(MULTI, tok3, "chat_template", max_length=None, media_tokens={"image": N_IMG})


@pytest.mark.parametrize("template", ["plain", "vicuna_v1", "chat_template"])
def test_build_prompt_is_prefix_of_training_ids(tok, template):
    c = conv("<image>\nWhat colour is the circle?", "red")
    train = tokenize_conversation(c, tok, template, max_length=None, media_tokens={"image": N_IMG})
    prompt = build_prompt(c[:1], tok, template, max_length=None, media_tokens={"image": N_IMG})
    assert all(lab == IGNORE_INDEX for lab in prompt.labels)
    n = len(prompt.input_ids)
    assert train.input_ids[:n] == prompt.input_ids and all(lab == IGNORE_INDEX for lab in train.labels[:n])
    assert all(lab != IGNORE_INDEX for lab in train.labels[n:])  # everything after the prompt is learned
    with pytest.raises(SampleError):  # a prompt must end with a human turn
        build_prompt(c, tok, template, max_length=None, media_tokens={"image": N_IMG})


def test_split_for_eval(tok):
    items = split_for_eval(MULTI)
    assert [(len(i.prompt), i.answer, i.turn) for i in items] == [(1, "red", 0), (3, "left of the circle", 1)]
    assert items[1].prompt == MULTI[:3]
    for item in items:  # every prompt is buildable and has the image once
        prompt = build_prompt(item.prompt, tok, "vicuna_v1", max_length=None, media_tokens={"image": N_IMG})
        assert prompt.num_media == {"image": 1}


def test_role_aliases(tok):
    c = [{"from": "user", "value": "hi"}, {"from": "assistant", "value": "red"}]
    a = tokenize_conversation(c, tok, "vicuna_v1", max_length=None, media_tokens={})
    b = tokenize_conversation(conv("hi", "red"), tok, "vicuna_v1", max_length=None, media_tokens={})
    assert a == b


def test_vicuna_with_byte_level_bpe_keeps_spaces():
    """A GPT-2 style tokenizer (spaces belong to the next word): labels decode to ' answer</s>'."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        CORPUS * 3 + ["USER: ASSISTANT: a chat"], vocab_size=300, special_tokens=["</s>", "<image>"]
    )
    t = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="</s>", extra_special_tokens=["<image>"])
    out = tokenize_conversation(MULTI, t, "vicuna_v1", max_length=None, media_tokens={"image": 2})
    assert [t.decode(r) for r in label_runs(out.labels)] == [" red</s>", " left of the circle</s>"]
    prompt = build_prompt(MULTI[:1], t, "vicuna_v1", max_length=None, media_tokens={"image": 2})
    assert t.decode(prompt.input_ids).endswith("What colour is the circle? ASSISTANT:")


def test_registry_unknown_name_lists_known_names():
    with pytest.raises(UnknownNameError) as err:
        TEMPLATES.get("vicuna")
    assert isinstance(err.value, ValueError)
    assert str(err.value) == "unknown conversation template 'vicuna'; known: chat_template, plain, vicuna_v1"
    reg: Registry[int] = Registry("widget")
    with pytest.raises(UnknownNameError, match=r"unknown widget 'a'; known: \(none registered\)"):
        reg.get("a")

    @reg.register("b")
    def make_b() -> int:
        return 2

    reg.register("a", 1)
    assert reg.get("b") is make_b and reg.get("a") == 1 and reg.names() == ["a", "b"] and "a" in reg
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a", 3)


turn_text = st.lists(st.sampled_from(WORDS + ["?", ",", "zebra", "<image>", "Red!"]), max_size=8).map(" ".join)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    questions=st.lists(turn_text, min_size=1, max_size=4),
    answers=st.lists(
        st.lists(st.sampled_from(WORDS + [".", "2"]), min_size=1, max_size=5).map(" ".join), min_size=4, max_size=4
    ),
    template=st.sampled_from(["vicuna_v1", "chat_template", "plain"]),
    n_img=st.integers(1, 6),
    max_length=st.one_of(st.none(), st.integers(1, 80)),
)
def test_random_conversations_ids_and_labels_agree(tok, questions, answers, template, n_img, max_length):
    if template == "plain":
        questions = questions[:1]
    c = conv(*[v for q, a in zip(questions, answers) for v in (q, a.replace("<image>", ""))])
    images = sum(q.split().count("<image>") for q in questions)
    media = {"image": n_img}
    try:
        full = tokenize_conversation(
            c, tok, template, max_length=None, media_tokens=media, expected_media={"image": images}
        )
    except SampleError as err:  # only possible if an answer produced no token: never, answers are non-empty
        pytest.fail(f"unexpected {err}")
    check_consistent(full, tok)
    assert full.input_ids.count(tok.convert_tokens_to_ids("<image>")) == images * n_img
    assert len(label_runs(full.labels)) == len(questions)
    if max_length is None:
        return
    try:
        cut = tokenize_conversation(c, tok, template, max_length=max_length, media_tokens=media)
    except SampleError as err:
        assert err.reason == "too_long"
        return
    check_consistent(cut, tok)
    assert len(cut.input_ids) <= max_length and cut.truncated == (len(full.input_ids) > max_length)
    assert cut.input_ids == full.input_ids[: len(cut.input_ids)] and cut.labels == full.labels[: len(cut.labels)]
    assert cut.input_ids.count(tok.convert_tokens_to_ids("<image>")) == images * n_img
    assert any(lab != IGNORE_INDEX for lab in cut.labels)


def test_template_that_drops_placeholders_fails_loudly(tok):
    from llava_wb.data.conversation import ConversationTemplate, Segment

    class Dropper(ConversationTemplate):  # a buggy custom template, not registered
        name = "dropper"

        def segments(self, turns, add_generation_prompt):
            return [Segment("what"), Segment(turns[1].text, train=True)]

    with pytest.raises(RuntimeError, match="unused media"):
        Dropper(tok).tokenize(conv("<image> hi", "red"), max_length=None, media_tokens={"image": 2})
    out = Dropper(tok).tokenize(conv("hi", "red"), max_length=None, media_tokens={})
    assert out.labels == [IGNORE_INDEX, IGNORE_INDEX, tok.convert_tokens_to_ids("red")]
