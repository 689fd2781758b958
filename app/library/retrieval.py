"""Question -> the library's most relevant chunks, by BM25 over SQLite FTS5."""

from __future__ import annotations

import re

from app.library.store import Store, StoredChunk

DEFAULT_TOP_K = 3
_WORD = re.compile(r"\w+", re.UNICODE)
STOPWORDS = frozenset(
    "a an and are as at be by did do does for from had has have how i in is it its of on or that the their them "
    "there these they this to was were what when where which who whom whose why will with would you your".split()
)


def fts_query(question: str) -> str | None:
    """An OR of the question's content words, each quoted so FTS5 syntax in them is inert."""
    words = [w for w in _WORD.findall(question.lower()) if w not in STOPWORDS and len(w) > 1]
    if not words:
        words = [w for w in _WORD.findall(question.lower()) if len(w) > 1]
    if not words:
        return None
    return " OR ".join(f'"{w}"' for w in dict.fromkeys(words))


def retrieve(store: Store, question: str, k: int = DEFAULT_TOP_K) -> list[StoredChunk]:
    query = fts_query(question)
    if query is None or k < 1:
        return []
    return store.search(query, k)
