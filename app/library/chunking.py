"""Text -> chunks of at most N tokens at paragraph, then sentence, then word boundaries.

Each chunk keeps its character span in the extracted text and its page, for citations. Chunks
never cross a page, so a citation's page is exact. DESIGN.md §2: the model was trained on
contexts under ~650 tokens; the default of 384 tokens keeps every memory well inside that.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from app.library.extract import Segment

DEFAULT_CHUNK_TOKENS = 384
PAGE_SEPARATOR = "\n\n"
_PARAGRAPH = re.compile(r"\n\s*\n")
_SENTENCE = re.compile(r"(?<=[.!?。！？])\s+")
_WORD = re.compile(r"\s+")


@dataclass(frozen=True)
class Chunk:
    text: str
    char_start: int
    char_end: int
    page: int | None
    token_count: int

    @property
    def text_hash(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


def _spans(text: str, start: int, end: int, pattern: re.Pattern[str]) -> Iterator[tuple[int, int]]:
    position = start
    for match in pattern.finditer(text, start, end):
        if match.start() > position:
            yield position, match.start()
        position = match.end()
    if position < end:
        yield position, end


def _units(text: str, start: int, end: int, count: Callable[[str], int], limit: int) -> Iterator[tuple[int, int]]:
    """Spans no longer than `limit` tokens: paragraphs, else their sentences, else word runs."""
    for p_start, p_end in _spans(text, start, end, _PARAGRAPH):
        if count(text[p_start:p_end]) <= limit:
            yield p_start, p_end
            continue
        for s_start, s_end in _spans(text, p_start, p_end, _SENTENCE):
            if count(text[s_start:s_end]) <= limit:
                yield s_start, s_end
                continue
            run_start = run_end = s_start
            for w_start, w_end in _spans(text, s_start, s_end, _WORD):
                if run_end > run_start and count(text[run_start:w_end]) > limit:
                    yield run_start, run_end
                    run_start = w_start
                run_end = w_end
            if run_end > run_start:
                yield run_start, run_end


def chunk_segments(
    segments: list[Segment], count: Callable[[str], int], max_tokens: int = DEFAULT_CHUNK_TOKENS
) -> tuple[str, list[Chunk]]:
    """The document's full text (pages joined by a blank line) and its chunks."""
    full_text = PAGE_SEPARATOR.join(s.text for s in segments)
    chunks: list[Chunk] = []
    offset = 0
    for segment in segments:
        seg_start, seg_end = offset, offset + len(segment.text)
        offset = seg_end + len(PAGE_SEPARATOR)
        current: tuple[int, int] | None = None
        for unit in _units(full_text, seg_start, seg_end, count, max_tokens):
            if current is not None and count(full_text[current[0] : unit[1]]) <= max_tokens:
                current = (current[0], unit[1])
                continue
            if current is not None:
                chunks.append(_make_chunk(full_text, current, segment.page, count))
            current = unit
        if current is not None:
            chunks.append(_make_chunk(full_text, current, segment.page, count))
    return full_text, [c for c in chunks if c.text.strip()]


def _make_chunk(text: str, span: tuple[int, int], page: int | None, count: Callable[[str], int]) -> Chunk:
    body = text[span[0] : span[1]]
    return Chunk(body, span[0], span[1], page, count(body))
