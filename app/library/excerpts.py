"""The sentence of a cited passage that answers the question, for the source line under an answer.

A chunk is ~400 tokens; its first 140 characters rarely say why it was cited. The question's
embedding against each sentence's (the bundle's embedder, the same one retrieval uses) finds
the sentence a dense match rests on, which may share no word with the question; without an
embedder, the sentence that shares the most of the question's content words.
"""

from __future__ import annotations

import re
from typing import Protocol

import numpy as np

from app.library.retrieval import STOPWORDS

MAX_CHARS = 240
_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+|\n\s*\n|\n(?=\s*[-*•\d])")
_WORD = re.compile(r"\w+", re.UNICODE)


class SentenceEmbedder(Protocol):
    def embed(self, texts: list[str], kind: str = "document") -> np.ndarray: ...


MIN_WORDS = 4  # shorter pieces are headings and labels ("Chapter 1"), not what a passage says


def sentences(text: str) -> list[str]:
    parts = [" ".join(p.split()) for p in _SENTENCE_END.split(text)]
    parts = [p for p in parts if len(p) > 1]
    full = [p for p in parts if len(p.split()) >= MIN_WORDS]
    return full or parts


def matching_sentence(question: str, text: str, embedder: SentenceEmbedder | None = None) -> str:
    candidates = sentences(text)
    if not candidates:
        return ""
    if len(candidates) == 1:
        best = candidates[0]
    elif embedder is not None:
        query = embedder.embed([question], "query")[0]
        best = candidates[int(np.argmax(embedder.embed(candidates) @ query))]
    else:
        wanted = {w for w in _WORD.findall(question.lower()) if w not in STOPWORDS}
        overlap = [len(wanted & set(_WORD.findall(s.lower()))) for s in candidates]
        best = candidates[max(range(len(candidates)), key=lambda i: (overlap[i], -i))]
    return best if len(best) <= MAX_CHARS else best[: MAX_CHARS - 1].rstrip() + "…"
