"""The public-domain text the benchmarks read (six KJV books in benchmarks/data/kjv) and questions about it."""

from __future__ import annotations

from pathlib import Path

KJV = Path(__file__).resolve().parent / "data" / "kjv"
QUESTIONS = (
    "How long was Jonah inside the great fish?",
    "Whom did Ruth marry?",
    "What did Pharaoh dream about the cows?",
    "Why was Daniel thrown to the lions?",
    "What did Esther ask of the king?",
    "Who sold Joseph into Egypt?",
)
