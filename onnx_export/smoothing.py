"""SmoothQuant factors for an exported stack: move activation outliers into the weights.

Dynamic int8 quantization gives a whole activation matrix one scale, so a few large input
channels (trained models have them; random test weights do not) flatten every other channel to a
handful of levels. An RMSNorm's output feeds MatMuls only, so dividing the norm's weight by a
per-channel factor s and multiplying the matching weight rows by s changes nothing in exact
arithmetic, but evens out the channels the int8 kernel sees (Xiao et al., SmoothQuant, 2023).

    s_j = max|X_j| ** alpha / max|W_j| ** (1 - alpha)

max|X_j| comes from running the fp32 export on calibration inputs. On SmolLM2-135M (trained
weights, benchmarks/smollm2.py) with every MatMul dynamic int8, alpha 0.5, 0.7 and 0.85 left the
memory at cosine 0.980, 0.992 and 0.988 from fp32; with the int8 scheme the converter shipped
then (down projection as 8-bit blocks), seeded random token ids calibrated almost as well as
King James text (0.9980 against 0.9984), so the converter needs no calibration corpus.
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
    (input channels) multiplied by theirs, and (for a product's MatMul) columns divided by theirs."""

    norm_divisors: dict[str, np.ndarray] = field(default_factory=dict)
    row_multipliers: dict[str, np.ndarray] = field(default_factory=dict)
    column_divisors: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class _Group:
    activation: str  # every consumer of it is a MatMul in `weights`
    weights: list[str]
    norm_weight: str | None = None  # the RMSNorm that made `activation`, or
    producer_weight: str | None = None  # the MatMul whose output is one factor of the Mul that did


def _uses(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    uses: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            uses.setdefault(name, []).append(node)
    return uses


def _own_weights(names: list[str], initializers: dict, uses: dict) -> bool:
    """Each is a 2-D fp32 initializer that nothing else reads, so rescaling it is private."""
    return all(
        n in initializers
        and initializers[n].data_type == TensorProto.FLOAT
        and len(initializers[n].dims) == 2
        and len(uses[n]) == 1
        for n in names
    )


def _groups(model: onnx.ModelProto, products: bool) -> list[_Group]:
    """Patterns where the rescaling is exact. Norm -> MatMuls: the norm's output goes to MatMuls
    only. With `products`, also up -> Mul -> down (the SwiGLU MLP): dividing the up projection's
    output column j divides the product's channel j, which the down projection's row j undoes."""
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    uses = _uses(graph)
    producers = {output: node for node in graph.node for output in node.output}
    graph_outputs = {o.name for o in graph.output}
    groups = []
    for node in graph.node:
        if not node.output or node.output[0] in graph_outputs:
            continue
        activation = node.output[0]
        consumers = uses.get(activation, [])
        weights = [c.input[1] for c in consumers if c.op_type == "MatMul" and c.input[0] == activation]
        if not consumers or len(weights) != len(consumers) or not _own_weights(weights, initializers, uses):
            continue
        index = NORM_WEIGHT_INPUT.get(node.op_type)
        if index is not None and len(node.input) > index:
            norm_weight = node.input[index]
            if norm_weight in initializers and len(uses.get(norm_weight, [])) == 1:
                groups.append(_Group(activation, weights, norm_weight=norm_weight))
        elif products and node.op_type == "Mul":
            for factor in node.input:
                up = producers.get(factor)
                if (
                    up is not None
                    and up.op_type == "MatMul"
                    and len(uses.get(factor, [])) == 1
                    and _own_weights([up.input[1]], initializers, uses)
                ):
                    groups.append(_Group(activation, weights, producer_weight=up.input[1]))
                    break
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
    product_alpha: float | None = None,
) -> Smoothing:
    """The factors for every norm -> MatMul group of the fp32 export at `path` (and, given
    `product_alpha`, every up -> Mul -> down group).

    `read_weight(name)` returns an initializer as an array (the quantizer's memory-mapped reader),
    so no weight is loaded twice."""
    model = onnx.load(str(path), load_external_data=False)
    groups = _groups(model, products=product_alpha is not None)
    if not groups:
        return Smoothing()
    maxima = _activation_maxima(path, [g.activation for g in groups], feeds)
    smoothing = Smoothing()
    for group, x_max in zip(groups, maxima, strict=True):
        strength = alpha if group.norm_weight else product_alpha
        w_max = np.max([np.abs(read_weight(w)).max(axis=1) for w in group.weights], axis=0)
        factors = np.maximum(x_max, 1e-5) ** strength / np.maximum(w_max, 1e-5) ** (1 - strength)
        factors = np.maximum(factors, 1e-5).astype(np.float32)
        if group.norm_weight:
            smoothing.norm_divisors[group.norm_weight] = factors
        else:
            smoothing.column_divisors[group.producer_weight] = factors
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
