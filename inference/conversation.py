"""The text a follow-up question is asked with: a short history, then the question.

Dolphin's decoder was trained on `" <context>" * k + question` (inference/splice.py). A first
question keeps exactly that layout. A follow-up ("and on Windows?") means nothing alone, so the
text after the memories becomes the last exchanges, each answer cut to a few dozen tokens, then
the question. The memories stay where the weights expect them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from inference.tokenizer import DolphinTokenizer

HISTORY_TURNS = 2  # earlier exchanges the decoder sees
ANSWER_TOKENS = 64  # each earlier answer is cut to this many tokens


@dataclass(frozen=True)
class Exchange:
    question: str
    answer: str


def question_text(tokenizer: DolphinTokenizer, question: str, history: Sequence[Exchange] = ()) -> str:
    """What follows the memories in the prompt; `question` itself when there is no history."""
    if not history:
        return question
    lines: list[str] = []
    for exchange in history[-HISTORY_TURNS:]:
        ids = tokenizer.encode(exchange.answer.strip())
        answer = tokenizer.decode(ids[:ANSWER_TOKENS]).strip() + (" …" if len(ids) > ANSWER_TOKENS else "")
        lines.append(f"Question: {exchange.question.strip()}\nAnswer: {answer}")
    return "\n".join(lines) + f"\nQuestion: {question}"
