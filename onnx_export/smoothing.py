"""SmoothQuant factors for an exported stack: move activation outliers into the weights.

Dynamic int8 quantization gives a whole activation matrix one scale, so a few large input
channels (trained models have them; random test weights do not) flatten every other channel to a
handful of levels. An RMSNorm's output feeds MatMuls only, so dividing the norm's weight by a
per-channel factor s and multiplying the matching weight rows by s changes nothing in exact
arithmetic, but evens out the channels the int8 kernel sees (Xiao et al., SmoothQuant, 2023).

    s_j = max|X_j| ** alpha / max|W_j| ** (1 - alpha)

max|X_j| comes from running the fp32 export on calibration inputs. On SmolLM2-135M (trained
weights, benchmarks/smollm2.py) with every MatMul dynamic int8, alpha 0.5, 0.7 and 0.85 left the
memory at cosine 0.980, 0.992 and 0.988 from fp32; with the int8 scheme the converter ships,
seeded random token ids calibrate almost as well as King James text (0.9980 against 0.9984),
so the converter needs no calibration corpus.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

# RMSNorms (no bias), and which input holds the weight. A norm with a bias would need the bias
# divided too; the exports this project makes use these two only.
NORM_WEIGHT_INPUT = {"SimplifiedLayerNormalization": 1, "SkipSimplifiedLayerNormalization": 2}
DEFAULT_ALPHA = 0.7


@dataclass(frozen=True)
class Smoothing:
    """Factors by initializer name: norm weights are divided by theirs, MatMul weights' rows
    (input channels) multiplied by theirs."""

    norm_divisors: dict[str, np.ndarray] = field(default_factory=dict)
    row_multipliers: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class _Group:
    norm_weight: str
    activation: str  # the norm's output, every consumer of which is a MatMul in `weights`
    weights: list[str]


def _groups(model: onnx.ModelProto) -> list[_Group]:
    """Norm -> MatMuls patterns where the rescaling is exact: the norm's output goes to MatMuls
    only, and each weight (and the norm's weight) is a 2-D or 1-D fp32 initializer used once."""
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    uses: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            uses.setdefault(name, []).append(node)
    graph_outputs = {o.name for o in graph.output}
    groups = []
    for node in graph.node:
        index = NORM_WEIGHT_INPUT.get(node.op_type)
        if index is None or len(node.input) <= index or not node.output:
            continue
        norm_weight, activation = node.input[index], node.output[0]
        consumers = uses.get(activation, [])
        weights = [c.input[1] for c in consumers if c.op_type == "MatMul" and c.input[0] == activation]
        if (
            norm_weight not in initializers
            or len(uses.get(norm_weight, [])) != 1
            or activation in graph_outputs
            or not consumers
            or len(weights) != len(consumers)
            or any(
                w not in initializers
                or initializers[w].data_type != TensorProto.FLOAT
                or len(initializers[w].dims) != 2
                or len(uses[w]) != 1
                for w in weights
            )
        ):
            continue
        groups.append(_Group(norm_weight, activation, weights))
    return groups


def _activation_maxima(path: Path, activations: list[str], feeds: Sequence[dict[str, np.ndarray]]) -> list[np.ndarray]:
    """Per-channel max |x| of each activation over the calibration feeds, from ONNX Runtime."""
    import onnxruntime as ort

    model = onnx.load(str(path), load_external_data=False)
    for name in activations:
        model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    probe = path.with_name("calibration-probe.onnx")  # beside the export, so its external data resolves
    onnx.save(model, str(probe))
    try:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(str(probe), options, providers=["CPUExecutionProvider"])
        maxima = [np.zeros(0, dtype=np.float32) for _ in activations]
        for feed in feeds:
            for index, value in enumerate(session.run(activations, feed)):
                channel_max = np.abs(value).reshape(-1, value.shape[-1]).max(axis=0)
                maxima[index] = channel_max if not maxima[index].size else np.maximum(maxima[index], channel_max)
        del session
    finally:
        probe.unlink(missing_ok=True)
    return maxima


def smoothing_factors(
    path: Path,
    feeds: Sequence[dict[str, np.ndarray]],
    read_weight: Callable[[str], np.ndarray],
    alpha: float = DEFAULT_ALPHA,
) -> Smoothing:
    """The factors for every norm -> MatMul group of the fp32 export at `path`.

    `read_weight(name)` returns an initializer as an array (the quantizer's memory-mapped reader),
    so no weight is loaded twice."""
    model = onnx.load(str(path), load_external_data=False)
    groups = _groups(model)
    if not groups:
        return Smoothing()
    maxima = _activation_maxima(path, [g.activation for g in groups], feeds)
    smoothing = Smoothing()
    for group, x_max in zip(groups, maxima, strict=True):
        w_max = np.max([np.abs(read_weight(w)).max(axis=1) for w in group.weights], axis=0)
        factors = np.maximum(x_max, 1e-5) ** alpha / np.maximum(w_max, 1e-5) ** (1 - alpha)
        factors = np.maximum(factors, 1e-5).astype(np.float32)
        smoothing.norm_divisors[group.norm_weight] = factors
        for weight in group.weights:
            smoothing.row_multipliers[weight] = factors
    return smoothing


def calibration_feeds(
    path: Path, token_ids: Sequence[Sequence[int]], num_kv_heads: int, head_size: int
) -> list[dict[str, np.ndarray]]:
    """Encoder feeds for each id sequence: the ids, a full attention mask, an empty KV cache
    (the export leaves the cache's head size symbolic, so the caller gives it)."""
    model = onnx.load(str(path), load_external_data=False)
    past = [v.name for v in model.graph.input if v.name.startswith("past_key_values.")]
    feeds = []
    for ids in token_ids:
        array = np.asarray([list(ids)], dtype=np.int64)
        feed = {"input_ids": array, "attention_mask": np.ones_like(array)}
        feed.update({name: np.zeros((1, num_kv_heads, 0, head_size), dtype=np.float32) for name in past})
        feeds.append(feed)
    return feeds
