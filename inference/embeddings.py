"""The decoder's token embedding table, memory-mapped: only the rows a prompt uses are read."""

from __future__ import annotations

from pathlib import Path

import numpy as np


class EmbeddingTable:
    def __init__(self, path: Path, dtype: str) -> None:
        self._table = np.load(path, mmap_mode="r")
        self._bf16 = dtype == "bfloat16"
        if self._table.ndim != 2:
            raise ValueError(f"{path.name} is not a 2-D embedding table")

    @property
    def shape(self) -> tuple[int, int]:
        return self._table.shape  # type: ignore[return-value]

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        """float32 rows for `ids`; bf16 is widened exactly by shifting its bits into fp32."""
        rows = self._table[np.asarray(ids, dtype=np.int64)]
        if self._bf16:
            return (rows.astype(np.uint32) << 16).view(np.float32)
        return rows.astype(np.float32)
