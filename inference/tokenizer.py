"""The checkpoint's own tokenizer, plus the guards Dolphin's prompt format needs.

The reference finds a memory's end by searching for `<|endoftext|>` and splits prompts at
`<context>`, so user text that contains those strings (or a `[memory_i]` token) would silently
corrupt the memory or the splice. Such strings are removed from user text, and the caller is told.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from tokenizers import Tokenizer

CONTEXT_MARKER = "<context>"
MEMORY_SIZE = 32  # vectors per memory: the reference appends this many [memory_i] tokens
MEMORY_TOKENS = [f"[memory_{i}]" for i in range(MEMORY_SIZE)]
END_OF_TEXT = "<|endoftext|>"


@dataclass(frozen=True)
class CleanText:
    text: str
    removed: list[str] = field(default_factory=list)

    def note(self, what: str) -> str | None:
        if not self.removed:
            return None
        names = ", ".join(sorted(set(self.removed)))
        return f"removed {len(self.removed)} reserved token string(s) ({names}) from the {what}"


class DolphinTokenizer:
    def __init__(self, path: Path) -> None:
        self._tokenizer = Tokenizer.from_file(str(path))
        reserved = [t.content for t in self._tokenizer.get_added_tokens_decoder().values()]
        self._reserved = re.compile(
            "|".join(re.escape(t) for t in sorted({*reserved, CONTEXT_MARKER}, key=len, reverse=True))
        )

    def clean(self, text: str) -> CleanText:
        """User text with every reserved token string removed."""
        removed = self._reserved.findall(text)
        return CleanText(self._reserved.sub("", text) if removed else text, removed)

    def encode(self, text: str) -> list[int]:
        """Ids as the checkpoint's Hugging Face tokenizer gives them (no BOS is added for Qwen2)."""
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=False)

    @property
    def vocab_size(self) -> int:
        """Regular and added tokens: 151,678 for Dolphin's real tokenizer."""
        return self._tokenizer.get_vocab_size()

    def added_token_ids(self) -> list[int]:
        """Ids of the tokenizer's added (special) tokens: the memory tokens among them."""
        return list(self._tokenizer.get_added_tokens_decoder())

    def token_to_id(self, token: str) -> int | None:
        return self._tokenizer.token_to_id(token)


class StreamingDetokenizer:
    """Turns a growing list of ids into text pieces, never splitting a UTF-8 character."""

    def __init__(self, tokenizer: DolphinTokenizer) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._emitted = ""

    def push(self, token_id: int) -> str:
        self._ids.append(token_id)
        text = self._tokenizer.decode(self._ids)
        if text.endswith("\ufffd"):
            return ""
        piece = text[len(self._emitted) :] if text.startswith(self._emitted) else ""
        self._emitted = text
        return piece

    @property
    def text(self) -> str:
        return self._tokenizer.decode(self._ids)
