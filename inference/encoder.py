"""Context text -> memory: the 0.5B encoder and the projector."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort

from inference.bundle import Manifest


@dataclass
class Memory:
    """One compressed context: the encoder's states at the 32 memory positions.

    Stored unprojected ([32, encoder width], docs/ARCHITECTURE.md §4); `DolphinModel.project` turns a list of
    them into decoder-width vectors at answer time.
    """

    states: np.ndarray
    token_count: int
    encoder_identity: str
    notes: list[str] = field(default_factory=list)


def _io_dtype(session: ort.InferenceSession, name: str) -> np.dtype:
    kind = next(i.type for i in session.get_inputs() if i.name == name)
    return np.dtype(np.float16) if kind == "tensor(float16)" else np.dtype(np.float32)


class MemoryEncoder:
    def __init__(self, manifest: Manifest, encoder: ort.InferenceSession, projector: ort.InferenceSession) -> None:
        self._manifest = manifest
        self._encoder = encoder
        self._projector = projector
        self._memory_ids = manifest.memory_token_ids
        first_past = next(i.name for i in encoder.get_inputs() if i.name.startswith("past_key_values."))
        stack = manifest.encoder
        self._empty_past = {
            name: np.zeros((1, stack.num_kv_heads, 0, stack.head_size), dtype=_io_dtype(encoder, first_past))
            for name in (i.name for i in encoder.get_inputs() if i.name.startswith("past_key_values."))
        }

    def encode_ids(self, ids: list[int]) -> np.ndarray:
        """[32, encoder width] float32: last hidden states at the appended [memory_i] positions."""
        full = np.asarray([ids + self._memory_ids], dtype=np.int64)
        feeds = {"input_ids": full, "attention_mask": np.ones_like(full), **self._empty_past}
        (hidden,) = self._encoder.run(["hidden_states"], feeds)
        return np.asarray(hidden[0, -len(self._memory_ids) :], dtype=np.float32)

    def project(self, states: list[np.ndarray]) -> list[np.ndarray]:
        """Encoder states -> decoder-width memories, all in one projector call."""
        if not states:
            return []
        (memory,) = self._projector.run(["memory"], {"encoder_states": np.stack(states).astype(np.float32)})
        return list(memory)
