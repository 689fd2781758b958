"""Question -> the library's most relevant chunks: BM25 (SQLite FTS5) and a dense embedder, fused.

The decoder answers only from the memories it is handed, so this decides what an answer can be.
Two rankings are made for a question: BM25 over the chunk texts, and cosine similarity between
the question's embedding and every chunk's (the bundle's sentence embedder; vectors stored per
chunk text). They are fused by a convex combination of their min-max normalised scores
(`RetrievalParams`, chosen on the dev sets in benchmarks/results/retrieval.json, where it beat
weighted reciprocal-rank fusion on both sets: rank fusion throws away how far ahead the best
passage is). Without an embedder in the bundle, BM25 alone.

The dense side is plain numpy over a matrix kept in memory and refreshed only when the library
changed: 20,000 chunks x 384 dimensions is 30 MB and one matrix-vector product (a few ms), exact,
with no native extension to ship on three platforms (`sqlite-vec` would be one; at desktop scale
it buys nothing).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path

import numpy as np

from app.library.store import Store, StoredChunk

DEFAULT_TOP_K = 3
FOLLOW_UP_QUESTIONS = 3  # earlier questions of a conversation that a follow-up's search borrows from
# How far a follow-up may pull the conversation's best cosine down and still be about its subject.
FOLLOW_UP_DRIFT = 0.1
_WORD = re.compile(r"\w+", re.UNICODE)
STOPWORDS = frozenset(
    "a an and are as at be by did do does for from had has have how i in is it its of on or that the their them "
    "there these they this to was were what when where which who whom whose why will with would you your".split()
)


class Fusion(Enum):
    """How the BM25 and dense rankings become one."""

    # score = dense_share * cosine' + (1 - dense_share) * bm25', each min-max normalised over the
    # candidates of both rankings (a candidate BM25 did not match scores its minimum).
    CONVEX = "convex"
    # Weighted reciprocal rank: bm25_weight / (rrf_k + rank) + dense_weight / (rrf_k + rank).
    RRF = "rrf"


@dataclass(frozen=True)
class RetrievalParams:
    """How the two rankings are fused (tuned on the dev sets; see benchmarks/retrieval_eval.py)."""

    candidates: int = 50  # chunks taken from each ranking before fusing
    fusion: Fusion = Fusion.CONVEX
    # CONVEX: the dense side's share. 0.75-0.85 were all at least as good as the best rank fusion
    # on both dev sets; 0.8 is the middle of that plateau.
    dense_share: float = 0.8
    # RRF only.
    rrf_k: int = 5  # reciprocal-rank constant: smaller trusts the top of each ranking more
    bm25_weight: float = 0.5
    dense_weight: float = 1.0
    # Below this cosine similarity of the best chunk, nothing in the library answers the question.
    min_similarity: float = 0.25


@dataclass(frozen=True)
class Scope:
    """The library folders a search may draw from, and (for the dense side) their chunks."""

    folder_ids: list[int]
    chunk_ids: np.ndarray | None


@dataclass
class Retrieved:
    chunks: list[StoredChunk]
    best_similarity: float | None  # None without an embedder
    method: str  # "hybrid" or "bm25"
    # A follow-up that turned away from the conversation's subject: the earlier sources do not apply.
    changed_subject: bool = False
    # A follow-up that finds nothing alone but keeps to the subject ("tell me more"): the previous
    # answer's sources are what it is about.
    bare_follow_up: bool = False

    @property
    def relevant(self) -> bool:
        return bool(self.chunks)


def fts_query(question: str) -> str | None:
    """An OR of the question's content words, each quoted so FTS5 syntax in them is inert."""
    words = [w for w in _WORD.findall(question.lower()) if w not in STOPWORDS and len(w) > 1]
    if not words:
        words = [w for w in _WORD.findall(question.lower()) if len(w) > 1]
    if not words:
        return None
    return " OR ".join(f'"{w}"' for w in dict.fromkeys(words))


class DenseIndex:
    """Every chunk's embedding as one matrix, refreshed when the database changed."""

    def __init__(self, store: Store, embedder_identity: str) -> None:
        self._store = store
        self._identity = embedder_identity
        self._ids = np.zeros(0, dtype=np.int64)
        self._rows: dict[int, int] = {}  # chunk id -> its row of the matrix
        self._matrix: np.ndarray | None = None
        self._version: int | None = None
        self._lock = threading.Lock()

    def _refresh(self) -> None:
        version = self._store.data_version()
        if version == self._version and self._matrix is not None:
            return
        # Incremental: drop chunks that are gone, add those newer than the newest known. An
        # embedding that arrived for an older chunk (the background backfill) shows as a
        # count that does not add up, and the matrix is read again whole.
        current = np.asarray(self._store.chunk_ids(), dtype=np.int64)
        keep = np.isin(self._ids, current)
        ids = self._ids[keep]
        rows = [self._matrix[keep]] if self._matrix is not None and keep.any() else []
        fresh = self._store.chunk_embeddings(self._identity, after_id=int(ids.max()) if len(ids) else 0)
        if fresh:
            ids = np.concatenate([ids, np.asarray([i for i, _ in fresh], dtype=np.int64)])
            rows.append(_matrix(fresh))
        if len(ids) != self._store.embedded_chunk_count(self._identity):
            every = self._store.chunk_embeddings(self._identity)
            ids, rows = np.asarray([i for i, _ in every], dtype=np.int64), [_matrix(every)] if every else []
        self._ids = ids
        self._rows = {int(chunk_id): row for row, chunk_id in enumerate(ids.tolist())}
        self._matrix = np.vstack(rows) if rows else None
        self._version = version

    def warm_up(self) -> None:
        """Read the matrix now (a third of a second at 20,000 chunks) rather than at the first question."""
        with self._lock:
            self._refresh()

    def search(self, vector: np.ndarray, limit: int, allowed: np.ndarray | None = None) -> list[tuple[int, float]]:
        """(chunk id, cosine) of the `limit` nearest chunks; `allowed`: only these chunk ids."""
        return self.rank(vector, limit, allowed).top

    def rank(
        self, vector: np.ndarray, limit: int, allowed: np.ndarray | None = None, also: Sequence[int] = ()
    ) -> DenseRanking:
        """The `limit` nearest chunks, and the cosines of the chunks in `also` (the other ranking's)."""
        with self._lock:
            self._refresh()
            if self._matrix is None or not len(self._ids):
                return DenseRanking([], {})
            similarities = self._matrix @ vector
            if allowed is not None:
                similarities = np.where(np.isin(self._ids, allowed), similarities, -np.inf)
                limit = min(limit, int(np.isfinite(similarities).sum()))
            top = np.argsort(-similarities)[:limit] if len(similarities) > limit else np.argsort(-similarities)
            rows = [*top.tolist(), *(self._rows[i] for i in also if i in self._rows)]
            cosine = {int(self._ids[r]): float(similarities[r]) for r in rows if np.isfinite(similarities[r])}
            return DenseRanking([(int(self._ids[i]), float(similarities[i])) for i in top], cosine)


@dataclass(frozen=True)
class DenseRanking:
    top: list[tuple[int, float]]  # (chunk id, cosine), nearest first
    cosine: dict[int, float]  # the cosines of the top chunks and of those asked for (within the scope)


def _reciprocal_rank(
    keyword: list[StoredChunk], dense: list[tuple[int, float]], cosine: dict[int, float], params: RetrievalParams
) -> dict[int, float]:
    fused: dict[int, float] = {}
    for rank, chunk in enumerate(keyword):
        fused[chunk.id] = fused.get(chunk.id, 0.0) + params.bm25_weight / (params.rrf_k + rank + 1)
    for rank, (chunk_id, _) in enumerate(dense):
        fused[chunk_id] = fused.get(chunk_id, 0.0) + params.dense_weight / (params.rrf_k + rank + 1)
    return fused


def _convex(
    keyword: list[StoredChunk], dense: list[tuple[int, float]], cosine: dict[int, float], params: RetrievalParams
) -> dict[int, float]:
    """Normalised scores, mixed: unlike ranks, they keep how far ahead of the rest a passage is."""
    bm25 = {c.id: c.score for c in keyword}
    candidates = list(dict.fromkeys([*(i for i, _ in dense), *bm25]))
    if not candidates:
        return {}
    # A chunk BM25 found whose embedding is not there yet (the background backfill) has no cosine:
    # it scores the dense side's minimum, and its BM25 share alone.
    cosines = np.asarray([cosine[i] for i in candidates if i in cosine] or [0.0])
    dense_low, dense_span = float(cosines.min()), float(np.ptp(cosines))
    scores = np.asarray(list(bm25.values())) if bm25 else np.zeros(1)
    bm25_low, bm25_span = float(scores.min()), float(np.ptp(scores))
    if bm25_span == 0.0:  # one match (or equal ones): it counts fully, and the rest not at all
        bm25_low, bm25_span = 0.0, max(float(scores.max()), 1e-9)
    share = params.dense_share
    return {
        i: share * ((cosine[i] - dense_low) / max(dense_span, 1e-9) if i in cosine else 0.0)
        + (1.0 - share) * ((bm25[i] - bm25_low) / bm25_span if i in bm25 else 0.0)
        for i in candidates
    }


def _matrix(pairs: list[tuple[int, bytes]]) -> np.ndarray:
    return np.frombuffer(b"".join(v for _, v in pairs), dtype=np.float32).reshape(len(pairs), -1)


def _distinct_texts(chunks: list[StoredChunk], k: int) -> list[StoredChunk]:
    """The first `k` chunks with different texts: the same text in two files (a copy, a backup)
    is one memory, and fills one slot, not two."""
    seen: set[str] = set()
    out = []
    for chunk in chunks:
        if chunk.text_hash not in seen:
            seen.add(chunk.text_hash)
            out.append(chunk)
    return out[:k]


class Retriever:
    def __init__(self, store: Store, embedder: object | None = None, params: RetrievalParams | None = None) -> None:
        self._store = store
        self._embedder = embedder
        self.params = params or RetrievalParams()
        self._dense = DenseIndex(store, embedder.identity) if embedder is not None else None  # type: ignore[attr-defined]

    @property
    def method(self) -> str:
        return "hybrid" if self._dense is not None else "bm25"

    def warm_up(self) -> None:
        if self._dense is not None:
            self._dense.warm_up()

    def search(
        self,
        query: str,
        k: int = DEFAULT_TOP_K,
        params: RetrievalParams | None = None,
        earlier: Sequence[str] = (),
        folders: Sequence[Path] | None = None,
    ) -> Retrieved:
        """The k chunks that best answer `query`; `earlier` are the conversation's earlier questions.

        A follow-up ("and on Windows?", "how tall is it?") names little by itself, so it is also
        searched with the earlier questions before it. Of the two searches, the one whose best
        passage is closer wins: a bare follow-up borrows its subject from the conversation, one
        that changes the subject ("who designed the Eiffel Tower?") is closer alone. Without an
        embedder there is no such measure, and the conversation's words always join the query.

        `folders` limits the search to those library folders (a chat's scope); None: all of them.
        """
        params = params or self.params
        if k < 1:
            return Retrieved([], None, self.method)
        scope = self._scope(folders)
        if not earlier:
            return self._search_one(query, k, params, scope)
        recent = list(earlier[-FOLLOW_UP_QUESTIONS:])
        conversation = self._search_one(" ".join([*recent, query]), k, params, scope)
        if self._dense is None:
            return conversation
        alone = self._search_one(query, k, params, scope)
        if (alone.best_similarity or -1.0) > (conversation.best_similarity or -1.0):
            return replace(alone, changed_subject=True)
        # A question about something else ("how do I renew my passport?") pulls the conversation's
        # query away from the passages its earlier questions found; a bare follow-up ("tell me
        # more", "who designed it?") barely moves it. Only the latter borrows the conversation.
        subject = self._best_similarity(" ".join(recent), scope)
        if subject is not None and (conversation.best_similarity or -1.0) < subject - FOLLOW_UP_DRIFT:
            return replace(alone, changed_subject=True)
        bare = alone.best_similarity is None or alone.best_similarity < params.min_similarity
        return replace(conversation, bare_follow_up=bare)

    def _scope(self, folders: Sequence[Path] | None) -> Scope | None:
        if folders is None:
            return None
        wanted = {Path(f) for f in folders}
        ids = [f.id for f in self._store.folders() if f.path in wanted]
        chunks = np.asarray(self._store.chunk_ids_in_folders(ids), dtype=np.int64) if self._dense is not None else None
        return Scope(ids, chunks)

    def _best_similarity(self, text: str, scope: Scope | None = None) -> float | None:
        vector = self._embedder.embed([text], "query")[0]  # type: ignore[union-attr]
        allowed = scope.chunk_ids if scope is not None else None
        best = self._dense.search(vector, 1, allowed) if self._dense is not None else []
        return best[0][1] if best else None

    def _search_one(self, query: str, k: int, params: RetrievalParams, scope: Scope | None = None) -> Retrieved:
        fts = fts_query(query)
        folder_ids = scope.folder_ids if scope is not None else None
        keyword = self._store.search(fts, params.candidates, folder_ids) if fts else []
        if self._dense is None:
            return Retrieved(_distinct_texts(keyword, k), None, "bm25")
        vector = self._embedder.embed([query], "query")[0]  # type: ignore[union-attr]
        allowed = scope.chunk_ids if scope is not None else None
        ranking = self._dense.rank(vector, params.candidates, allowed, [c.id for c in keyword])
        dense = ranking.top
        best_similarity = dense[0][1] if dense else None
        # A passage BM25 matched whose embedding the background backfill has not made yet cannot be
        # judged by its cosine: while there is one, the question is not turned away.
        unjudged = any(c.id not in ranking.cosine for c in keyword)
        if (best_similarity is None or best_similarity < params.min_similarity) and not unjudged:
            return Retrieved([], best_similarity, "hybrid")
        fuse = _convex if params.fusion is Fusion.CONVEX else _reciprocal_rank
        fused = fuse(keyword, dense, ranking.cosine, params)
        similarity = {i: ranking.cosine[i] for i in fused if i in ranking.cosine}
        ranked = sorted(fused, key=fused.__getitem__, reverse=True)[: k * 3]
        by_id = {c.id: c for c in keyword}
        by_id.update(self._store.chunks_by_id([i for i in ranked if i not in by_id]))
        found = [replace(by_id[i], score=fused[i], similarity=similarity.get(i)) for i in ranked if i in by_id]
        return Retrieved(_distinct_texts(found, k), best_similarity, "hybrid")
