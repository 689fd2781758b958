"""The one object the app holds: a loaded bundle that encodes contexts and answers questions."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from inference.bundle import BundleError, Manifest, load_manifest
from inference.conversation import Exchange, question_text
from inference.decoder import Decoder
from inference.embedder import TextEmbedder
from inference.embeddings import EmbeddingTable
from inference.encoder import Memory, MemoryEncoder
from inference.errors import InputError
from inference.providers import choose_provider, create_session, default_threads
from inference.sampling import GenerationSettings, ReservedTokens, TokenSampler
from inference.splice import prompt_ids, splice
from inference.tokenizer import CONTEXT_MARKER, DolphinTokenizer, StreamingDetokenizer


@dataclass
class AnswerStats:
    memory_count: int = 0
    prompt_positions: int = 0
    text_tokens_replaced: int = 0
    new_tokens: int = 0
    first_token_s: float = 0.0
    total_s: float = 0.0
    decode_tokens_per_s: float = 0.0
    stop_reason: str = ""

    def as_dict(self) -> dict[str, float | int | str]:
        return dict(self.__dict__)


@dataclass
class AnswerStream:
    """Iterate for text pieces as they are generated; `cancel()` stops it from any thread.

    After iteration, `token_ids`, `text` and `stats` describe the whole answer.
    """

    _model: DolphinModel
    question: str
    memories: list[np.ndarray]
    settings: GenerationSettings
    text_tokens_replaced: int
    record_logits: bool = False
    notes: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    logits: list[np.ndarray] = field(default_factory=list)
    stats: AnswerStats = field(default_factory=AnswerStats)
    _cancelled: threading.Event = field(default_factory=threading.Event)
    _text: str = ""

    def cancel(self) -> None:
        self._cancelled.set()

    @property
    def text(self) -> str:
        return self._text

    def __iter__(self) -> Iterator[str]:
        model, stats = self._model, self.stats
        started = time.perf_counter()
        ids = prompt_ids(model.tokenizer, self.question, len(self.memories), model.manifest.memory_size)
        embeds = splice(ids, model.embeddings, self.memories)
        stats.memory_count = len(self.memories)
        stats.prompt_positions = len(ids)
        stats.text_tokens_replaced = self.text_tokens_replaced
        state = model.decoder.new_state()
        sampler = TokenSampler(self.settings, model.reserved)
        detokenizer = StreamingDetokenizer(model.tokenizer)
        eos = model.manifest.eos_token_id
        room = model.max_positions - len(ids)
        limit = min(self.settings.max_new_tokens, room)
        first_token_at = started
        logits = model.decoder.forward(embeds, state)
        stats.stop_reason = "max_tokens" if limit == self.settings.max_new_tokens else "context_full"
        while True:
            if self._cancelled.is_set():
                stats.stop_reason = "cancelled"
                break
            if self.record_logits:
                self.logits.append(logits)
            token = sampler(logits, self.token_ids)
            if not self.token_ids:
                first_token_at = time.perf_counter()
                stats.first_token_s = first_token_at - started
            if token == eos:
                stats.stop_reason = "eos"
                break
            self.token_ids.append(token)
            piece = detokenizer.push(token)
            if piece:
                self._text += piece
                yield piece
            if len(self.token_ids) >= limit:
                break
            logits = model.decoder.forward(model.embeddings(np.asarray([token])), state)
        tail = detokenizer.text[len(self._text) :]
        if tail:
            self._text += tail
            yield tail
        finished = time.perf_counter()
        stats.new_tokens = len(self.token_ids)
        stats.total_s = finished - started
        if stats.new_tokens > 1 and finished > first_token_at:
            stats.decode_tokens_per_s = (stats.new_tokens - 1) / (finished - first_token_at)

    def run(self) -> str:
        """Generate to the end without streaming; returns the answer text."""
        for _ in self:
            pass
        return self._text


class DolphinModel:
    """A bundle loaded once: `encode(text)` makes memories, `answer(...)` streams replies.

    Encoding and answering may run on different threads, but each session is used by one call
    at a time; the app serialises them (answering takes priority over background encoding).
    """

    def __init__(self, manifest: Manifest, provider: str = "auto", threads: int | None = None) -> None:
        self.manifest = manifest
        self.provider = choose_provider(provider, manifest.provider)
        self.threads = threads or default_threads()
        self.tokenizer = DolphinTokenizer(manifest.path("tokenizer"))
        self.embeddings = EmbeddingTable(manifest.path("embeddings"), manifest.embeddings_dtype)
        self.encoder = MemoryEncoder(
            manifest,
            create_session(str(manifest.path("encoder")), self.provider, self.threads),
            create_session(str(manifest.path("projector")), "cpu", self.threads),
        )
        self.decoder = Decoder(
            create_session(str(manifest.path("decoder")), self.provider, self.threads),
            self.provider,
            manifest.decoder.head_size,
        )
        self.max_positions = manifest.max_positions
        self.embedder = (
            TextEmbedder(
                manifest.root,
                manifest.embedder,
                create_session(str(manifest.root / manifest.embedder.file), "cpu", self.threads),
            )
            if manifest.embedder is not None
            else None
        )
        self.reserved = self._reserved_tokens()
        self._lock = threading.Lock()
        if self.embeddings.shape[1] != manifest.decoder.hidden_size:
            raise BundleError("embeddings.npy does not match the decoder's width: convert the model again")

    def _reserved_tokens(self) -> ReservedTokens:
        """Every added token except the end-of-answer one, and `<context>` as the text tokenizes."""
        eos = self.manifest.eos_token_id
        ids = tuple(sorted(i for i in self.tokenizer.added_token_ids() if i != eos))
        sequences = {tuple(self.tokenizer.encode(text)) for text in (CONTEXT_MARKER, " " + CONTEXT_MARKER)}
        return ReservedTokens(ids, tuple(s for s in sequences if s))

    @classmethod
    def load(cls, bundle: Path | str, provider: str = "auto", threads: int | None = None) -> DolphinModel:
        return cls(load_manifest(Path(bundle)), provider=provider, threads=threads)

    @property
    def encoder_identity(self) -> str:
        return self.manifest.encoder_identity

    def encode(self, text: str) -> Memory:
        """Compress one context into a memory; contexts over the encoder's limit are truncated."""
        clean = self.tokenizer.clean(text)
        notes = [n for n in [clean.note("context")] if n]
        if not clean.text.strip():
            raise InputError("the context is empty: there is nothing to remember")
        ids = self.tokenizer.encode(clean.text)
        limit = self.manifest.max_context_tokens
        if len(ids) > limit:
            notes.append(
                f"the context is {len(ids):,} tokens; one memory holds at most {limit:,}, "
                f"so it was truncated to the first {limit:,} (split long texts into chunks)"
            )
            ids = ids[:limit]
        with self._lock:
            states = self.encoder.encode_ids(ids)
        return Memory(states, len(ids), self.encoder_identity, notes)

    def project(self, memories: Sequence[Memory]) -> list[np.ndarray]:
        for memory in memories:
            if memory.encoder_identity != self.encoder_identity:
                raise InputError("a memory was made by another model bundle: re-encode it with this one")
        return self.encoder.project([m.states for m in memories])

    def answer(
        self,
        question: str,
        memories: Sequence[Memory],
        settings: GenerationSettings | None = None,
        record_logits: bool = False,
        history: Sequence[Exchange] = (),
    ) -> AnswerStream:
        """Stream an answer to `question` from `memories`; `history` (earlier exchanges of the
        conversation) goes after the memories, before the question (inference/conversation.py)."""
        settings = settings or GenerationSettings()
        settings.validate()
        clean = self.tokenizer.clean(question)
        if not clean.text.strip():
            raise InputError("the question is empty")
        notes = [n for n in [clean.note("question")] if n]
        earlier = [
            Exchange(self.tokenizer.clean(e.question).text, self.tokenizer.clean(e.answer).text) for e in history
        ]
        return AnswerStream(
            self,
            question_text(self.tokenizer, clean.text, earlier),
            self.project(memories),
            settings,
            sum(m.token_count for m in memories),
            record_logits=record_logits,
            notes=notes,
        )
