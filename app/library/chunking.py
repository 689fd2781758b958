"""Text -> chunks of at most N tokens at paragraph, then sentence, then word boundaries.

Each chunk keeps its character span in the extracted text and its page, for citations. Chunks
never cross a page, so a citation's page is exact. The model was trained on contexts under ~650
tokens (docs/ARCHITECTURE.md §2); the default of 384 tokens keeps every memory well
inside that.

Work is linear in the length of the text, whatever the text looks like: every span is counted
once (a chunk's count is the sum of its parts' counts, and the finished chunk is counted once
more, exactly), and a run of characters without whitespace is cut every `MAX_WORD_CHARS`, so a
megabyte with no space in it (minified HTML, base64) never reaches the tokenizer as one word.
This runs inside the extraction child process, under its time and memory limits.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from app.library.extract import Segment

DEFAULT_CHUNK_TOKENS = 384
PAGE_SEPARATOR = "\n\n"
MAX_WORD_CHARS = 200
EXACT_CHECKS_PER_CHUNK = 4
_PARAGRAPH = re.compile(r"\n\s*\n")
_SENTENCE = re.compile(r"(?<=[.!?。！？])\s+")
_WORD = re.compile(r"\s+")

Count = Callable[[str], int]


@dataclass(frozen=True)
class Chunk:
    text: str
    char_start: int
    char_end: int
    page: int | None
    token_count: int

    @property
    def text_hash(self) -> str:
        return text_hash(self.text)


def text_hash(text: str) -> str:
    """What a memory is keyed by (with the encoder's identity)."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _spans(text: str, start: int, end: int, pattern: re.Pattern[str]) -> Iterator[tuple[int, int]]:
    position = start
    for match in pattern.finditer(text, start, end):
        if match.start() > position:
            yield position, match.start()
        position = match.end()
    if position < end:
        yield position, end


def _words(text: str, start: int, end: int, piece_chars: int) -> Iterator[tuple[int, int]]:
    """Whitespace-separated words, each cut into pieces of at most `piece_chars`."""
    for w_start, w_end in _spans(text, start, end, _WORD):
        for piece in range(w_start, w_end, piece_chars):
            yield piece, min(piece + piece_chars, w_end)


def _units(text: str, start: int, end: int, count: Count, limit: int) -> Iterator[tuple[int, int, int]]:
    """(start, end, tokens) spans of at most `limit` tokens: paragraphs, else their sentences,
    else runs of words. A span far longer than any `limit`-token text can be is not counted."""
    most_chars = limit * 32
    for p_start, p_end in _spans(text, start, end, _PARAGRAPH):
        tokens = count(text[p_start:p_end]) if p_end - p_start <= most_chars else limit + 1
        if tokens <= limit:
            yield p_start, p_end, tokens
            continue
        for s_start, s_end in _spans(text, p_start, p_end, _SENTENCE):
            tokens = count(text[s_start:s_end]) if s_end - s_start <= most_chars else limit + 1
            if tokens <= limit:
                yield s_start, s_end, tokens
                continue
            run_start = run_end = s_start
            run_tokens = 0
            for w_start, w_end in _words(text, s_start, s_end, max(16, min(MAX_WORD_CHARS, limit))):
                word_tokens = count(text[run_end:w_end]) if run_end > run_start else count(text[w_start:w_end])
                if run_end > run_start and run_tokens + word_tokens > limit:
                    yield run_start, run_end, run_tokens
                    run_start, run_tokens = w_start, count(text[w_start:w_end])
                else:
                    run_tokens += word_tokens
                run_end = w_end
            if run_end > run_start:
                yield run_start, run_end, run_tokens


def chunk_segments(
    segments: list[Segment], count: Count, max_tokens: int = DEFAULT_CHUNK_TOKENS
) -> tuple[str, list[Chunk]]:
    """The document's full text (pages joined by a blank line) and its chunks."""
    full_text = PAGE_SEPARATOR.join(s.text for s in segments)
    chunks: list[Chunk] = []
    offset = 0
    for segment in segments:
        seg_start, seg_end = offset, offset + len(segment.text)
        offset = seg_end + len(PAGE_SEPARATOR)
        current: tuple[int, int] | None = None
        current_tokens = exact_checks = 0
        for u_start, u_end, tokens in _units(full_text, seg_start, seg_end, count, max_tokens):
            if current is not None:
                # The separator between two units costs a token or so: the sum is an estimate.
                # Where it says "too long", a few exact counts per chunk settle it.
                estimate = current_tokens + tokens + 1
                if estimate > max_tokens and exact_checks < EXACT_CHECKS_PER_CHUNK:
                    exact_checks += 1
                    estimate = count(full_text[current[0] : u_end])
                if estimate <= max_tokens:
                    current, current_tokens = (current[0], u_end), estimate
                    continue
                chunks.append(_make_chunk(full_text, current, segment.page, count))
            current, current_tokens, exact_checks = (u_start, u_end), tokens, 0
        if current is not None:
            chunks.append(_make_chunk(full_text, current, segment.page, count))
    return full_text, [c for c in chunks if c.text.strip()]


def _make_chunk(text: str, span: tuple[int, int], page: int | None, count: Count) -> Chunk:
    body = text[span[0] : span[1]]
    return Chunk(body, span[0], span[1], page, count(body))
