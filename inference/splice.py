"""The memory splice, exactly as Nexa's reference does it (off-by-one included).

The prompt is `" <context>" * k + question`, split at each marker; every marker becomes a run of
32 ids of -1. The reference embeds the ids with -1 clamped to 0, finds `starts` as the index
*before* each -1 run and overwrites 32 rows from there: the memory covers the leading space and
the run's first 31 positions, and the run's last position keeps the embedding of token id 0.
The weights were trained with this layout, so it is reproduced, not fixed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from inference.tokenizer import CONTEXT_MARKER, DolphinTokenizer

PLACEHOLDER_ID = -1


def prompt_ids(tokenizer: DolphinTokenizer, question: str, memory_count: int, memory_size: int) -> np.ndarray:
    """Decoder ids for a question over `memory_count` memories, -1 marking memory positions."""
    prompt = f" {CONTEXT_MARKER}" * memory_count + question
    chunks = [tokenizer.encode(chunk) for chunk in prompt.split(CONTEXT_MARKER)]
    ids: list[int] = list(chunks[0])
    for chunk in chunks[1:]:
        ids += [PLACEHOLDER_ID] * memory_size + chunk
    return np.asarray(ids, dtype=np.int64)


def memory_starts(ids: np.ndarray) -> np.ndarray:
    """The reference's `where(mask[:-1] < mask[1:])`: the index before each -1 run."""
    mask = ids == PLACEHOLDER_ID
    return np.nonzero(mask[:-1] < mask[1:])[0]


def splice(ids: np.ndarray, embed: Callable[[np.ndarray], np.ndarray], memories: Sequence[np.ndarray]) -> np.ndarray:
    """inputs_embeds [len(ids), hidden] with memory i written over run i."""
    embeds = embed(np.maximum(ids, 0))
    starts = memory_starts(ids)
    if len(starts) != len(memories):
        raise ValueError(f"prompt has {len(starts)} memory slots but {len(memories)} memories were given")
    for start, memory in zip(starts, memories, strict=True):
        if start + len(memory) <= len(ids):
            embeds[start : start + len(memory)] = memory
    return embeds


def first_block_end(ids: np.ndarray, memory_size: int) -> int | None:
    """Positions 0..end-1 hold the text before the first memory, the memory itself and its
    run's last row: they depend on that memory and `ids[:end]` only, so their KV can be
    reused by any prompt that starts the same way. None without a memory."""
    starts = memory_starts(ids)
    if len(starts) == 0:
        return None
    return int(starts[0]) + 1 + memory_size


def splice_tail(
    ids: np.ndarray, embed: Callable[[np.ndarray], np.ndarray], memories: Sequence[np.ndarray], start: int
) -> np.ndarray:
    """Rows `start:` of `splice(ids, embed, memories)`, without embedding the rows before them
    when they lie past every memory (a follow-up prefills only its new tokens)."""
    starts = memory_starts(ids)
    past_memories = len(starts) == len(memories) and (not memories or start >= int(starts[-1]) + len(memories[-1]))
    if past_memories:
        return embed(np.maximum(ids[start:], 0))
    return splice(ids, embed, memories)[start:]
