"""Encoder throughput as the indexer runs it, against the machine's measured GEMM peak.

    python -m benchmarks.encoder_rate --bundle B

Encodes distinct full-size chunks one after another (what indexing a folder does), and stores
them in a real library store to report bytes per memory and the time to load k of them back.
Prints one JSON object."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from app.library.store import Store
from benchmarks.answer import CHUNK_TOKENS, TOP_K, document_ids
from benchmarks.machine import matmul_peak_gflops
from inference import DolphinModel


def flops_per_token(model: DolphinModel) -> float:
    """Linear-layer FLOPs of the encoder stack per token (attention adds < 5% at 416 positions)."""
    stack = model.manifest.encoder
    hidden = stack.hidden_size
    ffn = {896: 4864, 1536: 8960, 3584: 18944}.get(hidden, hidden * 3)
    kv = stack.num_kv_heads * stack.head_size
    return stack.num_layers * 2 * (hidden * (2 * hidden + 2 * kv) + 3 * hidden * ffn)


def measure(bundle: Path, chunks: int) -> dict[str, float]:
    model = DolphinModel.load(bundle)
    ids = document_ids(model, CHUNK_TOKENS * (chunks + 1), seed=1)
    pieces = [ids[i * CHUNK_TOKENS : (i + 1) * CHUNK_TOKENS] for i in range(chunks + 1)]
    model.encoder.encode_ids(pieces[0])
    with tempfile.TemporaryDirectory() as data_dir:
        store = Store(Path(data_dir))
        started = time.perf_counter()
        for index, piece in enumerate(pieces[1:]):
            store.put_memory(f"c{index}", model.encoder_identity, model.encoder.encode_ids(piece), len(piece))
        elapsed = time.perf_counter() - started
        loads = []
        for _ in range(5):
            begun = time.perf_counter()
            for index in range(TOP_K):
                store.get_memory(f"c{index}", model.encoder_identity)
            loads.append(time.perf_counter() - begun)
        bytes_per_memory = store.memory_stats()["bytes_per_memory"]
        store.close()
    tokens = chunks * (CHUNK_TOKENS + model.manifest.memory_size)
    gflops = flops_per_token(model) * tokens / elapsed / 1e9
    peak = matmul_peak_gflops(model.threads)
    return {
        "chunks": chunks,
        "chunk_tokens": CHUNK_TOKENS,
        "tokens_per_s": tokens / elapsed,
        "chunks_per_s": chunks / elapsed,
        "gflops": gflops,
        "matmul_peak_gflops": peak,
        "fraction_of_peak": gflops / peak,
        "precision": model.manifest.encoder.precision,
        "bytes_per_memory": bytes_per_memory,
        "load_k_memories_ms": min(loads) * 1000,
        "k": TOP_K,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.encoder_rate")
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--chunks", type=int, default=6)
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.bundle, args.chunks)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
