"""Tests for llava_wb.data.collate.Collator: padding sides, masks, media concatenation, metadata."""

from __future__ import annotations

import pytest
import torch

from llava_wb.data.collate import Collator

PAD = 0


def sample(ids, labels=None, images=(), **meta):
    return {
        "input_ids": torch.tensor(ids),
        "labels": torch.tensor(labels if labels is not None else ids),
        "media": {"image": list(images)},
        **meta,
    }


def img(value: float, size: int = 4) -> torch.Tensor:
    return torch.full((3, size, size), value)


def test_right_padding():
    batch = Collator(PAD)([sample([5, 6, 7], [-100, 6, 7], id="a"), sample([8], id="b")])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["input_ids"].dtype == batch["labels"].dtype == batch["attention_mask"].dtype == torch.long
    assert batch["id"] == ["a", "b"] and "media" not in batch


def test_left_padding_and_multiple_of():
    batch = Collator(PAD, padding_side="left", pad_to_multiple_of=4, label_pad=-1)([sample([5, 6, 7]), sample([8])])
    assert batch["input_ids"].tolist() == [[0, 5, 6, 7], [0, 0, 0, 8]]
    assert batch["labels"].tolist() == [[-1, 5, 6, 7], [-1, -1, -1, 8]]
    assert batch["attention_mask"].tolist() == [[0, 1, 1, 1], [0, 0, 0, 1]]
    with pytest.raises(ValueError, match="padding_side"):
        Collator(PAD, padding_side="middle")


def test_lists_are_accepted():
    batch = Collator(9)([{"input_ids": [1, 2], "labels": [-100, 2]}, {"input_ids": [3], "labels": [3]}])
    assert batch["input_ids"].tolist() == [[1, 2], [3, 9]]
    assert batch["pixel_values"] is None and batch["image_counts"].tolist() == [0, 0]


def test_images_concatenated_in_sample_order_mixed_batch():
    samples = [
        sample([1, 2], images=[img(1), img(2)], id="two", modal_list=["image", "image"]),
        sample([3], id="text", modal_list=["text"]),
        {"input_ids": [4], "labels": [4], "id": "no-media-key"},
        sample([5, 6, 7], images=[img(3)], id="one", modal_list=["image"]),
    ]
    batch = Collator(PAD)(samples)
    assert batch["pixel_values"].shape == (3, 3, 4, 4)
    assert batch["pixel_values"][:, 0, 0, 0].tolist() == [1.0, 2.0, 3.0]
    assert batch["image_counts"].tolist() == [2, 0, 0, 1] and batch["image_counts"].dtype == torch.long
    assert batch["modal_list"] == [["image", "image"], ["text"], None, ["image"]]
    assert batch["id"] == ["two", "text", "no-media-key", "one"]
    assert "video_values" not in batch and "audio_counts" not in batch


def test_image_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match=r"\(3, 4, 4\) in sample 0 \(id 'a'\), \(3, 8, 8\) in sample 1 \(id 'b'\)"):
        Collator(PAD)([sample([1], images=[img(1)], id="a"), sample([2], images=[img(2, size=8)], id="b")])


def test_other_modalities_and_stacked_media():
    samples = [
        {
            "input_ids": [1],
            "labels": [1],
            "media": {"image": torch.zeros(2, 3, 4, 4), "video": [torch.ones(5, 3, 4, 4)]},
        },
        {"input_ids": [2], "labels": [2], "media": {"video": []}},
    ]
    batch = Collator(PAD)(samples)
    assert batch["pixel_values"].shape == (2, 3, 4, 4) and batch["image_counts"].tolist() == [2, 0]
    assert batch["video_values"].shape == (1, 5, 3, 4, 4) and batch["video_counts"].tolist() == [1, 0]


def test_bad_samples():
    with pytest.raises(ValueError, match="2 input_ids vs 1 labels"):
        Collator(PAD)([{"input_ids": [1, 2], "labels": [1], "id": "x"}])
    with pytest.raises(ValueError, match="empty batch"):
        Collator(PAD)([])
    with pytest.raises(ValueError, match="attention_mask"):
        Collator(PAD)([{"input_ids": [1], "labels": [1], "attention_mask": [1]}])


def test_with_tokenized_conversations():
    from llava_wb.data.conversation import tokenize_conversation
    from llava_wb.tokenizer import build_demo_tokenizer, demo_corpus

    tok = build_demo_tokenizer(demo_corpus(["what colour is it red blue"]))
    convs = [
        [{"from": "human", "value": "<image> what colour is it?"}, {"from": "gpt", "value": "red"}],
        [{"from": "human", "value": "what colour is blue?"}, {"from": "gpt", "value": "blue"}],
    ]
    outs = [tokenize_conversation(c, tok, "vicuna_v1", max_length=None, media_tokens={"image": 4}) for c in convs]
    samples = [
        {"input_ids": o.input_ids, "labels": o.labels, "media": {"image": [img(0)] * o.num_media.get("image", 0)}}
        for o in outs
    ]
    batch = Collator(tok.pad_token_id, padding_side="left")(samples)
    image_id = tok.convert_tokens_to_ids("<image>")
    assert (batch["input_ids"] == image_id).sum(dim=1).tolist() == [4 * n for n in batch["image_counts"].tolist()]
    assert batch["attention_mask"].sum(dim=1).tolist() == [len(o.input_ids) for o in outs]
