"""Streaming int4 weight quantization of an fp32 ONNX model (MatMul -> MatMulNBits).

The ORT GenAI builder's own int4 path serialises the whole fp32 model into one in-memory proto
before quantizing it: ~12 GB of RAM for a 1.5B decoder, ~50 GB for Qwen2-7B. Here the fp32
export stays on disk, memory-mapped, and each weight is quantized and written out on its own, so
peak RAM is about one weight matrix. The kernels are ONNX Runtime's own (`quantize_matmul_4bits`,
the one MatMulNBitsQuantizer calls), so the result is the operator the builder would have emitted.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper
from onnxruntime.capi._pybind_state import quantize_matmul_4bits

MS_DOMAIN = "com.microsoft"
_NUMPY_OF = {
    TensorProto.FLOAT: np.float32,
    TensorProto.FLOAT16: np.float16,
    TensorProto.INT64: np.int64,
    TensorProto.INT32: np.int32,
    TensorProto.UINT8: np.uint8,
    TensorProto.INT8: np.int8,
    TensorProto.BOOL: np.bool_,
}


class _DataWriter:
    """Appends tensors to one external-data file and returns their locations."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._file = path.open("wb")
        self._offset = 0

    def add(self, name: str, array: np.ndarray, data_type: int) -> TensorProto:
        raw = np.ascontiguousarray(array).tobytes()
        padding = (-self._offset) % 64
        self._file.write(b"\0" * padding)
        self._offset += padding
        tensor = TensorProto(name=name, data_type=data_type, dims=list(array.shape))
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", self._path.name), ("offset", str(self._offset)), ("length", str(len(raw)))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        self._file.write(raw)
        self._offset += len(raw)
        return tensor

    def close(self) -> None:
        self._file.close()


def _read_initializer(tensor: TensorProto, base: Path, maps: dict[str, np.memmap]) -> np.ndarray:
    dtype = _NUMPY_OF[tensor.data_type]
    shape = tuple(tensor.dims)
    if tensor.data_location != TensorProto.EXTERNAL:
        return onnx.numpy_helper.to_array(tensor)
    info = {e.key: e.value for e in tensor.external_data}
    location = info["location"]
    if location not in maps:
        maps[location] = np.memmap(base / location, dtype=np.uint8, mode="r")
    offset, length = int(info.get("offset", 0)), int(info["length"])
    return maps[location][offset : offset + length].view(dtype).reshape(shape)


def quantize_int4(source: Path, target: Path, block_size: int = 32, accuracy_level: int = 4) -> None:
    """Write `target` (+ `target.name`.data): every MatMul with a 2-D fp32 weight becomes MatMulNBits.

    Symmetric blocks of 32 with int8 activations (accuracy level 4), the builder's CPU defaults.
    """
    model = onnx.load(str(source), load_external_data=False)
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    weight_users: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            weight_users[name] = weight_users.get(name, 0) + 1

    writer = _DataWriter(target.with_name(target.name + ".data"))
    maps: dict[str, np.memmap] = {}
    new_initializers: list[TensorProto] = []
    new_nodes = []
    quantized: set[str] = set()
    try:
        for node in graph.node:
            weight = initializers.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
            if (
                weight is None
                or weight.data_type != TensorProto.FLOAT
                or len(weight.dims) != 2
                or weight_users[weight.name] != 1
            ):
                new_nodes.append(node)
                continue
            k, n = weight.dims
            array = np.asarray(_read_initializer(weight, source.parent, maps), dtype=np.float32)
            k_blocks = (k + block_size - 1) // block_size
            padded = np.pad(array, ((0, k_blocks * block_size - k), (0, 0))) if k % block_size else array
            packed = np.zeros((n, k_blocks, block_size // 2), dtype=np.uint8)
            scales = np.zeros((n, k_blocks), dtype=np.float32)
            zero_points = np.zeros((n, (k_blocks + 1) // 2), dtype=np.uint8)
            quantize_matmul_4bits(packed, np.ascontiguousarray(padded), scales, zero_points, block_size, n, k, True)
            names = [f"{weight.name}_Q4", f"{weight.name}_scales"]
            new_initializers += [
                writer.add(names[0], packed, TensorProto.UINT8),
                writer.add(names[1], scales, TensorProto.FLOAT),
            ]
            new_nodes.append(
                helper.make_node(
                    "MatMulNBits",
                    [node.input[0], *names],
                    list(node.output),
                    name=node.name + "_Q4",
                    domain=MS_DOMAIN,
                    K=k,
                    N=n,
                    bits=4,
                    block_size=block_size,
                    accuracy_level=accuracy_level,
                )
            )
            quantized.add(weight.name)
        for tensor in graph.initializer:
            if tensor.name in quantized:
                continue
            if tensor.data_location != TensorProto.EXTERNAL:
                new_initializers.append(tensor)
            else:
                array = _read_initializer(tensor, source.parent, maps)
                new_initializers.append(writer.add(tensor.name, array, tensor.data_type))
    finally:
        writer.close()
        maps.clear()
    del graph.node[:]
    graph.node.extend(new_nodes)
    del graph.initializer[:]
    graph.initializer.extend(new_initializers)
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    onnx.save(model, str(target))
