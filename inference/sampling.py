"""Choosing the next token: greedy (the reference's way) or temperature + nucleus sampling."""

from __future__ import annotations

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

    def validate(self) -> None:
        if self.max_new_tokens < 1:
            raise InputError("max new tokens must be at least 1")
        if not self.greedy and self.temperature <= 0:
            raise InputError("temperature must be above 0 (or use greedy decoding)")
        if not 0 < self.top_p <= 1:
            raise InputError("top-p must be in (0, 1]")


class TokenSampler:
    def __init__(self, settings: GenerationSettings) -> None:
        self._settings = settings
        self._rng = np.random.default_rng(settings.seed)

    def __call__(self, logits: np.ndarray) -> int:
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
