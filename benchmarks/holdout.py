"""The held-out retrieval check: the Python 3.11 FAQ, asked through the command line a user runs.

Nothing was built or tuned on this set (benchmarks/retrieval_eval.py tunes on the dev sets).
Each FAQ answer is a file of its own, without its question; `dolphin-desk index` indexes the
folder and `dolphin-desk ask --json` asks every question with default settings (a fresh data
folder, so nothing saved overrides them). A hit at k: the answer's file is among the first k
`sources`. The check passes at recall@3 >= 0.92 and recall@1 >= 0.75.

    python -m benchmarks.holdout --bundle B [--json benchmarks/results/retrieval-holdout.json]

B is a bundle with an embedder; its decoder's answer does not matter here, only its sources, but
its tokenizer does: chunk sizes are counted in it. The tiny test tokenizer counts ~3x more
tokens than Qwen2's, so its default chunks hold a third of the text a real bundle's hold. The
check that counts is run on a random-weight bundle with Qwen2's real vocabulary:

    python -m onnx_export.random_checkpoint CKPT --vocabulary qwen2
    python -m onnx_export CKPT B --embedder MINILM_FOLDER
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tokenizers import Tokenizer

from benchmarks.qa_sets import build

TARGETS = {"recall_at_3": 0.92, "recall_at_1": 0.75}


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app", *args], capture_output=True, text=True, check=False, timeout=600
    )


def run(bundle: Path, work: Path, chunk_tokens: int | None, limit: int | None) -> dict:
    qa = build("python-faq", work / "packages")
    docs = qa.write(work / "corpus") / "docs"
    data = work / "data"
    extra = ["--chunk-tokens", str(chunk_tokens)] if chunk_tokens else []
    started = time.perf_counter()
    indexed = _cli("index", str(docs), "--bundle", str(bundle), "--data-dir", str(data), *extra)
    if indexed.returncode != 0:
        raise SystemExit(f"dolphin-desk index failed:\n{indexed.stderr}")
    index_s = time.perf_counter() - started
    hits = {1: 0, 3: 0}
    nothing = 0
    misses: list[dict] = []
    questions = qa.questions[:limit] if limit else qa.questions
    started = time.perf_counter()
    for question, document in questions:
        asked = _cli("ask", "--bundle", str(bundle), "--data-dir", str(data), "--question", question, "--json",
                     "--max-new-tokens", "1")  # fmt: skip
        if asked.returncode != 0:
            raise SystemExit(f"dolphin-desk ask failed on {question!r}:\n{asked.stderr}")
        answer = json.loads(asked.stdout)
        files = [Path(s["path"]).name for s in answer["sources"]]
        nothing += answer["outcome"] == "nothing_matches"
        hits[1] += files[:1] == [document]
        hits[3] += document in files[:3]
        if document not in files[:3]:
            misses.append({"question": question, "expected": document, "got": files})
    n = len(questions)
    result = {
        "set": "python-faq (Python 3.11 FAQ, python3.11-doc; held out)",
        "bundle_embedder": json.loads((bundle / "manifest.json").read_text())["embedder"]["source"],
        "bundle_vocabulary": Tokenizer.from_file(str(bundle / "tokenizer.json")).get_vocab_size(),
        "chunk_tokens": chunk_tokens or "default",
        "documents": len(qa.documents),
        "questions": n,
        "recall_at_1": round(hits[1] / n, 3),
        "recall_at_3": round(hits[3] / n, 3),
        "nothing_matches": nothing,
        "targets": TARGETS,
        "index_s": round(index_s, 1),
        "ask_s_per_question": round((time.perf_counter() - started) / n, 2),
        "misses": misses,
    }
    result["passed"] = all(result[key] >= target for key, target in TARGETS.items())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--chunk-tokens", type=int, help="default: the app's default setting")
    parser.add_argument("--limit", type=int, help="ask only the first N questions (a quick look)")
    parser.add_argument("--json", type=Path, help="the figures (no question texts: this file may be committed)")
    parser.add_argument("--misses", type=Path, help="the questions missed, for a look (never commit it)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dolphin-holdout-") as work:
        result = run(args.bundle, Path(work), args.chunk_tokens, args.limit)
    figures = {k: v for k, v in result.items() if k != "misses"}
    print(json.dumps(figures, indent=1))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1, ensure_ascii=False) + "\n")
    if args.misses:
        args.misses.write_text(json.dumps(result["misses"], indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
