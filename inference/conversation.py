"""The token layout of a question in a conversation: a first question, a follow-up, a fresh prompt.

Dolphin's decoder was trained on `" <context>" * k + question` (inference/splice.py); a first
question keeps exactly that layout, and the decoder answers right after it. A follow-up over the
same memories *continues that sequence*: the first prompt, the answer tokens the decoder
generated, then `FOLLOW_UP_SEPARATOR` and the new question, and so on for each turn. Because the
sequence is a true continuation, the KV cache kept after the last answer holds all of it but the
new question, and only the question is prefilled (inference/answer_cache.py).

When the memories change, or the continuation would overflow the decoder's positions, a fresh
prompt is built from text in the same shape: the memories, the last `HISTORY_TURNS` exchanges
(each answer cut to `ANSWER_TOKENS`), then the question. Pieces are tokenized one by one, as the
cached path joins them, so a fresh prompt and a continuation differ only in what they include.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from inference.splice import prompt_ids
from inference.tokenizer import DolphinTokenizer

HISTORY_TURNS = 2  # earlier exchanges a fresh prompt carries
ANSWER_TOKENS = 64  # each of those answers is cut to this many tokens
FOLLOW_UP_SEPARATOR = "\n"  # between an answer and the next question
CUT_MARK = " …"  # ends an answer that was cut


@dataclass(frozen=True)
class Exchange:
    question: str
    answer: str


def fresh_ids(
    tokenizer: DolphinTokenizer,
    question: str,
    history: Sequence[Exchange],
    memory_count: int,
    memory_size: int,
) -> np.ndarray:
    """Decoder ids (-1 at memory positions) for `question` after the recent `history`.

    Without history this is exactly the reference layout (`splice.prompt_ids`)."""
    recent = list(history[-HISTORY_TURNS:])
    if not recent:
        return prompt_ids(tokenizer, question, memory_count, memory_size)
    pieces = [prompt_ids(tokenizer, recent[0].question, memory_count, memory_size)]
    following = [e.question for e in recent[1:]] + [question]
    for exchange, next_question in zip(recent, following, strict=True):
        answer = tokenizer.encode(exchange.answer)
        if len(answer) > ANSWER_TOKENS:
            answer = answer[:ANSWER_TOKENS] + tokenizer.encode(CUT_MARK)
        pieces.append(np.asarray(answer, dtype=np.int64))
        pieces.append(_question_ids(tokenizer, next_question))
    return np.concatenate(pieces)


def follow_up_ids(tokenizer: DolphinTokenizer, sequence: np.ndarray, question: str) -> np.ndarray:
    """`sequence` (a prompt and the answer tokens generated after it) continued by `question`."""
    return np.concatenate([sequence, _question_ids(tokenizer, question)])


def _question_ids(tokenizer: DolphinTokenizer, question: str) -> np.ndarray:
    return np.asarray(tokenizer.encode(FOLLOW_UP_SEPARATOR + question), dtype=np.int64)
