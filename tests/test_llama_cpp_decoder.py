"""The llama.cpp decoder backend (benchmarks/llama_cpp_decoder.py) on a tiny random Qwen2 GGUF.

Skipped where llama-cpp-python is not installed: it compiles llama.cpp from source and is a
benchmark-only dependency (benchmarks/README.md). What it checks is what the answer loop and the
answer cache rely on: embedding rows fed through `llama_batch.embd` give the logits llama.cpp
gives for the token ids themselves, and copies and prefixes of a state never change each other.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

llama_cpp = pytest.importorskip("llama_cpp")
gguf = pytest.importorskip("gguf")

from benchmarks.llama_cpp_compare import write_f16  # noqa: E402
from benchmarks.llama_cpp_decoder import LlamaCppDecoder  # noqa: E402

TINY = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 320,
    "rope_theta": 1000000.0,
}


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gguf") / "tiny-f16.gguf"
    write_f16(path, TINY)
    return path


@pytest.fixture(scope="module")
def table(tiny_gguf: Path) -> np.ndarray:
    reader = gguf.GGUFReader(str(tiny_gguf))
    embd = next(t for t in reader.tensors if t.name == "token_embd.weight")
    return np.asarray(embd.data, dtype=np.float32).reshape(TINY["vocab_size"], TINY["hidden_size"])


@pytest.fixture(scope="module")
def decoder(tiny_gguf: Path) -> LlamaCppDecoder:
    decoder = LlamaCppDecoder(tiny_gguf, threads=1, positions=256, sequences=8, batch=16)
    yield decoder
    decoder.close()


IDS = [5, 17, 260, 3, 99, 42, 7, 300, 11, 64, 128, 1, 2, 250, 33, 90, 18, 77, 21, 8]


def token_logits(path: Path, ids: list[int]) -> np.ndarray:
    """llama.cpp's own logits for token ids (its embedding lookup), last position."""
    llm = llama_cpp.Llama(str(path), n_ctx=64, n_threads=1, n_batch=64, flash_attn=True, verbose=False)
    llm.eval(ids)
    return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), (TINY["vocab_size"],)).copy()


def test_embedding_rows_give_the_token_ids_logits(decoder: LlamaCppDecoder, table: np.ndarray, tiny_gguf: Path) -> None:
    expected = token_logits(tiny_gguf, IDS)
    one_batch = LlamaCppDecoder(tiny_gguf, threads=1, positions=64, sequences=1, batch=64)
    try:
        np.testing.assert_allclose(one_batch.forward(table[IDS], one_batch.new_state()), expected, atol=1e-6)
    finally:
        one_batch.close()
    state = decoder.new_state()
    logits = decoder.forward(table[IDS], state)  # two batches, 16 rows and 4: other kernels, other rounding
    assert state.length == len(IDS)
    np.testing.assert_allclose(logits, expected, atol=1e-3)
    assert int(np.argmax(logits)) == int(np.argmax(expected))
    np.testing.assert_allclose(decoder.forward_ids(np.asarray(IDS), decoder.new_state()), logits, atol=1e-6)


def test_copies_and_prefixes_do_not_disturb_each_other(decoder: LlamaCppDecoder, table: np.ndarray) -> None:
    whole = decoder.new_state()
    expected = decoder.forward(table[IDS], whole)
    kept = decoder.new_state()
    decoder.forward(table[IDS[:12]], kept)
    copy = kept.copy()
    decoder.forward(table[[200, 201, 202]], copy)  # runs on the copy: `kept` must not see it
    assert (kept.length, copy.length) == (12, 15)
    np.testing.assert_allclose(decoder.forward(table[IDS[12:]], kept.copy()), expected, atol=1e-5)
    prefix = decoder.prefix(kept, 8)
    np.testing.assert_allclose(decoder.forward(table[IDS[8:]], prefix), expected, atol=1e-5)
    assert kept.length == 12
    np.testing.assert_allclose(decoder.forward(table[IDS[12:]], kept), expected, atol=1e-5)


def test_states_hand_back_their_sequences(decoder: LlamaCppDecoder, table: np.ndarray) -> None:
    for _ in range(3 * 8):  # more states than the context has sequences, one after another
        state = decoder.new_state()
        decoder.forward(table[IDS[:4]], state)
        del state
    assert decoder.new_state().nbytes == 0
