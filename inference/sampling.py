"""Choosing the next token: greedy (the reference's way) or temperature + nucleus sampling.

Reserved tokens never reach an answer: the memory tokens (`[memory_i]`), the other added tokens
(`<|im_start|>`, ... and `<|endoftext|>` where it is not the end-of-answer token) and the token
sequence of `<context>` are masked before a token is chosen. A random-weight or badly prompted
decoder otherwise prints `[memory_25]` into the chat.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from inference.errors import InputError


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 256
    greedy: bool = True
    temperature: float = 0.7
    top_p: float = 0.9
    seed: int | None = None
    # Keep reserved tokens out of answers; False reproduces the reference's unmasked greedy choice.
    mask_reserved: bool = True

    def validate(self) -> None:
        if self.max_new_tokens < 1:
            raise InputError("max new tokens must be at least 1")
        if not self.greedy and self.temperature <= 0:
            raise InputError("temperature must be above 0 (or use greedy decoding)")
        if not 0 < self.top_p <= 1:
            raise InputError("top-p must be in (0, 1]")


@dataclass(frozen=True)
class ReservedTokens:
    """Token ids that are never sampled, and sequences whose last token is not sampled after the rest."""

    ids: tuple[int, ...] = ()
    sequences: tuple[tuple[int, ...], ...] = ()

    def banned(self, generated: Sequence[int]) -> list[int]:
        """Ids not to sample next, given the tokens generated so far."""
        banned = list(self.ids)
        for sequence in self.sequences:
            head = sequence[:-1]
            if not head or tuple(generated[-len(head) :]) == head:
                banned.append(sequence[-1])
        return banned


class TokenSampler:
    def __init__(self, settings: GenerationSettings, reserved: ReservedTokens | None = None) -> None:
        self._settings = settings
        self._reserved = (reserved or ReservedTokens()) if settings.mask_reserved else ReservedTokens()
        self._rng = np.random.default_rng(settings.seed)

    def __call__(self, logits: np.ndarray, generated: Sequence[int] = ()) -> int:
        banned = self._reserved.banned(generated)
        if banned:
            logits = logits.copy()
            logits[[i for i in banned if 0 <= i < len(logits)]] = -np.inf
        if self._settings.greedy:
            return int(np.argmax(logits))
        scaled = logits.astype(np.float64) / self._settings.temperature
        probs = np.exp(scaled - scaled.max())
        probs /= probs.sum()
        order = np.argsort(-probs)
        cumulative = np.cumsum(probs[order])
        keep = order[: int(np.searchsorted(cumulative, self._settings.top_p) + 1)]
        kept = probs[keep] / probs[keep].sum()
        return int(self._rng.choice(keep, p=kept))
