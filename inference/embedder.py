"""The bundle's dense text embedder: text -> a unit vector, for retrieval (ONNX Runtime + tokenizers).

A sentence-transformers model exported by the converter (onnx_export/embedder.py): the
transformer runs in ONNX Runtime, pooling (mean, CLS or max over the real tokens) and L2
normalisation run here, as sentence-transformers does them. Queries and documents may carry
the model's own prefixes ("query: " for E5 models).
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from inference.bundle import EmbedderInfo, Manifest
from inference.providers import create_session

BATCH = 32


class TextEmbedder:
    def __init__(self, root: Path, info: EmbedderInfo, session: ort.InferenceSession) -> None:
        self.info = info
        self.identity = info.identity
        self.dim = info.dim
        self._session = session
        self._tokenizer = Tokenizer.from_file(str(Path(root) / info.tokenizer))
        self._tokenizer.enable_truncation(max_length=info.max_tokens)
        pad_id = self._tokenizer.token_to_id("[PAD]")
        self._tokenizer.enable_padding(pad_id=pad_id if pad_id is not None else 0)
        self._lock = threading.Lock()

    def embed(self, texts: list[str], kind: str = "document") -> np.ndarray:
        """[len(texts), dim] float32; `kind` is "query" or "document"."""
        prefix = self.info.query_prefix if kind == "query" else self.info.document_prefix
        vectors = [self._embed_batch([prefix + t for t in texts[i : i + BATCH]]) for i in range(0, len(texts), BATCH)]
        return np.concatenate(vectors) if vectors else np.zeros((0, self.dim), dtype=np.float32)

    def _embed_batch(self, texts: list[str]) -> np.ndarray:
        encodings = self._tokenizer.encode_batch(texts)
        ids = np.asarray([e.ids for e in encodings], dtype=np.int64)
        mask = np.asarray([e.attention_mask for e in encodings], dtype=np.int64)
        with self._lock:
            (hidden,) = self._session.run(["last_hidden_state"], {"input_ids": ids, "attention_mask": mask})
        weights = mask[..., None].astype(np.float32)
        if self.info.pooling == "cls":
            pooled = hidden[:, 0]
        elif self.info.pooling == "max":
            pooled = np.where(weights > 0, hidden, -1e9).max(axis=1)
        else:
            pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        if self.info.normalize:
            pooled = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return pooled.astype(np.float32)


def load_embedder(manifest: Manifest, threads: int) -> TextEmbedder | None:
    """The bundle's embedder on the CPU (it is small, and its vectors must not depend on the
    provider the Dolphin models run on), or None for a bundle without one."""
    if manifest.embedder is None:
        return None
    session = create_session(str(manifest.root / manifest.embedder.file), "cpu", threads)
    return TextEmbedder(manifest.root, manifest.embedder, session)
