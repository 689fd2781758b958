"""Exact reuse of the decoder's KV cache between answers.

Two caches, both exact because the KV of a position depends only on the rows up to it:

* **A conversation's segment.** After an answer, the KV of its whole sequence (prompt and
  generated tokens) is kept for that conversation. A follow-up over the same memories is laid
  out as a continuation of that sequence (inference/conversation.py), so only its new tokens are
  prefilled. Reuse is decided by comparing token ids and memory digests, never by trust: a
  regenerated or edited question reuses the longest common prefix, anything else starts afresh.
* **The first memory block.** Positions 0..32 of a prompt are the first memory and the rows
  around it (`splice.first_block_end`); any prompt with the same first memory starts after them.

Both are bounded by bytes (least recently used goes first), live in one `DolphinModel` (a model
reloaded starts empty) and are guarded by one lock: answers run on a background thread while the
window may delete a conversation. Stored states are never run on: callers get `copy()`s, and
`Decoder.forward` replaces a state's tensors instead of writing into them.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

from inference.conversation import Exchange
from inference.decoder import Decoder, DecoderState
from inference.splice import first_block_end

# 7B shape, fp32 KV: 112 KiB per position. 256 MiB keeps ~6 conversations of a 3-memory prompt
# and a 256-token answer; 64 MiB keeps ~17 first memory blocks (33 positions each).
DEFAULT_CONVERSATION_BYTES = 256 * 2**20
DEFAULT_BLOCK_BYTES = 64 * 2**20

Key = TypeVar("Key", bound=Hashable)
Value = TypeVar("Value")


def memory_key(states: np.ndarray, encoder_identity: str) -> str:
    """A memory's identity for the caches: the digest of its states and of the encoder that made them."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(encoder_identity.encode())
    digest.update(str(states.shape).encode())
    digest.update(np.ascontiguousarray(states, dtype=np.float32).tobytes())
    return digest.hexdigest()


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    differ = np.nonzero(a[:n] != b[:n])[0]
    return int(differ[0]) if len(differ) else n


@dataclass(frozen=True)
class Segment:
    """A conversation's sequence since its memories were chosen, and the KV cache of it.

    `ids` is the prompt (-1 at memory rows) followed by every turn's answer tokens and follow-up
    questions; `turns[i]` ends at `turn_ends[i]`; `state` holds `ids[:state.length]` (the last
    generated token may not have been run)."""

    memory_keys: tuple[str, ...]
    ids: np.ndarray
    turns: tuple[Exchange, ...]
    turn_ends: tuple[int, ...]
    state: DecoderState

    def continued_turns(self, history: Sequence[Exchange], memory_keys: tuple[str, ...]) -> int:
        """How many of this segment's turns the conversation still ends with (0: it cannot be
        continued: other memories, or the history was edited past it)."""
        if memory_keys != self.memory_keys:
            return 0
        for count in range(len(self.turns), 0, -1):
            if len(history) >= count and tuple(history[-count:]) == self.turns[:count]:
                return count
        return 0

    def nbytes(self) -> int:
        return self.state.nbytes + self.ids.nbytes


@dataclass(frozen=True)
class Start:
    """Where a prefill starts: `state` (private to the caller) holds `state.length` positions."""

    state: DecoderState
    source: str  # "conversation", "memory_block" or "none"


class _ByteLru(Generic[Key, Value]):
    """Least recently used entries leave first once their bytes exceed `capacity`. Not locked."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.nbytes = 0
        self._entries: OrderedDict[Key, tuple[Value, int]] = OrderedDict()

    def get(self, key: Key) -> Value | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        return entry[0]

    def put(self, key: Key, value: Value, nbytes: int) -> None:
        self.pop(key)
        if nbytes > self.capacity:
            return
        self._entries[key] = (value, nbytes)
        self.nbytes += nbytes
        while self.nbytes > self.capacity:
            _, (_, dropped) = self._entries.popitem(last=False)
            self.nbytes -= dropped

    def pop(self, key: Key) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.nbytes -= entry[1]

    def clear(self) -> None:
        self._entries.clear()
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self._entries)


class AnswerCache:
    def __init__(
        self, conversation_bytes: int = DEFAULT_CONVERSATION_BYTES, block_bytes: int = DEFAULT_BLOCK_BYTES
    ) -> None:
        self._lock = threading.Lock()
        self._segments: _ByteLru[Hashable, Segment] = _ByteLru(conversation_bytes)
        self._blocks: _ByteLru[str, DecoderState] = _ByteLru(block_bytes)
        self._epochs: dict[Hashable, int] = {}
        self._cleared = 0

    # conversations ---------------------------------------------------------------------------

    def segment(self, conversation: Hashable | None) -> Segment | None:
        if conversation is None:
            return None
        with self._lock:
            return self._segments.get(conversation)

    def ticket(self, conversation: Hashable | None) -> tuple[int, int]:
        """Taken before an answer starts; `keep_segment` ignores a segment whose conversation was
        forgotten (deleted) or whose cache was cleared while it was being generated."""
        with self._lock:
            return self._cleared, self._epochs.get(conversation, 0)

    def keep_segment(self, conversation: Hashable | None, ticket: tuple[int, int], segment: Segment) -> None:
        if conversation is None:
            return
        with self._lock:
            if ticket == (self._cleared, self._epochs.get(conversation, 0)):
                self._segments.put(conversation, segment, segment.nbytes())

    def forget(self, conversation: Hashable) -> None:
        """The conversation was deleted: its segment goes, and an answer still running keeps nothing."""
        with self._lock:
            self._segments.pop(conversation)
            self._epochs[conversation] = self._epochs.get(conversation, 0) + 1

    def clear(self) -> None:
        with self._lock:
            self._segments.clear()
            self._blocks.clear()
            self._cleared += 1

    # where a prefill starts ------------------------------------------------------------------

    def start(
        self,
        conversation: Hashable | None,
        ids: np.ndarray,
        memory_keys: tuple[str, ...],
        memory_size: int,
        decoder: Decoder,
    ) -> Start:
        """The longest exactly reusable prefix of `ids`: from the conversation's segment (same
        memories, same ids), else the first memory's block, else nothing. At least one position
        is always left to prefill, for the logits of the last one."""
        limit = len(ids) - 1
        block_end = first_block_end(ids, memory_size) if memory_keys else None
        block_key = _block_key(memory_keys[0], ids[:block_end]) if block_end is not None else None
        with self._lock:
            segment = self._segments.get(conversation) if conversation is not None else None
            block = self._blocks.get(block_key) if block_key is not None and block_end <= limit else None
        if segment is not None and segment.memory_keys == memory_keys:
            reusable = min(common_prefix(segment.ids, ids), segment.state.length, limit)
            if reusable == segment.state.length:
                return Start(segment.state.copy(), "conversation")
            if reusable > 0 and (block is None or reusable > block.length):
                return Start(decoder.prefix(segment.state, reusable), "conversation")
        if block is not None:
            return Start(block.copy(), "memory_block")
        return Start(decoder.new_state(), "none")

    def keep_block(
        self, ids: np.ndarray, memory_keys: tuple[str, ...], memory_size: int, state: DecoderState, decoder: Decoder
    ) -> None:
        """Keep the first memory block of a prompt whose prefill `state` (at least) covers it."""
        block_end = first_block_end(ids, memory_size) if memory_keys else None
        if block_end is None or state.length < block_end:
            return
        key = _block_key(memory_keys[0], ids[:block_end])
        with self._lock:
            if self._blocks.get(key) is not None:
                return
        block = decoder.prefix(state, block_end)
        with self._lock:
            self._blocks.put(key, block, block.nbytes)

    @property
    def nbytes(self) -> int:
        with self._lock:
            return self._segments.nbytes + self._blocks.nbytes


def _block_key(memory: str, ids: np.ndarray) -> str:
    digest = hashlib.blake2b(np.ascontiguousarray(ids, dtype=np.int64).tobytes(), digest_size=8)
    return f"{memory}:{digest.hexdigest()}"
