"""Streaming weight quantization of an fp32 ONNX export: int4 and int8 encoders and decoders.

The ORT GenAI builder's own int4 path serialises the whole fp32 model into one in-memory proto
before quantizing it: ~12 GB of RAM for a 1.5B decoder, ~50 GB for Qwen2-7B. Here the fp32
export stays on disk, memory-mapped, and each weight is quantized and written out on its own, so
peak RAM is about one weight matrix. The kernels are ONNX Runtime's own (`quantize_matmul_4bits`
and `quantize_matmul_8bits`, the ones MatMulNBitsQuantizer calls).

Two schemes (measured in benchmarks/encoder_precision.py, docs in benchmarks/README.md):

* int4: MatMulNBits, symmetric blocks of 32, int8 activations (accuracy level 4), the builder's
  CPU defaults.
* int8: every MatMul fed by an RMSNorm or by attention becomes DynamicQuantizeMatMul (weights
  int8 per output column, activations u8 per matrix, quantized at run time: the VNNI u8 x s8
  kernel), after SmoothQuant moved the norms' activation outliers into the weights
  (onnx_export/smoothing.py). The rest (the MLP's down projection, whose input carries the
  trained model's largest outliers and no norm to fold them into) become MatMulInteger on the
  same kernel with the activations quantized per row, one scale per token (`rowwise_int8`).
  Dynamic quantization alone, without both, was 6x further from fp32 than int4 on trained
  weights; the down projection as 8-bit MatMulNBits blocks (the scheme before) was as close
  to fp32 but took twice as long.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import NodeProto, TensorProto, helper
from onnxruntime.capi._pybind_state import quantize_matmul_4bits, quantize_matmul_8bits

from onnx_export.smoothing import Smoothing, smoothing_factors

MS_DOMAIN = "com.microsoft"
INT4_BLOCK = 32
ACCURACY_INT8_COMPUTE = 4
# Activations that are bounded per token (a norm's output, attention's convex mix of values):
# a per-matrix u8 scale keeps them well resolved once smoothed.
DYNAMIC_INT8_PRODUCERS = frozenset(
    {"SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization", "GroupQueryAttention", "MultiHeadAttention"}
)
INT8_SCHEME = (
    "int8: SmoothQuant alpha 0.7 (random-token calibration) + DynamicQuantizeMatMul (per-column s8 weights) "
    "after norms and attention; MatMulInteger with u8 activations quantized per row (token) elsewhere"
)
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
    """Appends tensors to one external-data file; `written` holds the initializers pointing there."""

    def __init__(self, path: Path, opset: int = 21) -> None:
        self._path = path
        self.opset = opset  # the model's default-domain opset: some node forms differ by opset
        self._file = path.open("wb")
        self._offset = 0
        self.written: list[TensorProto] = []

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
        self.written.append(tensor)
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


# (MatMul node, its fp32 weight [K, N], the op that produced its activation, writer) -> the node(s)
# replacing it, in order
WeightRule = Callable[[NodeProto, np.ndarray, str, _DataWriter], "NodeProto | list[NodeProto]"]


def matmul_nbits(
    node: NodeProto,
    weight: np.ndarray,
    writer: _DataWriter,
    bits: int,
    block_size: int,
    accuracy_level: int,
    symmetric: bool = True,
) -> NodeProto:
    """MatMulNBits with blocks along K: symmetric (zero points implied), or with a zero point per
    block so each block's scale spans its min..max."""
    k, n = weight.shape
    k_blocks = (k + block_size - 1) // block_size
    padded = np.pad(weight, ((0, k_blocks * block_size - k), (0, 0))) if k % block_size else weight
    packed = np.zeros((n, k_blocks, block_size * bits // 8), dtype=np.uint8)
    scales = np.zeros((n, k_blocks), dtype=np.float32)
    zero_points = np.zeros((n, (k_blocks * bits + 7) // 8), dtype=np.uint8)
    kernel = quantize_matmul_4bits if bits == 4 else quantize_matmul_8bits
    kernel(packed, np.ascontiguousarray(padded), scales, zero_points, block_size, n, k, symmetric)
    stem = node.input[1]
    names = [f"{stem}_Q{bits}", f"{stem}_scales"]
    writer.add(names[0], packed, TensorProto.UINT8)
    writer.add(names[1], scales, TensorProto.FLOAT)
    if not symmetric:
        names.append(f"{stem}_zero_points")
        writer.add(names[2], zero_points, TensorProto.UINT8)
    return helper.make_node(
        "MatMulNBits",
        [node.input[0], *names],
        list(node.output),
        name=f"{node.name}_Q{bits}",
        domain=MS_DOMAIN,
        K=k,
        N=n,
        bits=bits,
        block_size=block_size,
        accuracy_level=accuracy_level,
    )


def _s8_columns(stem: str, weight: np.ndarray, writer: _DataWriter) -> list[str]:
    """Write `weight` as s8 with one symmetric scale per output column; returns the two names."""
    scales = np.abs(weight).max(axis=0) / 127.0
    scales = np.where(scales > 0, scales, 1.0).astype(np.float32)
    names = [f"{stem}_s8", f"{stem}_scales"]
    writer.add(names[0], np.clip(np.rint(weight / scales), -127, 127).astype(np.int8), TensorProto.INT8)
    writer.add(names[1], scales, TensorProto.FLOAT)
    return names


def dynamic_int8(node: NodeProto, weight: np.ndarray, writer: _DataWriter) -> NodeProto:
    """DynamicQuantizeMatMul: s8 weights with one scale per output column, u8 activations
    quantized per call; ONNX Runtime runs it on its VNNI/AVX2 u8 x s8 GEMM."""
    names = _s8_columns(node.input[1], weight, writer)
    return helper.make_node(
        "DynamicQuantizeMatMul", [node.input[0], *names], list(node.output), name=f"{node.name}_s8", domain=MS_DOMAIN
    )


def rowwise_int8(node: NodeProto, weight: np.ndarray, writer: _DataWriter) -> list[NodeProto]:
    """MatMulInteger with u8 activations quantized per row (per token) at run time, s8 weights per
    output column: the VNNI u8 x s8 GEMM of DynamicQuantizeMatMul, but one activation scale per
    token instead of per matrix. A trained model's down projection sees a few tokens with inputs
    hundreds of times larger than the rest; one scale for the matrix leaves every other token a
    handful of levels, one per row does not. Standard ONNX ops only (opset 15+): the rows are
    flattened to [M, K], scaled symmetrically around the zero point 128, and the int32 product
    is rescaled by the row's and the column's scale."""
    k, n = weight.shape
    stem, x, name = node.input[1], node.input[0], node.name
    _s8_columns(stem, weight, writer)

    def constant(key: str, value: np.ndarray) -> NodeProto:
        return helper.make_node(
            "Constant", [], [f"{stem}_{key}"], name=f"{name}_{key}", value=onnx.numpy_helper.from_array(value)
        )

    def op(op_type: str, inputs: list[str], output: str, **attributes: object) -> NodeProto:
        return helper.make_node(op_type, inputs, [f"{stem}_{output}"], name=f"{name}_{output}", **attributes)

    def local(*names: str) -> list[str]:
        return [f"{stem}_{key}" for key in names]

    # Reductions take their axes as an input from opset 18, as an attribute before.
    axes_input = writer.opset >= 18

    def reduce(op_type: str, output: str) -> NodeProto:
        if axes_input:
            return op(op_type, local("x2", "row_axis"), output, keepdims=1)
        return op(op_type, local("x2"), output, keepdims=1, axes=[1])

    return [
        constant("rows_k", np.array([-1, k], dtype=np.int64)),
        constant("flat", np.array([-1], dtype=np.int64)),
        *([constant("row_axis", np.array([1], dtype=np.int64))] if axes_input else []),
        constant("levels", np.array(127.0, dtype=np.float32)),
        constant("floor", np.array(1e-12, dtype=np.float32)),
        constant("zero_point", np.array(128, dtype=np.uint8)),
        constant("n", np.array([n], dtype=np.int64)),
        helper.make_node("Reshape", [x, f"{stem}_rows_k"], [f"{stem}_x2"], name=f"{name}_x2"),
        reduce("ReduceMax", "row_max"),
        reduce("ReduceMin", "row_min"),
        op("Neg", local("row_min"), "row_min_neg"),
        op("Max", local("row_max", "row_min_neg", "floor"), "row_abs_max"),
        op("Div", local("row_abs_max", "levels"), "row_scale"),
        op("Reshape", local("row_scale", "flat"), "row_scale_flat"),
        op("Shape", local("row_scale_flat"), "rows"),
        op("Expand", local("zero_point", "rows"), "row_zero_points"),
        op("QuantizeLinear", local("x2", "row_scale_flat", "row_zero_points"), "x_u8", axis=0),
        op("MatMulInteger", [f"{stem}_x_u8", f"{stem}_s8", f"{stem}_zero_point"], "product_i32"),
        op("Cast", local("product_i32"), "product", to=TensorProto.FLOAT),
        op("Mul", local("product", "row_scale"), "product_rows"),
        op("Mul", local("product_rows", "scales"), "y2"),
        op("Shape", [x], "x_shape", end=-1),
        op("Concat", local("x_shape", "n"), "y_shape", axis=0),
        # allowzero: an empty sequence's 0 is a size here, not "copy the input's dimension".
        helper.make_node("Reshape", local("y2", "y_shape"), list(node.output), name=f"{name}_rowwise", allowzero=1),
    ]


def int4_rule(node: NodeProto, weight: np.ndarray, _producer: str, writer: _DataWriter) -> NodeProto:
    return matmul_nbits(node, weight, writer, 4, INT4_BLOCK, ACCURACY_INT8_COMPUTE)


def int8_rule(node: NodeProto, weight: np.ndarray, producer: str, writer: _DataWriter) -> NodeProto | list[NodeProto]:
    if producer in DYNAMIC_INT8_PRODUCERS:
        return dynamic_int8(node, weight, writer)
    return rowwise_int8(node, weight, writer)


def rewrite_matmuls(source: Path, target: Path, rule: WeightRule, smoothing: Smoothing | None = None) -> None:
    """Write `target` (+ `target.name`.data): every MatMul with a 2-D fp32 weight of its own goes
    through `rule`; smoothing factors are applied to weights and norms on the way."""
    smoothing = smoothing or Smoothing()
    model = onnx.load(str(source), load_external_data=False)
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    weight_users: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            weight_users[name] = weight_users.get(name, 0) + 1
    producers = {output: node.op_type for node in graph.node for output in node.output}

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 21)
    writer = _DataWriter(target.with_name(target.name + ".data"), opset)
    maps: dict[str, np.memmap] = {}
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
            array = np.asarray(_read_initializer(weight, source.parent, maps), dtype=np.float32)
            if weight.name in smoothing.row_multipliers:
                array = array * smoothing.row_multipliers[weight.name][:, None]
            if weight.name in smoothing.column_divisors:
                array = array / smoothing.column_divisors[weight.name][None, :]
            replacement = rule(node, array, producers.get(node.input[0], ""), writer)
            new_nodes.extend(replacement if isinstance(replacement, list) else [replacement])
            quantized.add(weight.name)
        inline: list[TensorProto] = []
        for tensor in graph.initializer:
            if tensor.name in quantized:
                continue
            if tensor.name in smoothing.norm_divisors:
                array = _read_initializer(tensor, source.parent, maps) / smoothing.norm_divisors[tensor.name]
                writer.add(tensor.name, array.astype(np.float32), TensorProto.FLOAT)
            elif tensor.data_location != TensorProto.EXTERNAL:
                inline.append(tensor)
            else:
                writer.add(tensor.name, _read_initializer(tensor, source.parent, maps), tensor.data_type)
    finally:
        writer.close()
        maps.clear()
    new_initializers = [*inline, *writer.written]
    del graph.node[:]
    graph.node.extend(new_nodes)
    del graph.initializer[:]
    graph.initializer.extend(new_initializers)
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    onnx.save(model, str(target))


def quantize_int4(source: Path, target: Path) -> None:
    """`target` with every MatMul as MatMulNBits int4 (symmetric blocks of 32, accuracy level 4)."""
    rewrite_matmuls(source, target, int4_rule)


def smoothing_for(
    source: Path, calibration: Sequence[dict[str, np.ndarray]], product_alpha: float | None = None
) -> Smoothing:
    """SmoothQuant factors for the fp32 export at `source`, read through the memory map."""
    maps: dict[str, np.memmap] = {}
    initializers = {t.name: t for t in onnx.load(str(source), load_external_data=False).graph.initializer}
    try:
        return smoothing_factors(
            source,
            calibration,
            lambda name: np.asarray(_read_initializer(initializers[name], source.parent, maps), dtype=np.float32),
            product_alpha=product_alpha,
        )
    finally:
        maps.clear()


def quantize_int8(source: Path, target: Path, calibration: Sequence[dict[str, np.ndarray]] = ()) -> None:
    """`target` with the int8 scheme above; `calibration` (feeds for the fp32 model at `source`)
    enables SmoothQuant, without it the norms are left as they are."""
    rewrite_matmuls(source, target, int8_rule, smoothing_for(source, calibration) if calibration else None)
