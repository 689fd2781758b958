"""`dolphin-desk cluster-index` on this machine: chunks/s with 1 and 2 encoder actors, each
actor's peak RSS, and the time to import a pack of 10,000 chunks.

    python -m benchmarks.cluster_index --bundle B [--chunks 60] [--import-chunks 10000] [--json OUT]

B is a bundle of the real encoder shape (the Qwen2-0.5B-shaped int4 bundle the other benchmarks
build with `python -m onnx_export.random_checkpoint ... --encoder qwen2-0.5b` and the converter;
random weights cost what trained ones cost). The corpus is the KJV text in benchmarks/data, cut
into files of a few chunks each, indexed by the real Ray Data pipeline on a local Ray instance
of 2 CPUs: once with one actor of 2 ONNX Runtime threads, once with two actors of one thread.
Steady-state rates leave out the actors' start (loading the encoder), which the job's overall
rate includes.

The import is timed on a pack written by the pack writer with memories of the real size (32 x 896
fp16, random values) and real chunk texts, so it measures what import does (checksums, SQLite
merge, local-copy checks) at the real byte volume without hours of encoding first.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from app.library.chunking import text_hash
from app.library.pack import PackChunk, PackDocument, PackMemory, PackState, PackWriter
from app.library.pack_import import LocalSetup, import_into_store
from app.library.store import Store
from benchmarks.machine import describe
from inference.bundle import load_manifest

RESULTS = Path(__file__).resolve().parent / "results"
KJV = Path(__file__).resolve().parent / "data" / "kjv"


def make_corpus(folder: Path, files: int, chars: int = 1500) -> int:
    """`files` files of about `chars` characters of KJV text each (three or four 384-token chunks
    of the bundle's tokenizer), cut at verse boundaries; returns the file count."""
    verses = [v for book in sorted(KJV.glob("*.txt")) for v in book.read_text(encoding="utf-8").splitlines() if v]
    folder.mkdir(parents=True, exist_ok=True)
    written, current = 0, []
    for verse in verses:
        current.append(verse)
        if sum(len(v) + 1 for v in current) >= chars:
            (folder / f"part-{written:04d}.txt").write_text("\n".join(current) + "\n", encoding="utf-8")
            written, current = written + 1, []
            if written == files:
                break
    return written


def run_actors(bundle: Path, corpus: Path, out: Path, workers: int) -> dict[str, object]:
    from app.cluster.job import ClusterOptions, run_job

    stamps: list[tuple[float, int]] = []
    options = ClusterOptions([corpus], bundle, out, workers=workers, cpus_per_worker=2 / workers, ocr=False)
    started = time.perf_counter()
    report = run_job(options, lambda p: stamps.append((time.perf_counter(), p.chunks_encoded)))
    # Steady state: from the first document written (every actor has loaded its encoder and is
    # encoding) to the last.
    (t0, c0), (t1, c1) = stamps[0], stamps[-1]
    return {
        "workers": workers,
        "threads_per_worker": report.threads_per_worker,
        "chunks_encoded": report.encoded,
        "documents": report.documents_written,
        "job_seconds": round(time.perf_counter() - started, 1),
        "chunks_per_s_overall": round(report.chunks_per_second, 3),
        "chunks_per_s_steady": round((c1 - c0) / (t1 - t0), 3) if t1 > t0 else None,
        "actor_peak_rss_mb": {pid: round(mb) for pid, mb in report.actor_peak_rss_mb.items()},
    }


def make_pack(bundle: Path, out: Path, chunks: int, per_document: int = 10) -> Path:
    """A pack of `chunks` chunks with memories of the real size, through the pack writer."""
    from app.cluster.job import ClusterOptions, _header

    header = _header(ClusterOptions([], bundle, out, ocr=False))
    writer = PackWriter(out, header)
    root = writer.root_index(Path("/srv/team-share"))
    text = " ".join((KJV / "genesis-37-45.txt").read_text(encoding="utf-8").split())
    rng = np.random.default_rng(0)
    rows, cols = header.encoder.rows, header.encoder.cols
    dim = header.embedder.dim if header.embedder else 0
    for document in range(chunks // per_document):
        parts = []
        memories = {}
        embeddings = {}
        for ordinal in range(per_document):
            start = (document * per_document + ordinal) * 7 % max(1, len(text) - 2000)
            body = f"[{document}.{ordinal}] {text[start : start + 1800]}"
            digest = text_hash(body)
            parts.append(PackChunk(ordinal, body, 0, len(body), None, 384, digest))
            memories[digest] = PackMemory(
                rng.standard_normal((rows, cols)).astype(np.float16).tobytes(), rows, cols, 384
            )
            if dim:
                embeddings[digest] = rng.standard_normal(dim).astype(np.float32).tobytes()
        writer.add(
            PackDocument(root, Path(f"doc-{document:05d}.txt"), PackState.READY, 9000, 1.7e9, f"{document:064x}",
                         chunks=tuple(parts)),
            memories,
            embeddings,
        )  # fmt: skip
    writer.close()
    return out


def time_import(bundle: Path, pack: Path, data_dir: Path, chunk_tokens: int = 384) -> dict[str, object]:
    setup = LocalSetup.of(load_manifest(bundle), chunk_tokens)
    store = Store(data_dir)
    try:
        started = time.perf_counter()
        report = import_into_store(store, pack, setup)
        first = time.perf_counter() - started
        started = time.perf_counter()
        again = import_into_store(store, pack, setup)
        second = time.perf_counter() - started
    finally:
        store.close()
    size = sum(p.stat().st_size for p in pack.rglob("*") if p.is_file())
    return {
        "chunks": report.chunks,
        "documents": report.documents,
        "shards": report.shards,
        "pack_mb": round(size / 1e6),
        "seconds": round(first, 2),
        "chunks_per_s": round(report.chunks / first),
        "reimport_seconds": round(second, 2),
        "reimport_memories_added": again.memories_added,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--import-chunks", type=int, default=10_000)
    parser.add_argument("--files", type=int, default=12, help="corpus files to encode (three or four chunks each)")
    parser.add_argument("--json", type=Path, default=RESULTS / "cluster-index.json")
    args = parser.parse_args()
    import ray

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        corpus = work / "corpus"
        make_corpus(corpus, args.files)
        load_before = os.getloadavg()
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            runs = [run_actors(args.bundle, corpus, work / f"pack-{n}", n) for n in (1, 2)]
        finally:
            ray.shutdown()
        pack = make_pack(args.bundle, work / "import.pack", args.import_chunks)
        imported = time_import(args.bundle, pack, work / "library")
        result = {
            "benchmark": "cluster_index",
            "command": " ".join(["python -m benchmarks.cluster_index", *sys.argv[1:]]),
            "machine": describe(),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "bundle": {
                "encoder": load_manifest(args.bundle).encoder_identity,
                "encoder_shape": "Qwen2-0.5B (24 layers, 896 wide), int4, random weights",
            },
            "encode": runs,
            "import": imported,
        }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
