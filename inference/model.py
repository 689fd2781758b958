"""The one object the app holds: a loaded bundle that encodes contexts and answers questions."""

from __future__ import annotations

import threading
import time
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from inference.answer_cache import AnswerCache, Segment, memory_key
from inference.bundle import BundleError, Manifest, load_manifest
from inference.conversation import Exchange, follow_up_ids, fresh_ids
from inference.decoder import Decoder, DecoderState
from inference.embedder import load_embedder
from inference.embeddings import EmbeddingTable
from inference.encoder import Memory, MemoryEncoder
from inference.errors import InputError
from inference.providers import choose_provider, create_session, default_threads
from inference.sampling import GenerationSettings, ReservedTokens, TokenSampler
from inference.splice import splice_tail
from inference.tokenizer import CONTEXT_MARKER, DolphinTokenizer, StreamingDetokenizer


@dataclass
class AnswerStats:
    memory_count: int = 0
    prompt_positions: int = 0
    cached_positions: int = 0  # of the prompt's positions, how many came from a kept KV cache
    text_tokens_replaced: int = 0
    new_tokens: int = 0
    first_token_s: float = 0.0
    total_s: float = 0.0
    decode_tokens_per_s: float = 0.0
    stop_reason: str = ""

    def as_dict(self) -> dict[str, float | int | str]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Prompt:
    """What an answer is asked with: the decoder ids (-1 at memory rows) and the memories, plus
    what the answer cache needs to reuse and keep its KV (inference/answer_cache.py)."""

    ids: np.ndarray
    memories: list[np.ndarray]
    memory_keys: tuple[str, ...]
    conversation: Hashable | None = None
    ticket: tuple[int, int] = (0, 0)
    earlier_turns: tuple[Exchange, ...] = ()  # the segment's turns this prompt continues
    earlier_ends: tuple[int, ...] = ()


@dataclass
class AnswerStream:
    """Iterate for text pieces as they are generated; `cancel()` stops it from any thread.

    After iteration, `token_ids`, `text` and `stats` describe the whole answer.
    """

    _model: DolphinModel
    question: str
    prompt: Prompt
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

    @property
    def memories(self) -> list[np.ndarray]:
        return self.prompt.memories

    def __iter__(self) -> Iterator[str]:
        model, stats, prompt = self._model, self.stats, self.prompt
        started = time.perf_counter()
        ids, memory_size = prompt.ids, model.manifest.memory_size
        start = model.answer_cache.start(prompt.conversation, ids, prompt.memory_keys, memory_size, model.decoder)
        state = start.state
        stats.memory_count = len(prompt.memories)
        stats.prompt_positions = len(ids)
        stats.cached_positions = state.length
        stats.text_tokens_replaced = self.text_tokens_replaced
        sampler = TokenSampler(self.settings, model.reserved)
        detokenizer = StreamingDetokenizer(model.tokenizer)
        eos = model.manifest.eos_token_id
        room = model.max_positions - len(ids)
        limit = min(self.settings.max_new_tokens, room)
        first_token_at = started
        logits = model.decoder.forward(splice_tail(ids, model.embeddings, prompt.memories, state.length), state)
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
        self._keep(state, start.source)

    def _keep(self, state: DecoderState, source: str) -> None:
        """Hand the KV cache to the model's answer cache: the conversation can go on from it."""
        model, prompt = self._model, self.prompt
        if source == "none":
            model.answer_cache.keep_block(
                prompt.ids, prompt.memory_keys, model.manifest.memory_size, state, model.decoder
            )
        if prompt.conversation is None:
            return
        ids = np.concatenate([prompt.ids, np.asarray(self.token_ids, dtype=np.int64)])
        segment = Segment(
            prompt.memory_keys,
            ids,
            (*prompt.earlier_turns, Exchange(self.question, self._text)),
            (*prompt.earlier_ends, len(ids)),
            state,
        )
        model.answer_cache.keep_segment(prompt.conversation, prompt.ticket, segment)

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
        self.embedder = load_embedder(manifest, self.threads)
        self.reserved = self._reserved_tokens()
        self.answer_cache = AnswerCache()
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
        conversation: Hashable | None = None,
    ) -> AnswerStream:
        """Stream an answer to `question` from `memories` after `history` (earlier exchanges).

        With a `conversation` key the answer's KV cache is kept for it, and a follow-up over the
        same memories continues the kept sequence, prefilling only its own tokens; otherwise
        (and when that would overflow the decoder's positions) the history is laid out afresh
        after the memories (inference/conversation.py)."""
        settings = settings or GenerationSettings()
        settings.validate()
        clean = self.tokenizer.clean(question)
        if not clean.text.strip():
            raise InputError("the question is empty")
        notes = [n for n in [clean.note("question")] if n]
        earlier = [
            Exchange(self.tokenizer.clean(e.question).text, self.tokenizer.clean(e.answer).text) for e in history
        ]
        projected = self.project(memories)
        keys = tuple(memory_key(m.states, m.encoder_identity) for m in memories)
        return AnswerStream(
            self,
            clean.text,
            self._prompt(clean.text, earlier, projected, keys, settings, conversation),
            settings,
            sum(m.token_count for m in memories),
            record_logits=record_logits,
            notes=notes,
        )

    def _prompt(
        self,
        question: str,
        history: Sequence[Exchange],
        memories: list[np.ndarray],
        keys: tuple[str, ...],
        settings: GenerationSettings,
        conversation: Hashable | None,
    ) -> Prompt:
        ticket = self.answer_cache.ticket(conversation)
        segment = self.answer_cache.segment(conversation)
        turns = segment.continued_turns(history, keys) if segment is not None and history else 0
        if segment is not None and turns:
            ids = follow_up_ids(self.tokenizer, segment.ids[: segment.turn_ends[turns - 1]], question)
            if len(ids) + settings.max_new_tokens <= self.max_positions:
                return Prompt(
                    ids, memories, keys, conversation, ticket, segment.turns[:turns], segment.turn_ends[:turns]
                )
        ids = fresh_ids(self.tokenizer, question, history, len(memories), self.manifest.memory_size)
        return Prompt(ids, memories, keys, conversation, ticket)

    def forget_conversation(self, conversation: Hashable) -> None:
        """Drop what is kept for a deleted conversation (its answers' KV cache)."""
        self.answer_cache.forget(conversation)
