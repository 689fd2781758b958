"""Question -> the library's memories -> a streamed answer with its sources."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from app.library.retrieval import DEFAULT_TOP_K, retrieve
from app.library.store import Store, StoredChunk
from inference import AnswerStream, DolphinModel, GenerationSettings, InputError, Memory


@dataclass
class Source:
    path: Path
    page: int | None
    char_start: int
    char_end: int
    text: str
    score: float

    def as_dict(self) -> dict[str, object]:
        return {
            "path": str(self.path),
            "page": self.page,
            "char_start": self.char_start,
            "char_end": self.char_end,
            "text": self.text,
            "score": self.score,
        }


@dataclass
class LibraryAnswer:
    """An answer over the library: iterate for text; background encoding waits meanwhile."""

    stream: AnswerStream
    sources: list[Source]
    _gate: Callable[[], object]
    notes: list[str] = field(default_factory=list)

    def __iter__(self) -> Iterator[str]:
        with self._gate():  # type: ignore[attr-defined]
            yield from self.stream

    def cancel(self) -> None:
        self.stream.cancel()


class Answerer:
    """Reads the store through its own connection: answering never waits for the writer."""

    def __init__(self, store: Store, model: DolphinModel, gate: Callable[[], object]) -> None:
        self._store = store
        self._model = model
        self._gate = gate

    def retrieve(self, question: str, k: int = DEFAULT_TOP_K) -> list[StoredChunk]:
        return retrieve(self._store, question, k)

    def ask(self, question: str, k: int = DEFAULT_TOP_K, settings: GenerationSettings | None = None) -> LibraryAnswer:
        if not question.strip():
            raise InputError("the question is empty")
        chunks = self.retrieve(question, k)
        memories: list[Memory] = []
        sources: list[Source] = []
        notes: list[str] = []
        identity = self._model.encoder_identity
        for chunk in chunks:
            stored = self._store.get_memory(chunk.text_hash, identity)
            if stored is None:
                notes.append(f"{chunk.document_path.name}: its memory is not ready yet")
                continue
            states, token_count = stored
            memories.append(Memory(states, token_count, identity))
            sources.append(
                Source(chunk.document_path, chunk.page, chunk.char_start, chunk.char_end, chunk.text, chunk.score)
            )
        if not chunks:
            notes.append("no document in the library matches this question")
        stream = self._model.answer(question, memories, settings)
        return LibraryAnswer(stream, sources, self._gate, notes + stream.notes)
