"""The main decoder over `inputs_embeds`, with its KV cache kept inside ONNX Runtime.

ORT GenAI 0.18 has no public way to feed `inputs_embeds` to a qwen2 model (docs/ARCHITECTURE.md §3), so
the builder's `exclude_embeds` export runs in a plain InferenceSession. The present KV tensors
come back as OrtValues and are bound straight back as the next step's past, so the cache never
round-trips through numpy.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

_DEVICE = {"cpu": "cpu", "cuda": "cuda", "dml": "cpu"}


class DecoderState:
    """The KV cache of one generation; `length` is how many positions it holds.

    `Decoder.forward` never writes into the tensors it is given: it binds them as inputs and
    replaces `past` with the new present tensors. So a state's tensors can be shared by copies
    (an answer cache hands out `copy()`s of what it keeps) without one generation disturbing another.
    """

    def __init__(self, past: dict[str, ort.OrtValue], dtype: type[np.floating] = np.float32, length: int = 0) -> None:
        self.past = past
        self.dtype = dtype
        self.length = length

    def copy(self) -> DecoderState:
        """A state over the same tensors that can be run on without changing this one."""
        return DecoderState(dict(self.past), self.dtype, self.length)

    @property
    def nbytes(self) -> int:
        itemsize = np.dtype(self.dtype).itemsize
        return sum(int(np.prod(value.shape())) * itemsize for value in self.past.values())


class Decoder:
    def __init__(self, session: ort.InferenceSession, provider: str, head_size: int) -> None:
        self._session = session
        self._device = _DEVICE[provider]
        inputs = {i.name: i for i in session.get_inputs()}
        self.embeds_dtype = np.float16 if inputs["inputs_embeds"].type == "tensor(float16)" else np.float32
        self._past_names = [n for n in inputs if n.startswith("past_key_values.")]
        self._present_names = [o.name for o in session.get_outputs() if o.name.startswith("present.")]
        self._past_shapes = {n: (inputs[n].shape[1], head_size) for n in self._past_names}
        self._logits_name = "logits"

    def new_state(self) -> DecoderState:
        past = {
            name: ort.OrtValue.ortvalue_from_numpy(np.zeros((1, heads, 0, size), dtype=self.embeds_dtype))
            for name, (heads, size) in self._past_shapes.items()
        }
        return DecoderState(past, self.embeds_dtype)

    def prefix(self, state: DecoderState, length: int) -> DecoderState:
        """A new state holding the first `length` positions of `state` (copied: the KV of a
        position depends only on the positions up to it, so a prefix is exact)."""
        if not 0 < length <= state.length:
            raise ValueError(f"a prefix of {length} positions of a state that holds {state.length}")
        past = {
            name: ort.OrtValue.ortvalue_from_numpy(
                np.ascontiguousarray(value.numpy()[:, :, :length, :]), self._device, 0
            )
            for name, value in state.past.items()
        }
        return DecoderState(past, state.dtype, length)

    def forward(self, embeds: np.ndarray, state: DecoderState) -> np.ndarray:
        """Run `embeds` [seq, hidden] after the cached positions; return the last position's logits."""
        total = state.length + embeds.shape[0]
        binding = self._session.io_binding()
        binding.bind_cpu_input("inputs_embeds", np.ascontiguousarray(embeds[None], dtype=self.embeds_dtype))
        binding.bind_cpu_input("attention_mask", np.ones((1, total), dtype=np.int64))
        for name, value in state.past.items():
            binding.bind_ortvalue_input(name, value)
        binding.bind_output(self._logits_name, "cpu")
        for name in self._present_names:
            binding.bind_output(name, self._device)
        self._session.run_with_iobinding(binding)
        outputs = binding.get_outputs()
        logits = outputs[0].numpy()
        state.past = {
            n.replace("present.", "past_key_values.", 1): v
            for n, v in zip(self._present_names, outputs[1:], strict=True)
        }
        state.length = total
        return np.asarray(logits[0, -1], dtype=np.float32)
