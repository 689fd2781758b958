"""What hybrid retrieval costs: search latency over 20,000 chunks, and the embedder's share of indexing.

    python -m benchmarks.retrieval_speed --bundle B [--chunks 20000] [--json OUT]

B is a bundle with an embedder and the real encoder shape (benchmarks/__main__.py builds the
Qwen2-0.5B-shaped one from random weights; `dolphin-desk add-embedder B all-MiniLM-L6-v2`):
the Dolphin encoder's cost depends on its shape, not its weights, and the embedder is real.

* Search: a real library store holds `--chunks` chunks of real public-domain text (the KJV books
  in benchmarks/data, cut into windows of ~1,500 characters, about 384 Qwen2 tokens) with
  unit-length vectors of the embedder's width. The vectors are random: a matrix-vector product
  takes the same time whatever the numbers are, and embedding 20,000 chunks for real would only
  lengthen the run. Each question is timed end to end as the answerer calls it (embed the
  question, BM25 over FTS5, the dense product, fusion, reading the chunks); the first search,
  which reads the matrix from the database, is reported apart.
* Indexing: per chunk of 384 tokens, the Dolphin encoder's time and the embedder's time on the
  same machine in the same run; the embedder's share is what indexing slows down by.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from app.library.retrieval import Retriever
from app.library.states import DocumentState
from app.library.store import ChunkRecord, Store
from benchmarks.answer import CHUNK_TOKENS, document_ids
from benchmarks.kjv import KJV, QUESTIONS
from inference import DolphinModel

CHUNK_CHARS = 1500  # about 384 Qwen2 tokens of English


def text_windows(count: int) -> list[str]:
    """`count` distinct windows of real text: each pass starts 97 characters later, and once the
    start offsets come round again the windows get 7 characters shorter, so none repeats."""
    books = [p.read_text(encoding="utf-8") for p in sorted(KJV.glob("*.txt"))]
    windows: list[str] = []
    passes = 0
    while len(windows) < count:
        shift = passes * 97 % CHUNK_CHARS
        length = CHUNK_CHARS - passes * 97 // CHUNK_CHARS * 7
        for book in books:
            for start in range(shift, len(book) - length, length):
                windows.append(book[start : start + length])
        passes += 1
    return windows[:count]


def fill_store(store: Store, texts: list[str], embedder_identity: str, dim: int) -> None:
    rng = np.random.default_rng(0)
    folder = store.add_folder(Path("/library"))
    per_document = 20
    for first in range(0, len(texts), per_document):
        path = Path(f"/library/doc-{first // per_document:05}.txt")
        store.upsert_pending(folder.id, path, 0)
        chunks = [
            ChunkRecord(i, text, 0, len(text), None, CHUNK_TOKENS, hashlib.sha256(text.encode()).hexdigest())
            for i, text in enumerate(texts[first : first + per_document])
        ]
        store.replace_chunks(path, chunks, 1, 0.0, path.name, DocumentState.READY)
        vectors = rng.standard_normal((len(chunks), dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        store.put_embeddings(embedder_identity, {c.text_hash: v for c, v in zip(chunks, vectors, strict=True)})


def search_latency(model: DolphinModel, chunks: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as data_dir:
        store = Store(Path(data_dir))
        started = time.perf_counter()
        fill_store(store, text_windows(chunks), model.embedder.identity, model.embedder.dim)
        fill_s = time.perf_counter() - started
        retriever = Retriever(store, model.embedder)
        begun = time.perf_counter()
        retriever.search(QUESTIONS[0], 3)
        first_ms = (time.perf_counter() - begun) * 1000
        timings, embed_ms = [], []
        for _ in range(5):
            for question in QUESTIONS:
                begun = time.perf_counter()
                model.embedder.embed([question], "query")
                embed_ms.append((time.perf_counter() - begun) * 1000)
                begun = time.perf_counter()
                found = retriever.search(question, 3)
                timings.append((time.perf_counter() - begun) * 1000)
                assert len(found.chunks) == 3 or found.best_similarity is not None
        store.close()
    timings.sort()
    return {
        "chunks": chunks,
        "fill_s": round(fill_s, 1),
        "first_search_ms": round(first_ms, 1),
        "searches": len(timings),
        "p50_ms": round(statistics.median(timings), 2),
        "p95_ms": round(timings[int(len(timings) * 0.95) - 1], 2),
        "max_ms": round(timings[-1], 2),
        "query_embedding_p50_ms": round(statistics.median(embed_ms), 2),
    }


def indexing_share(model: DolphinModel, chunks: int = 6, rounds: int = 3) -> dict[str, object]:
    """Encoder and embedder time per 384-token chunk, as the indexer runs them, in interleaved
    rounds (encode `chunks` chunks, then embed ten times as many texts); the share is taken from
    each side's median round. The first round of embedding ran ~1.5x slower than the next ones
    for the int8 and the fp32 embedder alike, so one round would measure its warm-up."""
    ids = document_ids(model, CHUNK_TOKENS * (chunks + 1), seed=1)
    pieces = [ids[i * CHUNK_TOKENS : (i + 1) * CHUNK_TOKENS] for i in range(chunks + 1)]
    texts = text_windows(chunks * 10)
    model.encoder.encode_ids(pieces[0])
    model.embedder.embed(texts[:2])
    encoder_ms, embedder_ms = [], []
    for _ in range(rounds):
        started = time.perf_counter()
        for piece in pieces[1:]:
            model.encoder.encode_ids(piece)
        encoder_ms.append((time.perf_counter() - started) / chunks * 1000)
        started = time.perf_counter()
        for text in texts:
            model.embedder.embed([text])  # one at a time: the slowest way the indexer can call it
        embedder_ms.append((time.perf_counter() - started) / len(texts) * 1000)
    encoder, embedder = statistics.median(encoder_ms), statistics.median(embedder_ms)
    return {
        "encoder": f"{model.manifest.encoder.hidden_size}-wide, {model.manifest.encoder.num_layers} layers, "
        f"{model.manifest.encoder.precision}",
        "embedder_precision": "int8" if _is_int8(model) else "fp32",
        "encoder_ms_per_chunk": round(encoder, 1),
        "embedder_ms_per_chunk": round(embedder, 2),
        "embedder_share_of_indexing": round(embedder / (encoder + embedder), 4),
        "rounds": {"encoder_ms": [round(v, 1) for v in encoder_ms], "embedder_ms": [round(v, 2) for v in embedder_ms]},
    }


def _is_int8(model: DolphinModel) -> bool:
    import onnx

    graph = onnx.load(str(model.manifest.root / model.manifest.embedder.file), load_external_data=False).graph
    return any(node.op_type == "MatMulInteger" for node in graph.node)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.retrieval_speed")
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--chunks", type=int, default=20000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    model = DolphinModel.load(args.bundle)
    if model.embedder is None:
        raise SystemExit(f"{args.bundle} has no embedder: dolphin-desk add-embedder {args.bundle} EMBEDDER")
    result = {
        "embedder": model.embedder.info.source,
        "threads": model.threads,
        "search": search_latency(model, args.chunks),
        "indexing": indexing_share(model),
    }
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
