"""Question (and the conversation so far) -> the library's memories -> a streamed answer with its sources."""

from __future__ import annotations

import enum
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from app.library.excerpts import matching_sentence
from app.library.retrieval import DEFAULT_TOP_K, Retrieved, Retriever
from app.library.store import Store, StoredChunk
from inference import AnswerStream, DolphinModel, Exchange, GenerationSettings, InputError, Memory


class AnswerOutcome(enum.Enum):
    ANSWERED = "answered"  # from the library's memories
    KEPT_SOURCES = "kept_sources"  # a follow-up that found nothing new: the previous answer's memories
    WITHOUT_SOURCES = "without_sources"  # the user asked for an answer without sources
    NOTHING_MATCHES = "nothing_matches"  # nothing generated: nothing in the library is relevant


NOTHING_MATCHES_MESSAGE = "Nothing in your library matches this question."


@dataclass(frozen=True)
class Source:
    path: Path
    page: int | None
    char_start: int
    char_end: int
    text: str
    score: float
    text_hash: str = ""  # the chunk's memory key: a follow-up can reuse the memory
    similarity: float | None = None
    excerpt: str = ""  # the sentence that answers the question (app/library/excerpts.py)
    folder: Path | None = None  # the library folder it is in: the UI shows the path relative to it

    def as_dict(self) -> dict[str, object]:
        return {
            "path": str(self.path),
            "page": self.page,
            "char_start": self.char_start,
            "char_end": self.char_end,
            "text": self.text,
            "score": self.score,
            "text_hash": self.text_hash,
            "similarity": self.similarity,
            "excerpt": self.excerpt,
            "folder": str(self.folder) if self.folder else None,
        }

    @classmethod
    def from_dict(cls, data: dict) -> Source:
        """A source as a saved chat holds it (older chats have no hash or similarity)."""
        return cls(
            Path(str(data.get("path", ""))),
            data.get("page"),
            int(data.get("char_start", 0)),
            int(data.get("char_end", 0)),
            str(data.get("text", "")),
            float(data.get("score", 0.0)),
            str(data.get("text_hash", "")),
            data.get("similarity"),
            str(data.get("excerpt", "")),
            Path(str(data["folder"])) if data.get("folder") else None,
        )


@dataclass(frozen=True)
class Turn:
    """An earlier question of the conversation, its answer and the sources it was given."""

    question: str
    answer: str
    sources: tuple[Source, ...] = ()


@dataclass
class LibraryAnswer:
    """An answer over the library: iterate for text; background encoding waits meanwhile.

    With `outcome` NOTHING_MATCHES there is no stream and iteration yields nothing: the caller
    says so and may ask again with `without_sources=True`.
    """

    stream: AnswerStream | None
    sources: list[Source]
    _gate: Callable[[], object]
    outcome: AnswerOutcome = AnswerOutcome.ANSWERED
    notes: list[str] = field(default_factory=list)
    best_similarity: float | None = None

    def __iter__(self) -> Iterator[str]:
        if self.stream is None:
            return
        with self._gate():  # type: ignore[attr-defined]
            yield from self.stream

    @property
    def text(self) -> str:
        return self.stream.text if self.stream is not None else ""

    def stats(self) -> dict[str, object]:
        """The answer's statistics, with how it was answered, as the chat stores them."""
        stats: dict[str, object] = dict(self.stream.stats.as_dict()) if self.stream is not None else {}
        stats["outcome"] = self.outcome.value
        stats["notes"] = list(self.notes)
        if self.best_similarity is not None:
            stats["best_similarity"] = round(self.best_similarity, 3)
        return stats

    def cancel(self) -> None:
        if self.stream is not None:
            self.stream.cancel()


class Answerer:
    """Reads the store through its own connection: answering never waits for the writer."""

    def __init__(self, store: Store, model: DolphinModel, gate: Callable[[], object]) -> None:
        self._store = store
        self._model = model
        self._gate = gate
        self.retriever = Retriever(store, model.embedder)

    def retrieve(self, question: str, k: int = DEFAULT_TOP_K, earlier: Sequence[str] = ()) -> list[StoredChunk]:
        return self.retriever.search(question, k, earlier=earlier).chunks

    def ask(
        self,
        question: str,
        k: int = DEFAULT_TOP_K,
        settings: GenerationSettings | None = None,
        history: Sequence[Turn] = (),
        without_sources: bool = False,
        folders: Sequence[Path] | None = None,
        conversation: Hashable | None = None,
    ) -> LibraryAnswer:
        """`folders`: search only these library folders (a chat's scope); None: the whole library.
        `conversation` (the chat's id) lets a follow-up continue from the kept KV cache of the
        chat's last answer (inference/answer_cache.py); None keeps nothing."""
        if not question.strip():
            raise InputError("the question is empty")
        exchanges = [Exchange(t.question, t.answer) for t in history if t.answer]
        if without_sources:
            stream = self._model.answer(question, [], settings, history=exchanges, conversation=conversation)
            return LibraryAnswer(stream, [], self._gate, AnswerOutcome.WITHOUT_SOURCES, list(stream.notes))
        found = self.retriever.search(question, k, earlier=[t.question for t in history], folders=folders)
        memories, sources, notes = self._memories(found, question)
        outcome = AnswerOutcome.ANSWERED
        previous = history[-1].sources if history else ()
        if previous and (found.bare_follow_up or (not found.chunks and not found.changed_subject)):
            kept, kept_sources = self._kept(previous)
            if kept:
                memories, sources, outcome = kept, kept_sources, AnswerOutcome.KEPT_SOURCES
                notes = ["a follow-up: answered from the previous answer's sources"]
        if not memories:
            reason = _nothing_reason(found, self.retriever.params.min_similarity)
            return LibraryAnswer(
                None, [], self._gate, AnswerOutcome.NOTHING_MATCHES, [*notes, reason], found.best_similarity
            )
        stream = self._model.answer(question, memories, settings, history=exchanges, conversation=conversation)
        return LibraryAnswer(stream, sources, self._gate, outcome, notes + stream.notes, found.best_similarity)

    def forget_conversation(self, conversation: Hashable) -> None:
        """The chat was deleted: nothing kept for it may outlive it."""
        self._model.forget_conversation(conversation)

    def _memories(self, found: Retrieved, question: str) -> tuple[list[Memory], list[Source], list[str]]:
        memories: list[Memory] = []
        sources: list[Source] = []
        notes: list[str] = []
        identity = self._model.encoder_identity
        folders = [f.path for f in self._store.folders()] if found.chunks else []
        embedder = getattr(self._model, "embedder", None)
        for chunk in found.chunks:
            stored = self._store.get_memory(chunk.text_hash, identity)
            if stored is None:
                notes.append(f"{chunk.document_path.name}: its memory is not ready yet")
                continue
            states, token_count = stored
            memories.append(Memory(states, token_count, identity))
            sources.append(
                Source(
                    chunk.document_path,
                    chunk.page,
                    chunk.char_start,
                    chunk.char_end,
                    chunk.text,
                    chunk.score,
                    chunk.text_hash,
                    chunk.similarity,
                    matching_sentence(question, chunk.text, embedder),
                    # The innermost library folder holding it (folders may nest).
                    max(
                        (f for f in folders if chunk.document_path.is_relative_to(f)),
                        key=lambda f: len(f.parts),
                        default=None,
                    ),
                )
            )
        return memories, sources, notes

    def _kept(self, earlier: Sequence[Source]) -> tuple[list[Memory], list[Source]]:
        memories: list[Memory] = []
        sources: list[Source] = []
        identity = self._model.encoder_identity
        for source in earlier:
            stored = self._store.get_memory(source.text_hash, identity) if source.text_hash else None
            if stored is not None:
                memories.append(Memory(stored[0], stored[1], identity))
                sources.append(source)
        return memories, sources


def _nothing_reason(found: Retrieved, threshold: float) -> str:
    if found.chunks:
        return "The passages that match have no memories yet: they are still being indexed."
    if found.best_similarity is not None:
        return (
            f"{NOTHING_MATCHES_MESSAGE} The closest passage has a similarity of {found.best_similarity:.2f}; "
            f"a match needs {threshold:.2f}."
        )
    return f"{NOTHING_MATCHES_MESSAGE} No passage shares a word with it."
