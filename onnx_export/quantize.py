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
  (onnx_export/smoothing.py). The MLP's down projection, whose input carries the trained model's
  largest outliers and no norm to fold them into, is split LLM.int8()-style: its top 5% input
  channels by calibrated max |x| stay in fp32, the rest go through DynamicQuantizeMatMul too
  (`quantize_int8_outliers`). Both are calibrated on real text (onnx_export/calibration.txt):
  random tokens pick the wrong outlier channels. The split ran at 72% of the int8 GEMM limit
  where the earlier down projection as MatMulNBits 8-bit/128 (`quantize_int8_blocks`, whose
  activations are quantized per block of each row) ran at 59%, and stays within the documented
  distance of fp32 on text it was not calibrated on, narrowly (benchmarks/README.md). Dynamic
  quantization alone, without smoothing or the split, was 6x further from fp32 than int4 on
  trained weights.
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
INT8_BLOCK = 128  # for the MatMulNBits part of int8: cosine 0.9982 vs 0.9980 at 256, 2% slower
# The down projections' input channels kept in fp32 (the largest calibrated max |x|), in percent.
OUTLIER_PERCENT = 5
ACCURACY_INT8_COMPUTE = 4
# Activations that are bounded per token (a norm's output, attention's convex mix of values):
# a per-matrix u8 scale keeps them well resolved once smoothed.
DYNAMIC_INT8_PRODUCERS = frozenset(
    {"SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization", "GroupQueryAttention", "MultiHeadAttention"}
)
INT8_SCHEME = (
    "int8: SmoothQuant alpha 0.7 (King James calibration text) + DynamicQuantizeMatMul (per-column s8 weights) "
    f"after norms and attention; down projections split, top {OUTLIER_PERCENT}% input channels by calibrated "
    "max |x| in fp32 (Slice), the rest DynamicQuantizeMatMul"
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

    def __init__(self, path: Path) -> None:
        self._path = path
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


# (MatMul node, its fp32 weight [K, N], the op that produced its activation, writer) -> replacement
WeightRule = Callable[[NodeProto, np.ndarray, str, _DataWriter], NodeProto]


def matmul_nbits(
    node: NodeProto, weight: np.ndarray, writer: _DataWriter, bits: int, block_size: int, accuracy_level: int
) -> NodeProto:
    """MatMulNBits with symmetric blocks along K (zero points implied)."""
    k, n = weight.shape
    k_blocks = (k + block_size - 1) // block_size
    padded = np.pad(weight, ((0, k_blocks * block_size - k), (0, 0))) if k % block_size else weight
    packed = np.zeros((n, k_blocks, block_size * bits // 8), dtype=np.uint8)
    scales = np.zeros((n, k_blocks), dtype=np.float32)
    zero_points = np.zeros((n, (k_blocks * bits + 7) // 8), dtype=np.uint8)
    kernel = quantize_matmul_4bits if bits == 4 else quantize_matmul_8bits
    kernel(packed, np.ascontiguousarray(padded), scales, zero_points, block_size, n, k, True)
    stem = node.input[1]
    names = [f"{stem}_Q{bits}", f"{stem}_scales"]
    writer.add(names[0], packed, TensorProto.UINT8)
    writer.add(names[1], scales, TensorProto.FLOAT)
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


def dynamic_int8(node: NodeProto, weight: np.ndarray, writer: _DataWriter) -> NodeProto:
    """DynamicQuantizeMatMul: s8 weights with one scale per output column, u8 activations
    quantized per call; ONNX Runtime runs it on its VNNI/AVX2 u8 x s8 GEMM."""
    scales = np.abs(weight).max(axis=0) / 127.0
    scales = np.where(scales > 0, scales, 1.0).astype(np.float32)
    quantized = np.clip(np.rint(weight / scales), -127, 127).astype(np.int8)
    stem = node.input[1]
    names = [f"{stem}_s8", f"{stem}_scales"]
    writer.add(names[0], quantized, TensorProto.INT8)
    writer.add(names[1], scales, TensorProto.FLOAT)
    return helper.make_node(
        "DynamicQuantizeMatMul", [node.input[0], *names], list(node.output), name=f"{node.name}_s8", domain=MS_DOMAIN
    )


def int4_rule(node: NodeProto, weight: np.ndarray, _producer: str, writer: _DataWriter) -> NodeProto:
    return matmul_nbits(node, weight, writer, 4, INT4_BLOCK, ACCURACY_INT8_COMPUTE)


def int8_rule(node: NodeProto, weight: np.ndarray, producer: str, writer: _DataWriter) -> NodeProto:
    if producer in DYNAMIC_INT8_PRODUCERS:
        return dynamic_int8(node, weight, writer)
    return matmul_nbits(node, weight, writer, 8, INT8_BLOCK, ACCURACY_INT8_COMPUTE)


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

    writer = _DataWriter(target.with_name(target.name + ".data"))
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
            new_nodes.append(rule(node, array, producers.get(node.input[0], ""), writer))
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


def mlp_inputs(source: Path) -> dict[str, set[str]]:
    """Down projection weight -> the weights of the MatMuls (gate, up) whose output columns make
    its input channels through elementwise ops only (SiLU as Sigmoid and Mul, the gating Mul)."""
    graph = onnx.load(str(source), load_external_data=False).graph
    producers = {output: node for node in graph.node for output in node.output}
    feeding: dict[str, set[str]] = {}
    for node in graph.node:
        if node.op_type != "MatMul" or getattr(producers.get(node.input[0]), "op_type", "") != "Mul":
            continue
        weights: set[str] = set()
        pending = list(producers[node.input[0]].input)
        while pending:
            producer = producers.get(pending.pop())
            if producer is not None and producer.op_type == "MatMul":
                weights.add(producer.input[1])
            elif producer is not None and producer.op_type in {"Mul", "Sigmoid", "QuickGelu"}:
                pending.extend(producer.input)
        feeding[node.input[1]] = weights
    return feeding


def _insert_before(target: Path, before: dict[str, list[NodeProto]]) -> None:
    """Put each rule's extra nodes ahead of the node whose first output keys them (topological order)."""
    model = onnx.load(str(target), load_external_data=False)
    nodes = [n for node in model.graph.node for n in (*before.get(node.output[0] if node.output else "", []), node)]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.save(model, str(target))


def _split_down_projection(
    node: NodeProto, weight: np.ndarray, kept: int, writer: _DataWriter
) -> tuple[list[NodeProto], NodeProto]:
    """The nodes ahead of, and the Add replacing, a down projection whose rows past `kept` are its
    outlier channels: Slice both ways, DynamicQuantizeMatMul for the rest, fp32 MatMul for them."""
    stem, x = node.input[1], node.input[0]
    # Slice's bounds must be readable at load time for shape inference: Constants, not external data.
    bounds = {"start0": 0, "end0": kept, "start1": kept, "end1": weight.shape[0], "axis": -1}
    constants = [
        helper.make_node(
            "Constant",
            [],
            [f"{stem}_{key}"],
            name=f"{node.name}_{key}",
            value=helper.make_tensor(f"{stem}_{key}_value", TensorProto.INT64, [1], [value]),
        )
        for key, value in bounds.items()
    ]
    writer.add(f"{stem}_outlier_rows", np.ascontiguousarray(weight[kept:]), TensorProto.FLOAT)
    normal_part = helper.make_node("MatMul", [f"{x}_normal", f"{stem}_normal"], [f"{x}_normal_out"], name=node.name)
    slices = [
        helper.make_node(
            "Slice",
            [x, f"{stem}_start{index}", f"{stem}_end{index}", f"{stem}_axis"],
            [f"{x}_{part}"],
            name=f"{node.name}_{part}",
        )
        for index, part in enumerate(("normal", "outlier"))
    ]
    before = [
        *constants,
        *slices,
        dynamic_int8(normal_part, np.ascontiguousarray(weight[:kept]), writer),
        helper.make_node(
            "MatMul", [f"{x}_outlier", f"{stem}_outlier_rows"], [f"{x}_outlier_out"], name=f"{node.name}_fp32"
        ),
    ]
    join = helper.make_node("Add", [f"{x}_normal_out", f"{x}_outlier_out"], list(node.output), name=f"{node.name}_join")
    return before, join


def quantize_int8_outliers(
    source: Path, target: Path, calibration: Sequence[dict[str, np.ndarray]], percent: float = OUTLIER_PERCENT
) -> None:
    """The int8 scheme with each down projection split as LLM.int8() splits it (Dettmers et al.,
    2022): its `percent` input channels with the largest calibrated max |x| (the SwiGLU outliers
    that a per-matrix u8 scale cannot hold) multiply their weight rows in fp32, the rest go
    through the VNNI DynamicQuantizeMatMul, and an Add joins the two. The gate and up
    projections' output columns (and the down projection's rows) are permuted so the outliers
    come last and two Slices (row-segment copies) cut them out; Gathers (element copies) cost as
    much as the int8 product itself. The permutation is exact in fp32.

    The ranking is the smoothing's own calibration: smoothing through the up projections at
    alpha 1 makes each down projection's row factor exactly its input's per-channel max |x|.
    Those factors only rank the channels; the norms are smoothed as in `quantize_int8_blocks`."""
    feeding = mlp_inputs(source)
    calibrated = smoothing_for(source, calibration, product_alpha=1.0)
    smoothing = Smoothing(
        norm_divisors=calibrated.norm_divisors,
        row_multipliers={name: f for name, f in calibrated.row_multipliers.items() if name not in feeding},
    )
    order: dict[str, np.ndarray] = {}
    kept: dict[str, int] = {}
    for down, inputs in feeding.items():
        x_max = calibrated.row_multipliers[down]
        count = max(1, round(len(x_max) * percent / 100))
        outliers = np.sort(np.argsort(x_max)[-count:])
        order[down] = np.concatenate([np.setdiff1d(np.arange(len(x_max)), outliers), outliers])
        kept[down] = len(x_max) - count
        order.update(dict.fromkeys(inputs, order[down]))
    before: dict[str, list[NodeProto]] = {}

    def rule(node: NodeProto, weight: np.ndarray, producer: str, writer: _DataWriter) -> NodeProto:
        stem = node.input[1]
        if stem not in kept:
            permuted = weight[:, order[stem]] if stem in order else weight
            return int8_rule(node, np.ascontiguousarray(permuted), producer, writer)
        before[node.output[0]], join = _split_down_projection(node, weight[order[stem]], kept[stem], writer)
        return join

    rewrite_matmuls(source, target, rule, smoothing)
    _insert_before(target, before)


def quantize_int8_blocks(source: Path, target: Path, calibration: Sequence[dict[str, np.ndarray]] = ()) -> None:
    """The int8 scheme before the outlier split: the down projections as MatMulNBits 8-bit/128.
    `calibration` enables SmoothQuant; without it the norms are left as they are."""
    rewrite_matmuls(source, target, int8_rule, smoothing_for(source, calibration) if calibration else None)


def quantize_int8(source: Path, target: Path, calibration: Sequence[dict[str, np.ndarray]]) -> None:
    """`target` with the converter's int8 scheme (module docstring): SmoothQuant and the outlier
    split, both calibrated on `calibration` (feeds for the fp32 model at `source`)."""
    if not calibration:
        raise ValueError("the int8 scheme needs calibration feeds: they pick the down projections' fp32 channels")
    quantize_int8_outliers(source, target, calibration, OUTLIER_PERCENT)
