"""One answer by one method, measured in a process of its own so its peak RSS is its own.

    python -m benchmarks.answer --bundle B --data-dir D --method d_persisted --tokens 2048

Prints one JSON object. The model is loaded and warmed up (a short prompt through the encoder
and the decoder, as the running app's would be) before the clock starts; the method is then
measured from "question asked" to the last of ANSWER_TOKENS greedy tokens.

  a_full       the decoder reads the whole document and the question
  b_rag        the decoder reads the top-k chunk texts and the question
  c_encode     the top-k chunks are encoded into memories at question time (the paper's setting)
  d_persisted  the same memories come from the library's SQLite store (ours)
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from app.library.store import Store
from benchmarks.energy import EnergyMeter
from inference import DolphinModel
from inference.splice import prompt_ids, splice

ANSWER_TOKENS = 64
TOP_K = 3
CHUNK_TOKENS = 384
QUESTION = " What does the document say about the harbour keeper?"
METHODS = ("a_full", "b_rag", "c_encode", "d_persisted")


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mb() -> float:
    """ru_maxrss is in KiB on Linux and in bytes on macOS (the benchmarks need `resource`: no Windows)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def document_ids(model: DolphinModel, n_tokens: int, seed: int = 0) -> list[int]:
    """Token ids of an N-token document: the bundle's own vocabulary in random order.

    The weights are random, so the text carries no meaning; the cost of reading it is real."""
    rng = np.random.default_rng(seed)
    vocab = model.tokenizer._tokenizer.get_vocab_size() - 40
    return rng.integers(10, vocab, size=n_tokens).tolist()


def chunks_of(ids: list[int]) -> list[list[int]]:
    return [ids[i : i + CHUNK_TOKENS] for i in range(0, len(ids), CHUNK_TOKENS)]


def memory_key(n_tokens: int, index: int) -> str:
    return f"n{n_tokens}-c{index}"


def decode(model: DolphinModel, embeds: np.ndarray, tokens: int) -> dict[str, float]:
    """Prefill `embeds`, then greedy-decode: the same loop for every method."""
    state = model.decoder.new_state()
    started = time.perf_counter()
    logits = model.decoder.forward(embeds, state)
    first = time.perf_counter()
    for _ in range(tokens - 1):
        token = int(np.argmax(logits))
        logits = model.decoder.forward(model.embeddings(np.asarray([token])), state)
    done = time.perf_counter()
    decode_s = done - first
    return {"prefill_s": first - started, "decode_s": decode_s, "decode_tokens_per_s": (tokens - 1) / decode_s}


def memory_prompt(model: DolphinModel, question: list[int], memories: list[np.ndarray]) -> np.ndarray:
    layout = prompt_ids(model.tokenizer, "", len(memories), model.manifest.memory_size)
    return splice(np.concatenate([layout, np.asarray(question, dtype=np.int64)]), model.embeddings, memories)


def preparer(
    model: DolphinModel, store: Store, method: str, n_tokens: int
) -> Callable[[], tuple[np.ndarray, dict[str, float]]]:
    """The work a method does between the question and the decoder's first step."""
    ids = document_ids(model, n_tokens)
    question = model.tokenizer.encode(QUESTION)
    top = chunks_of(ids)[:TOP_K]
    identity = model.encoder_identity

    def full() -> tuple[np.ndarray, dict[str, float]]:
        return model.embeddings(np.asarray(ids + question)), {}

    def rag() -> tuple[np.ndarray, dict[str, float]]:
        return model.embeddings(np.asarray([t for chunk in top for t in chunk] + question)), {}

    def encode_now() -> tuple[np.ndarray, dict[str, float]]:
        started = time.perf_counter()
        states = [model.encoder.encode_ids(chunk) for chunk in top]
        encode_s = time.perf_counter() - started
        return memory_prompt(model, question, model.encoder.project(states)), {"encode_s": encode_s}

    def persisted() -> tuple[np.ndarray, dict[str, float]]:
        started = time.perf_counter()
        states = [store.get_memory(memory_key(n_tokens, i), identity)[0] for i in range(len(top))]
        load_s = time.perf_counter() - started
        return memory_prompt(model, question, model.encoder.project(states)), {"load_memories_s": load_s}

    if method == "d_persisted":
        for index, chunk in enumerate(top):
            if store.get_memory(memory_key(n_tokens, index), identity) is None:
                store.put_memory(memory_key(n_tokens, index), identity, model.encoder.encode_ids(chunk), len(chunk))
    return {"a_full": full, "b_rag": rag, "c_encode": encode_now, "d_persisted": persisted}[method]


def warm_up(model: DolphinModel) -> None:
    """What a running app has already done: sessions initialised, arenas allocated once."""
    ids = document_ids(model, 64, seed=2)
    model.encoder.encode_ids(ids)
    decode(model, model.embeddings(np.asarray(ids)), 4)


def measure(bundle: Path, data_dir: Path, method: str, n_tokens: int, tokens: int = ANSWER_TOKENS) -> dict:
    model = DolphinModel.load(bundle)
    store = Store(data_dir)
    try:
        prepare = preparer(model, store, method, n_tokens)
        warm_up(model)
        rss_before = peak_rss_mb()
        energy = EnergyMeter()
        cpu0, wall0 = cpu_seconds(), time.perf_counter()
        embeds, extra = prepare()
        prepared = time.perf_counter()
        timing = decode(model, embeds, tokens)
        wall1, cpu1 = time.perf_counter(), cpu_seconds()
        joules = energy.joules()
    finally:
        store.close()
    return {
        "n_tokens": n_tokens,
        "method": method,
        "prompt_positions": int(embeds.shape[0]),
        "ttft_s": (prepared - wall0) + timing["prefill_s"],
        "prepare_s": prepared - wall0,
        "prefill_s": timing["prefill_s"],
        "total_s": wall1 - wall0,
        "decode_tokens_per_s": timing["decode_tokens_per_s"],
        "cpu_s": cpu1 - cpu0,
        "joules": joules,
        "peak_rss_mb": peak_rss_mb(),
        "answer_rss_mb": max(0.0, peak_rss_mb() - rss_before),
        "threads": model.threads,
        **extra,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.answer")
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--method", choices=METHODS, required=True)
    parser.add_argument("--tokens", type=int, required=True, help="document length N in tokens")
    parser.add_argument("--answer-tokens", type=int, default=ANSWER_TOKENS)
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.bundle, args.data_dir, args.method, args.tokens, args.answer_tokens)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
