"""A llama.cpp decoder backend fed the spliced embedding rows through `llama_batch.embd` (measured,
not shipped: benchmarks/decode_speed.py and benchmarks/README.md say why).

Same interface as `inference.decoder.Decoder` (`new_state`, `prefix`, `forward`; states with
`length`, `nbytes` and `copy()`), so the answer loop and the answer cache could run on it
unchanged. It lives with the benchmarks because nothing in the app can choose it: llama-cpp-python
compiles llama.cpp from source, the converter writes no GGUF, and ONNX Runtime with int4 blocks of
128 decodes as fast on this machine (and stays the backend for DirectML).

Each state is a llama.cpp sequence in one context with a unified KV cache, so a copy or a prefix
shares the cells of the positions it holds instead of copying them. Copies are copy-on-write:
`forward` on a state whose sequence another state still uses first moves it to a sequence of its
own (`llama_memory_seq_cp`, which shares cells), so running on a copy never changes the original,
the guarantee the answer cache relies on (inference/answer_cache.py).
"""

from __future__ import annotations

import ctypes
import weakref
from collections.abc import Callable
from pathlib import Path

import llama_cpp
import numpy as np


class _Sequence:
    """A llama.cpp sequence id and how many live states read it."""

    def __init__(self, seq_id: int) -> None:
        self.id = seq_id
        self.users = 0


class LlamaCppState:
    """A generation's KV cache: the first `length` positions of a sequence in the decoder's context."""

    def __init__(self, decoder: LlamaCppDecoder, sequence: _Sequence, length: int) -> None:
        self._decoder = decoder
        self._sequence = sequence
        self.length = length
        self.dtype = np.float16
        sequence.users += 1
        self._finalizer = weakref.finalize(self, decoder._release, sequence)

    def copy(self) -> LlamaCppState:
        """A state over the same positions that can be run on without changing this one."""
        return LlamaCppState(self._decoder, self._sequence, self.length)

    @property
    def nbytes(self) -> int:
        """What the positions would take on their own (copies share cells, so this overstates)."""
        return self.length * self._decoder.kv_bytes_per_position

    def _own_sequence(self) -> int:
        """This state's sequence id, moved to a sequence of its own first if another state reads it."""
        if self._sequence.users > 1:
            fresh = self._decoder._allocate()
            self._decoder._copy(self._sequence.id, fresh.id, self.length)
            self._finalizer.detach()
            self._decoder._release(self._sequence)
            self._sequence = fresh
            fresh.users += 1
            self._finalizer = weakref.finalize(self, self._decoder._release, fresh)
        return self._sequence.id


class LlamaCppDecoder:
    """A GGUF decoder run by llama.cpp on embedding rows; `forward` returns the last position's logits."""

    embeds_dtype = np.float32

    def __init__(
        self,
        path: Path,
        threads: int,
        positions: int = 4096,
        sequences: int = 64,
        batch: int = 512,
        flash_attention: bool = True,
        in_memory: bool = False,
    ) -> None:
        llama_cpp.llama_backend_init()
        model_params = llama_cpp.llama_model_default_params()
        model_params.use_mmap = not in_memory  # memory-mapped weights can be paged out when memory is short
        self._model = llama_cpp.llama_model_load_from_file(str(path).encode(), model_params)
        if not self._model:
            raise ValueError(f"llama.cpp cannot load {path}")
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = positions
        params.n_batch = params.n_ubatch = batch
        params.n_seq_max = sequences
        params.kv_unified = True
        params.n_threads = params.n_threads_batch = threads
        params.no_perf = True
        params.flash_attn_type = (
            llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attention else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
        self._ctx = llama_cpp.llama_init_from_model(self._model, params)
        if not self._ctx:
            raise ValueError("llama.cpp cannot create a context for this decoder")
        self._memory = llama_cpp.llama_get_memory(self._ctx)
        self._free_ids = list(range(sequences - 1, -1, -1))
        self._batch_size = batch
        self.hidden_size = llama_cpp.llama_model_n_embd(self._model)
        self.vocab_size = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(self._model))
        layers = llama_cpp.llama_model_n_layer(self._model)
        head_size = self.hidden_size // llama_cpp.llama_model_n_head(self._model)
        self.kv_bytes_per_position = 2 * layers * llama_cpp.llama_model_n_head_kv(self._model) * head_size * 2
        self._batch = llama_cpp.llama_batch_init(batch, self.hidden_size, 1)
        self._token_batch = llama_cpp.llama_batch_init(batch, 0, 1)

    def close(self) -> None:
        if self._ctx:
            llama_cpp.llama_batch_free(self._batch)
            llama_cpp.llama_batch_free(self._token_batch)
            llama_cpp.llama_free(self._ctx)
            llama_cpp.llama_model_free(self._model)
            self._ctx = self._model = None

    def _allocate(self) -> _Sequence:
        if not self._free_ids:
            raise RuntimeError("every llama.cpp sequence is in use: drop kept answers or raise `sequences`")
        return _Sequence(self._free_ids.pop())

    def _release(self, sequence: _Sequence) -> None:
        sequence.users -= 1
        if sequence.users == 0 and self._ctx:
            llama_cpp.llama_memory_seq_rm(self._memory, sequence.id, -1, -1)
            self._free_ids.append(sequence.id)

    def _copy(self, source: int, target: int, length: int) -> None:
        llama_cpp.llama_memory_seq_rm(self._memory, target, -1, -1)
        llama_cpp.llama_memory_seq_cp(self._memory, source, target, 0, length)

    def new_state(self) -> LlamaCppState:
        return LlamaCppState(self, self._allocate(), 0)

    def prefix(self, state: LlamaCppState, length: int) -> LlamaCppState:
        """A new state holding the first `length` positions of `state` (cells shared, not copied)."""
        if not 0 < length <= state.length:
            raise ValueError(f"a prefix of {length} positions of a state that holds {state.length}")
        target = self._allocate()
        self._copy(state._sequence.id, target.id, length)
        return LlamaCppState(self, target, length)

    def forward(self, embeds: np.ndarray, state: LlamaCppState) -> np.ndarray:
        """Run `embeds` [seq, hidden] after the cached positions; return the last position's logits."""
        rows = np.ascontiguousarray(embeds, dtype=np.float32)

        def fill(start: int, count: int) -> None:
            ctypes.memmove(self._batch.embd, rows[start:].ctypes.data, count * rows.shape[1] * 4)

        return self._run(self._batch, fill, len(rows), state)

    def forward_ids(self, ids: np.ndarray, state: LlamaCppState) -> np.ndarray:
        """`forward` for token ids through llama.cpp's own embedding table: what llama.cpp's users run,
        the reference the embedding path is measured and tested against."""
        tokens = np.asarray(ids, dtype=np.int32)

        def fill(start: int, count: int) -> None:
            for i in range(count):
                self._token_batch.token[i] = int(tokens[start + i])

        return self._run(self._token_batch, fill, len(tokens), state)

    def _run(
        self, batch: llama_cpp.llama_batch, fill: Callable[[int, int], None], count: int, state: LlamaCppState
    ) -> np.ndarray:
        seq_id = state._own_sequence()
        llama_cpp.llama_memory_seq_rm(self._memory, seq_id, state.length, -1)
        for start in range(0, count, self._batch_size):
            size = min(self._batch_size, count - start)
            fill(start, size)
            batch.n_tokens = size
            for i in range(size):
                batch.pos[i] = state.length + i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = seq_id
                batch.logits[i] = 0
            batch.logits[size - 1] = int(start + size == count)
            status = llama_cpp.llama_decode(self._ctx, batch)
            if status != 0:
                raise RuntimeError(f"llama_decode failed ({status}): the context's {self.positions} positions are full")
            state.length += size
        logits = llama_cpp.llama_get_logits_ith(self._ctx, -1)
        return np.ctypeslib.as_array(logits, (self.vocab_size,)).copy()

    @property
    def positions(self) -> int:
        return llama_cpp.llama_n_ctx(self._ctx)
