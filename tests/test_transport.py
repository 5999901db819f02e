"""A worker's batch travels with its tensors in one shared block (``llava_wb.data.transport``): every
key, dtype, shape and value comes back exactly, in order, and the training loader's batches from worker
processes equal the in-process ones while their tensors share one storage."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llava_wb.data.config import DataConfig
from llava_wb.data.transport import BLOCK, pack, unpack

DTYPES = [torch.int64, torch.int32, torch.uint8, torch.bool, torch.float32, torch.bfloat16, torch.float16]
shapes = st.lists(st.integers(0, 5), min_size=0, max_size=4).map(tuple)
entries = st.one_of(
    st.tuples(st.sampled_from(DTYPES), shapes, st.booleans()),  # a tensor (and whether to pass a strided view)
    st.sampled_from([None, 3, "text", ["a", "b"], {"k": 1}]),  # anything else stays as it is
)


def make(spec, seed: int):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for i, entry in enumerate(spec):
        if isinstance(entry, tuple):
            dtype, shape, strided = entry
            t = (torch.rand(shape, generator=g) * 200).to(dtype)
            if strided and t.dim() >= 2:
                t = t.transpose(0, 1).contiguous().transpose(0, 1)
            out[f"k{i}"] = t
        else:
            out[f"k{i}"] = entry
    return out


@settings(max_examples=150, deadline=None)
@given(spec=st.lists(entries, min_size=0, max_size=7), seed=st.integers(0, 2**16))
def test_unpack_gives_back_every_entry_exactly_and_in_order(spec, seed):
    batch = make(spec, seed)
    tensors = [k for k, v in batch.items() if isinstance(v, torch.Tensor)]
    packed = pack(batch)
    assert (BLOCK in packed) == (len(tensors) >= 2)
    assert not any(isinstance(v, torch.Tensor) for k, v in packed.items() if k != BLOCK) or len(tensors) < 2
    back = unpack(packed)
    assert list(back) == list(batch)
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            assert back[k].dtype == v.dtype and back[k].shape == v.shape and torch.equal(back[k], v), k
        else:
            assert back[k] == v
    if len(tensors) >= 2:  # views of one block
        assert len({back[k].untyped_storage().data_ptr() for k in tensors}) == 1


def test_worker_batches_equal_in_process_ones_and_arrive_in_one_block(tmp_path):
    from shardkit import write_shards

    from llava_wb.data.loader import build_train_loader
    from llava_wb.tokenizer import build_demo_tokenizer, demo_corpus

    write_shards(str(tmp_path), [6, 6])
    tok = build_demo_tokenizer(demo_corpus(["question answer " * 10]))

    def batches(workers: int, packing: dict | None) -> list[dict]:
        cfg = DataConfig.from_dict(
            {
                "sources": [str(tmp_path)],
                "batch_size": 3,
                "num_workers": workers,
                "epoch_mode": "exact",
                "shuffle_shards": False,
                "shuffle_buffer": 0,
                "image": {"size": 16, "pixels": "uint8"},
                "packing": packing,
                "max_length": 96,
            }
        )
        return list(build_train_loader(cfg, tok, media_tokens={"image": 4}))

    for packing in (None, {"max_tokens": 96}):
        here, there = batches(0, packing), batches(1, packing)
        assert [b["id"] for b in there] == [b["id"] for b in here] and sum(len(b["id"]) for b in here) == 12
        for h, t in zip(here, there, strict=True):
            assert list(t) == list(h)
            tensors = [k for k, v in h.items() if isinstance(v, torch.Tensor)]
            assert len(tensors) >= 4
            for k in tensors:
                assert t[k].dtype == h[k].dtype and torch.equal(t[k], h[k]), k
            assert len({t[k].untyped_storage().data_ptr() for k in tensors}) == 1


def test_a_batch_with_the_block_key_of_its_own_is_refused():
    with pytest.raises(ValueError, match="_tensor_block"):
        pack({BLOCK: 1, "a": torch.zeros(2), "b": torch.ones(3)})
