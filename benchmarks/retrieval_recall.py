"""Recall@k of the library's retrieval on a QA set over real public-domain text.

Indexes benchmarks/data/kjv with the given bundle (chunking uses its tokenizer), asks every
question of benchmarks/data/kjv_qa.json, and counts a hit when a retrieved chunk contains the
verse that answers it.

    python -m benchmarks.retrieval_recall --bundle B [--chunk-tokens 384] [--out results/retrieval.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from app.library.library import Library
from inference import DolphinModel

DATA = Path(__file__).resolve().parent / "data"
KS = (1, 2, 3, 4, 5)


def measure(bundle: Path, chunk_tokens: int) -> dict[str, object]:
    model = DolphinModel.load(bundle)
    questions = json.loads((DATA / "kjv_qa.json").read_text(encoding="utf-8"))["questions"]
    with tempfile.TemporaryDirectory() as data_dir:
        library = Library(Path(data_dir), model, chunk_tokens=chunk_tokens)
        try:
            library.add_folder(DATA / "kjv")
            library.start()
            library.index_until_done()
            chunk_count = sum(d.chunk_count for d in library.store.documents())
            hits = dict.fromkeys(KS, 0)
            document_hits = dict.fromkeys(KS, 0)
            misses = []
            for item in questions:
                chunks = library.retrieve(item["question"], k=max(KS))
                found = [item["verse"] + " " in c.text for c in chunks]
                documents = [c.document_path.name == item["document"] for c in chunks]
                for k in KS:
                    hits[k] += any(found[:k])
                    document_hits[k] += any(documents[:k])
                if not any(found[:3]):
                    misses.append(item["question"])
        finally:
            library.stop()
    words = sum(len((DATA / "kjv" / d).read_text().split()) for d in {q["document"] for q in questions})
    return {
        "questions": len(questions),
        "documents": len({q["document"] for q in questions}),
        "words": words,
        "chunks": chunk_count,
        "chunk_tokens": chunk_tokens,
        "recall_at_k": {str(k): round(hits[k] / len(questions), 3) for k in KS},
        "document_recall_at_k": {str(k): round(document_hits[k] / len(questions), 3) for k in KS},
        "missed_at_3": misses,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--chunk-tokens", type=int, default=384)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    result = measure(args.bundle, args.chunk_tokens)
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
