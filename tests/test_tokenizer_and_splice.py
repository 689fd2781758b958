"""The bundle's tokenizer and the splice layout, against the reference's own ids."""

from __future__ import annotations

import numpy as np
from tokenizers import Tokenizer

from inference.splice import memory_starts, prompt_ids, splice
from inference.tokenizer import DolphinTokenizer, StreamingDetokenizer
from tests.conftest import CHECKPOINT


def test_bundle_tokenizer_gives_the_reference_ids(fp32_bundle, reference) -> None:
    """Probes were tokenized by the checkpoint's Hugging Face tokenizer under transformers 4.44."""
    ours = DolphinTokenizer(fp32_bundle / "tokenizer.json")
    checkpoint = Tokenizer.from_file(str(CHECKPOINT / "tokenizer.json"))
    for probe in reference["tokenizer_probes"]:
        assert ours.encode(probe["text"]) == probe["ids"], probe["text"]
        assert checkpoint.encode(probe["text"], add_special_tokens=False).ids == probe["ids"]
    for case in reference["cases"][:3]:
        memory_ids = [ours.token_to_id(f"[memory_{i}]") for i in range(32)]
        assert ours.encode(case["contexts"][0]) + memory_ids == case["context_ids"]


def test_memory_tokens_are_single_ids(fp32_model) -> None:
    tokenizer = fp32_model.tokenizer
    ids = [tokenizer.encode(f"[memory_{i}]") for i in range(32)]
    assert all(len(i) == 1 for i in ids)
    assert [i[0] for i in ids] == fp32_model.manifest.memory_token_ids
    assert len(set(fp32_model.manifest.memory_token_ids)) == 32


def test_prompt_ids_match_the_reference_layout(fp32_model, reference) -> None:
    for name in ("case0", "case1", "two_markers"):
        case = reference["by_name"][name]
        ids = prompt_ids(fp32_model.tokenizer, case["question"], len(case["contexts"]), 32)
        assert ids.tolist() == case["decoder_ids"]


def test_splice_reproduces_the_off_by_one() -> None:
    """Memory lands on positions 0..31 (over the leading space); position 32 keeps token 0."""
    ids = np.array([220] + [-1] * 32 + [5, 6], dtype=np.int64)
    table = np.arange(300 * 4, dtype=np.float32).reshape(300, 4)
    memory = np.full((32, 4), -7.0, dtype=np.float32)
    embeds = splice(ids, lambda rows: table[rows].copy(), [memory])
    assert memory_starts(ids).tolist() == [0]
    assert (embeds[:32] == -7.0).all()
    np.testing.assert_array_equal(embeds[32], table[0])
    np.testing.assert_array_equal(embeds[33:], table[[5, 6]])


def test_two_runs_take_their_own_memories() -> None:
    ids = np.array([9] + [-1] * 32 + [9] + [-1] * 32 + [5], dtype=np.int64)
    table = np.zeros((10, 2), dtype=np.float32)
    embeds = splice(ids, lambda rows: table[rows].copy(), [np.full((32, 2), 1.0), np.full((32, 2), 2.0)])
    assert memory_starts(ids).tolist() == [0, 33]
    assert (embeds[0:32] == 1).all() and (embeds[33:65] == 2).all()
    assert (embeds[32] == 0).all() and (embeds[65] == 0).all()


def test_reserved_strings_are_removed_from_user_text(fp32_model) -> None:
    clean = fp32_model.tokenizer.clean("a<|endoftext|>b [memory_3] c <context>d")
    assert clean.text == "ab  c d"
    assert sorted(clean.removed) == ["<context>", "<|endoftext|>", "[memory_3]"]
    assert "removed 3 reserved" in (clean.note("context") or "")


def test_streaming_detokenizer_never_splits_a_character(fp32_model) -> None:
    tokenizer = fp32_model.tokenizer
    text = "naïve 🐬 café"
    stream = StreamingDetokenizer(tokenizer)
    pieces = [stream.push(token) for token in tokenizer.encode(text)]
    assert "".join(pieces) == text
    assert all("\ufffd" not in piece for piece in pieces)
