"""Video and audio in the model: mixed batches, frame separators, the audio tower, save/load, budget."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny import TINY_LLAMA, TINY_VISION

from llava_wb.data.collate import Collator
from llava_wb.data.config import AudioConfig, DataConfig, ImageConfig, VideoConfig
from llava_wb.data.conversation import tokenize_conversation
from llava_wb.model import ModelConfig, build_model
from llava_wb.model.media import insert_separators, media_settings, time_slices
from llava_wb.model.reducers import build_reducer

TINY_WHISPER = dict(
    d_model=32,
    encoder_layers=1,
    encoder_attention_heads=2,
    encoder_ffn_dim=64,
    max_source_positions=50,
    num_mel_bins=80,
)


def av_model(tok: Any, reducer: dict | None = None, video: dict | None = None, audio: bool = True) -> Any:
    torch.manual_seed(0)
    cfg = {
        "vision": {"type": "clip", "config": dict(TINY_VISION)},
        "llm": {"config": dict(TINY_LLAMA)},
        "reducer": reducer or {"type": "local_merge", "options": {"ratio": 0.75, "window": [2, 2, 2]}},
        "video": video or {"frames": 4},
    }
    if audio:
        cfg["audio"] = {"config": dict(TINY_WHISPER), "tokens_per_second": 10}
    return build_model(ModelConfig.from_dict(cfg), tok)


@pytest.fixture(scope="module")
def tok() -> Any:
    from llava_wb.tokenizer import build_demo_tokenizer, demo_corpus

    return build_demo_tokenizer(
        demo_corpus(["What colour is it? Which way? High or low? What is two plus two? red hi"])
    )


@pytest.fixture(scope="module")
def model(tok: Any) -> Any:
    return av_model(tok)


def mixed_samples(tok: Any, model: Any) -> list[dict[str, Any]]:
    img, vid, aud = torch.randn(3, 32, 32), torch.randn(4, 3, 32, 32), torch.randn(80, 100)
    cases = [
        ("<image>\nWhat colour is it?", {"image": [img]}),
        ("<video>\nWhich way?", {"video": [vid]}),
        ("<audio>\nHigh or low?", {"audio": [aud]}),
        ("What is two plus two?", {}),
        ("<image> <video> <audio> and <audio>", {"image": [img], "video": [vid], "audio": [aud, aud * 0.5]}),
    ]
    out = []
    for question, media in cases:
        t = tokenize_conversation(
            [{"from": "human", "value": question}, {"from": "gpt", "value": "red"}],
            tok,
            "plain",
            max_length=512,
            media_tokens=model.media_tokens,
            expected_media={k: len(v) for k, v in media.items()},
        )
        out.append({"input_ids": t.input_ids, "labels": t.labels, "media": media})
    return out


def test_token_counts_are_derived_once(tok: Any, model: Any) -> None:
    # 4x4 patches per frame, 4 frames: local_merge keeps 1/4 -> 4 per image, 16 per clip + 2 time slices
    assert model.media_tokens == {"image": 4, "video": 16 + 2, "audio": 10}
    assert model.tokens_per_audio == model.audio_tower.tokens_per_clip == 1 * 10  # 50 frames = 1 s, 10 tokens/s
    identity = av_model(tok, reducer={"type": "identity"}, audio=False)
    assert identity.media_tokens == {"image": 16, "video": 4 * 16 + 4}


def test_mixed_modality_batch_forward_backward_counts_per_modality(tok: Any, model: Any) -> None:
    batch = Collator(tok.pad_token_id)(mixed_samples(tok, model))
    assert batch["image_counts"].tolist() == [1, 0, 0, 0, 1]
    assert batch["video_counts"].tolist() == [0, 1, 0, 0, 1]
    assert batch["audio_counts"].tolist() == [0, 0, 1, 0, 2]
    for kind, per_item in model.media_tokens.items():
        ids = (batch["input_ids"] == model.placeholder_id(kind)).sum(1)
        assert ids.tolist() == (batch[f"{kind}_counts"] * per_item).tolist(), kind
    model.train()
    model.zero_grad()
    out = model(**batch)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    for part in (model.frame_separator, model.audio_projector, model.audio_tower.model.layers, model.projector):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters()), part
    labels_at_media = out.loss  # placeholders never carry a label
    placeholder = torch.zeros_like(batch["input_ids"], dtype=torch.bool)
    for kind in model.media_tokens:
        placeholder |= batch["input_ids"] == model.placeholder_id(kind)
    _, labels, _ = model.embed_inputs(
        batch["input_ids"],
        batch["pixel_values"],
        batch["image_counts"],
        batch["labels"],
        None,
        batch["video_values"],
        batch["video_counts"],
        batch["audio_values"],
        batch["audio_counts"],
    )
    assert bool((labels[placeholder] == -100).all()) and labels_at_media is not None
    model.eval()


def test_placeholder_mismatch_names_the_modality(tok: Any, model: Any) -> None:
    batch = Collator(tok.pad_token_id)(mixed_samples(tok, model))
    with pytest.raises(ValueError, match=r"video-token positions but the batch has 1 videos"):
        model(**dict(batch, video_values=batch["video_values"][:1], video_counts=torch.tensor([0, 1, 0, 0, 0])))
    with pytest.raises(ValueError, match=r"sample 2: 10 audio-token positions but audio_counts\[2\]=2 x 10"):
        model(**dict(batch, audio_counts=torch.tensor([0, 0, 2, 0, 1])))
    with pytest.raises(ValueError, match=r"video_values must be \[N, 4, 3, S, S\]"):
        model(**dict(batch, video_values=batch["video_values"][:, :3]))


@pytest.mark.parametrize("variant", ["merge", "learned_resample"])
@pytest.mark.parametrize("present", ["", "<image>", "<video>", "<audio>"])
def test_every_trainable_part_gets_a_gradient_whatever_the_batch_holds(tok: Any, variant: str, present: str) -> None:
    """DDP (find_unused_parameters off) needs every trainable parameter used in every step: encoders
    and reducers a batch does not use run on a blank input with weight 0."""
    if variant == "merge":
        m = av_model(
            tok,
            reducer={"type": "local_merge", "options": {"ratio": 0.75, "window": [2, 2, 2], "size_embedding": True}},
        )
    else:  # learned scorers on images and, separately, on clips; captions carry no instruction
        learned = {"type": "instruct_resample", "options": {"ratio": 0.75, "mode": "learned"}}
        m = av_model(tok, reducer=learned, video={"frames": 4, "reducer": learned})
    m.train()
    media = {
        "<image>": {"image": [torch.randn(3, 32, 32)]},
        "<video>": {"video": [torch.randn(4, 3, 32, 32)]},
        "<audio>": {"audio": [torch.randn(80, 100)]},
        "": {},
    }[present]
    t = tokenize_conversation(
        [{"from": "human", "value": f"{present} hi"}, {"from": "gpt", "value": "red"}],
        tok,
        "plain",
        max_length=256,
        media_tokens=m.media_tokens,
        expected_media={k: len(v) for k, v in media.items()},
    )
    batch = Collator(tok.pad_token_id)(
        [{"input_ids": t.input_ids, "labels": t.labels, "instruction_mask": t.instruction_mask, "media": media}]
    )
    m(**batch).loss.backward()
    missing = [n for n, p in m.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []


def test_video_separators_follow_each_time_slice(tok: Any) -> None:
    m = av_model(tok, reducer={"type": "identity"}, audio=False).eval()
    vid = torch.randn(2, 4, 3, 32, 32)
    emb = m.encode_videos(vid)
    sep = m.frame_separator.weight[0]
    is_sep = (emb - sep).abs().amax(-1) < 1e-6
    assert emb.shape == (2, 4 * 16 + 4, 32)
    assert is_sep.nonzero()[:, 1].tolist() == [16, 33, 50, 67] * 2  # after each frame's 16 tokens
    # frames without separators, through the tower one by one, give the same tokens
    frames = torch.stack([m.projector(m.vision_tower(vid[:, t])) for t in range(4)], 1).flatten(1, 2)
    torch.testing.assert_close(emb[~is_sep].view(2, 64, 32), frames)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 3), m=st.integers(1, 12), slices=st.integers(1, 5), seed=st.integers(0, 10_000))
def test_insert_separators_groups_by_slice_and_keeps_order(n: int, m: int, slices: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    slice_of = torch.randint(0, slices, (n, m), generator=g).sort(1).values
    tokens = torch.arange(n * m, dtype=torch.float).view(n, m, 1).expand(n, m, 2).clone() + 1
    out = insert_separators(tokens, slice_of, slices, torch.full((2,), -1.0))
    assert out.shape == (n, m + slices, 2)
    for b in range(n):
        seq = out[b, :, 0].tolist()
        kept = [x for x in seq if x != -1]
        assert kept == tokens[b, :, 0].tolist()  # sorted input: order unchanged
        # separator k comes right after the last token of slice <= k
        seps = [i for i, x in enumerate(seq) if x == -1]
        for k, i in enumerate(seps):
            assert i - k == int((slice_of[b] <= k).sum())


def test_time_slices_follow_the_reducer_window() -> None:
    assert time_slices(8, build_reducer("identity")) == (1, 8)
    assert time_slices(8, build_reducer("avgpool", {"window": [2, 2, 2]})) == (2, 4)
    assert time_slices(7, build_reducer("local_merge", {"ratio": 0.5, "window": [4, 2, 2]})) == (4, 2)
    assert time_slices(1, build_reducer("avgpool", {"window": [2, 2, 2]})) == (1, 1)


def test_save_load_round_trip_with_audio_tower(tok: Any, model: Any, tmp_path: Any) -> None:
    from llava_wb.model.bundle import load_bundle, save_bundle

    save_bundle(model, tok, tmp_path / "m")
    loaded, _ = load_bundle(tmp_path / "m")
    batch = Collator(tok.pad_token_id)(mixed_samples(tok, model))
    model.eval()
    loaded.eval()
    assert loaded.media_tokens == model.media_tokens
    torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits)


def test_audio_tower_loads_a_local_whisper_checkpoint(tok: Any, tmp_path: Any) -> None:
    from transformers import WhisperConfig, WhisperModel

    from llava_wb.model.audio import build_audio_tower

    torch.manual_seed(1)
    whisper = WhisperModel(
        WhisperConfig(
            **TINY_WHISPER,
            decoder_layers=1,
            decoder_attention_heads=2,
            decoder_ffn_dim=64,
            vocab_size=128,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
            decoder_start_token_id=1,
        )
    ).eval()
    whisper.save_pretrained(tmp_path / "whisper")
    tower = build_audio_tower("whisper", path=str(tmp_path / "whisper"), tokens_per_second=50).eval()
    x = torch.randn(2, 80, 100)
    torch.testing.assert_close(tower(x), whisper.encoder(x).last_hidden_state)
    with pytest.raises(ValueError, match="must divide the encoder's 50 frames per second"):
        build_audio_tower("whisper", config=TINY_WHISPER, tokens_per_second=3)


def test_media_settings_come_from_the_model(model: Any) -> None:
    media = media_settings(model, DataConfig())
    assert media.video.num_frames == 4 and media.audio.seconds == 1.0
    assert media_settings(model, ImageConfig(size=32)).image.size == 32
    with pytest.raises(ValueError, match="data.video.num_frames=8 but the model reads 4 frames"):
        media_settings(model, DataConfig(video=VideoConfig(num_frames=8)))
    with pytest.raises(ValueError, match="data.audio.seconds=30.0 but the audio tower hears 1 s"):
        media_settings(model, DataConfig(audio=AudioConfig(seconds=30.0)))


def test_budget_counts_frames_separators_and_audio() -> None:
    from llava_wb.budget import CLIP_L14_336, VICUNA_7B, WHISPER_LARGE_ENCODER, estimate

    one = estimate("img", CLIP_L14_336, VICUNA_7B)
    clip = estimate("vid", CLIP_L14_336, VICUNA_7B, "avgpool", {"window": [2, 2, 2]}, frames=8, separators=True)
    assert clip.visual_tokens == 8 * 576 // 8 + 4
    assert clip.tower_flops_forward == pytest.approx(8 * one.tower_flops_forward)
    audio = estimate("aud", CLIP_L14_336, VICUNA_7B, images=0, audio_seconds=45, audio=WHISPER_LARGE_ENCODER)
    assert audio.audio_tokens == 2 * 30 * 25 and audio.visual_tokens == 0
