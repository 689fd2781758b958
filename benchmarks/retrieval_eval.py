"""Recall of retrieval on real FAQs (benchmarks/qa_sets.py): BM25, dense, and their fusion.

For each dev set the answers are indexed as files of their own (without their questions), each
question is asked, and a hit at k means the answer's file is among the files of the top k
chunks. The fusion's parameters are searched on the dev sets (and only there: the held-out
Python FAQ is `benchmarks/holdout.py`). The relevance threshold is set from the other set's
questions, which the library cannot answer: how many of those it rejects, against how many of
its own it wrongly rejects.

    python -m benchmarks.retrieval_eval --bundle B [--json benchmarks/results/retrieval.json]

B must carry an embedder (`dolphin-desk add-embedder B ...`); the Dolphin model's weights do not
matter here, its tokenizer does (chunk sizes): the committed results use a random-weight bundle
with Qwen2's real vocabulary, made as benchmarks/holdout.py says.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import tempfile
import time
from pathlib import Path

from app.library.library import Library
from app.library.retrieval import Fusion, RetrievalParams, Retriever
from benchmarks.qa_sets import QASet, build
from inference import DolphinModel

DEV_SETS = ("debian-faq", "tools-faq")
RRF_GRID = {"rrf_k": (1, 5, 10, 30, 60), "bm25_weight": (0.0, 0.25, 0.5, 0.75, 1.0)}
CONVEX_GRID = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)  # the dense side's share
THRESHOLDS = (0.0, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4)


def _recall(retriever: Retriever, qa: QASet, params: RetrievalParams | None, bm25_only: bool = False) -> dict:
    hits1 = hits3 = 0
    for question, document in qa.questions:
        if bm25_only:
            chunks = Retriever(retriever._store).search(question, 3).chunks
        else:
            chunks = retriever.search(question, 3, params).chunks
        files = [c.document_path.name for c in chunks]
        hits1 += bool(files[:1] and files[0] == document)
        hits3 += document in files
    n = len(qa.questions)
    return {"recall_at_1": round(hits1 / n, 3), "recall_at_3": round(hits3 / n, 3), "questions": n}


# A question that leans on the FAQ entry before it ("And are there other ways?", "Where do these
# come from?"): asked alone, nothing in it names its subject.
LEANS_ON_CONTEXT = re.compile(r"^(and|but|so|then)\b|\b(these|those|that|this|it|they|them|what did you)\b", re.I)


def _misses(retriever: Retriever, qa: QASet) -> dict:
    """What limits recall@3 with the default fusion: where the answer's file was, and why."""
    near = far = leaning = 0
    for question, document in qa.questions:
        files = [c.document_path.name for c in retriever.search(question, 10).chunks]
        if document in files[:3]:
            continue
        near += document in files
        far += document not in files
        leaning += bool(LEANS_ON_CONTEXT.search(question))
    return {
        "missed_at_3": near + far,
        "answer_at_rank_4_to_10": near,
        "answer_beyond_10": far,
        "question_leans_on_the_entry_before": leaning,
    }


def _fusion_key(params: RetrievalParams) -> str:
    if params.fusion is Fusion.RRF:
        return f"rrf_k={params.rrf_k} bm25_weight={params.bm25_weight}"
    return f"convex dense_share={params.dense_share}"


def evaluate(bundle: Path, work: Path, chunk_tokens: int) -> dict:
    model = DolphinModel.load(bundle)
    if model.embedder is None:
        raise SystemExit(f"{bundle} has no embedder: dolphin-desk add-embedder {bundle} EMBEDDER")
    sets = {name: build(name, work / "packages") for name in DEV_SETS}
    libraries = {}
    results: dict = {
        "embedder": model.embedder.identity,
        "bundle_vocabulary": model.tokenizer.vocab_size,
        "chunk_tokens": chunk_tokens,
        "sets": {},
    }
    for name, qa in sets.items():
        folder = qa.write(work / "corpora") / "docs"
        library = Library(work / f"data-{name}", model, chunk_tokens=chunk_tokens)
        library.add_folder(folder)
        library.start()
        library.index_until_done()
        libraries[name] = library
        retriever = library.answerer.retriever
        started = time.perf_counter()
        entry = {
            "documents": len(qa.documents),
            "chunks": sum(d.chunk_count for d in library.store.documents()),
            "bm25": _recall(retriever, qa, None, bm25_only=True),
            "dense": _recall(retriever, qa, RetrievalParams(dense_share=1.0, min_similarity=-1.0)),
            "grid": {},
        }
        for rrf_k, weight in itertools.product(RRF_GRID["rrf_k"], RRF_GRID["bm25_weight"]):
            params = RetrievalParams(fusion=Fusion.RRF, rrf_k=rrf_k, bm25_weight=weight, min_similarity=-1.0)
            entry["grid"][_fusion_key(params)] = _recall(retriever, qa, params)
        for share in CONVEX_GRID:
            params = RetrievalParams(fusion=Fusion.CONVEX, dense_share=share, min_similarity=-1.0)
            entry["grid"][_fusion_key(params)] = _recall(retriever, qa, params)
        entry["default_misses"] = _misses(retriever, qa)
        entry["seconds"] = round(time.perf_counter() - started, 1)
        results["sets"][name] = entry
    # The fusion that does best over both sets (mean of recall@3 and recall@1).
    keys = list(results["sets"][DEV_SETS[0]]["grid"])

    def score(key: str) -> float:
        return sum(
            results["sets"][s]["grid"][key]["recall_at_3"] + results["sets"][s]["grid"][key]["recall_at_1"]
            for s in DEV_SETS
        )

    results["best_fusion"] = max(keys, key=score)
    results["default_fusion"] = _fusion_key(RetrievalParams())
    # Threshold: own questions should pass, the other set's should be rejected.
    thresholds = {}
    for tau in THRESHOLDS:
        rejected_own = rejected_other = total_own = total_other = 0
        for name, library in libraries.items():
            other = sets[DEV_SETS[1] if name == DEV_SETS[0] else DEV_SETS[0]]
            params = RetrievalParams(min_similarity=tau)
            retriever = library.answerer.retriever
            for question, _ in sets[name].questions:
                rejected_own += not retriever.search(question, 3, params).chunks
                total_own += 1
            for question, _ in other.questions:
                rejected_other += not retriever.search(question, 3, params).chunks
                total_other += 1
        thresholds[str(tau)] = {
            "own_questions_rejected": round(rejected_own / total_own, 3),
            "unrelated_questions_rejected": round(rejected_other / total_other, 3),
        }
    results["thresholds"] = thresholds
    for library in libraries.values():
        library.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--chunk-tokens",
        type=int,
        default=384,
        help="chunk size in the bundle's tokens (384, the app's default, on a bundle with Qwen2's real vocabulary: "
        "see benchmarks/holdout.py; the tiny test tokenizer needs ~1024 for the same text)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dolphin-retrieval-") as work:
        results = evaluate(args.bundle, Path(work), args.chunk_tokens)
    summary = {
        name: {
            "bm25": entry["bm25"],
            "dense": entry["dense"],
            "best": entry["grid"][results["best_fusion"]],
            "default": entry["grid"][results["default_fusion"]],
            "default_misses": entry["default_misses"],
        }
        for name, entry in results["sets"].items()
    }
    print(json.dumps({"best_fusion": results["best_fusion"], **summary, "thresholds": results["thresholds"]}, indent=1))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
