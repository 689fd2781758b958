"""One encoder, every precision: an fp32 export and the quantized variants made from it.

The converter's own functions make each variant (`run_builder`, `quantize_int4`, `quantize_int8`
with the converter's calibration), so a variant measured here is the file a bundle would hold.
The other int8 routes are built only to be measured against the one the converter ships; they
are what the choice in onnx_export/quantize.py was made from (the LLM.int8()-style outlier splits
of the down projection were tried and rejected: benchmarks/README.md, "Encoder precision").
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import onnx
from onnx import NodeProto, TensorProto, helper

from onnx_export.convert import calibration_ids, run_builder, stack_dims
from onnx_export.quantize import (
    DYNAMIC_INT8_PRODUCERS,
    _DataWriter,
    dynamic_int8,
    int8_rule,
    matmul_nbits,
    quantize_int4,
    quantize_int8,
    rewrite_matmuls,
    rowwise_int8,
    smoothing_for,
)
from onnx_export.smoothing import Smoothing, calibration_feeds

# The down projection's input channels kept in fp32 by the int8-outliers-sliced-* variants, in percent.
OUTLIER_PERCENTS = (1, 2, 5)
# SmoothQuant strengths tried for the down projection (through the up projection) before row-wise int8.
ROWWISE_PRODUCT_ALPHAS = (0.3, 0.5)
# name -> what it is; "fp32", "int4" and "int8" are what `--encoder-precision` makes.
VARIANTS = {
    "fp32": "fp32 export (ORT GenAI builder)",
    "int4": "MatMulNBits 4-bit, blocks of 32, accuracy level 4 (int8 compute)",
    "int8": "the converter's int8: SmoothQuant + DynamicQuantizeMatMul, down_proj MatMulInteger with u8 "
    "activations per row (token)",
    "int8-blocks": "the int8 scheme before: as int8, but down_proj MatMulNBits 8-bit, blocks of 128, accuracy level 4",
    "int8-no-smoothing": "int8 as shipped but without SmoothQuant",
    "int8-dynamic-all": "DynamicQuantizeMatMul for every MatMul, no smoothing (onnxruntime quantize_dynamic's route)",
    "int8-dynamic-smoothed": "DynamicQuantizeMatMul everywhere after SmoothQuant, down_proj's via up_proj (alpha 0.8)",
    "int8-nbits-32": "MatMulNBits 8-bit, blocks of 32, accuracy level 4, every MatMul",
    "int8-rowwise-all": "every MatMul as MatMulInteger with u8 activations per row, after the shipped SmoothQuant",
    **{
        f"int8-rowwise-smoothed-{alpha:g}": "int8 after SmoothQuant of down_proj through up_proj's columns "
        f"(alpha {alpha:g})"
        for alpha in ROWWISE_PRODUCT_ALPHAS
    },
    "int8-outliers-1": "int8 with down_proj split LLM.int8()-style: its top 1% input channels by calibrated max |x| "
    "in an fp32 MatMul, the rest DynamicQuantizeMatMul (Gather both ways, Add)",
    **{
        f"int8-outliers-sliced-{percent:g}": f"int8 with down_proj split LLM.int8()-style, top {percent:g}% input "
        "channels in fp32: gate/up columns permuted so they are contiguous, Slice both ways, Add"
        for percent in OUTLIER_PERCENTS
    },
}
CONVERTER_VARIANTS = ("fp32", "int8", "int4")


def encoder_checkpoint(dolphin_checkpoint: Path, out: Path) -> Path:
    """The Dolphin checkpoint's 0.5B encoder as a stock Qwen2 folder (the converter's split, encoder only)."""
    import torch  # noqa: F401 - safetensors' "pt" framework
    from safetensors import safe_open
    from safetensors.torch import save_file

    from onnx_export.checkpoint import ENCODER_PREFIX, open_checkpoint
    from onnx_export.convert import qwen2_config

    if (out / "model.safetensors").exists():
        return out
    checkpoint = open_checkpoint(str(dolphin_checkpoint))
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy2(checkpoint.root / "tokenizer.json", out / "tokenizer.json")
    (out / "config.json").write_text(json.dumps(qwen2_config(checkpoint.encoder_config), indent=2))
    tensors = {}
    for shard in checkpoint.shard_files:
        with safe_open(str(shard), framework="pt") as reader:
            for name in reader.keys():
                if name.startswith(ENCODER_PREFIX):
                    tensors["model." + name.removeprefix(ENCODER_PREFIX)] = reader.get_tensor(name)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def _dynamic_everywhere(source: Path, target: Path) -> None:
    rewrite_matmuls(source, target, lambda node, weight, _producer, writer: dynamic_int8(node, weight, writer))


def _dynamic_smoothed(source: Path, target: Path, feeds: list[dict]) -> None:
    """Every MatMul dynamic, with the down projection smoothed through the up projection's columns
    (alpha 0.8: the least error for it of 0.5 to 1.0 on SmolLM2)."""
    rewrite_matmuls(
        source,
        target,
        lambda node, weight, _producer, writer: dynamic_int8(node, weight, writer),
        smoothing_for(source, feeds, product_alpha=0.8),
    )


def _nbits8_everywhere(source: Path, target: Path) -> None:
    rewrite_matmuls(
        source, target, lambda node, weight, _producer, writer: matmul_nbits(node, weight, writer, 8, 32, 4)
    )


def _int8_blocks(source: Path, target: Path, feeds: list[dict]) -> None:
    """The int8 scheme before row-wise activations: the down projection as 8-bit MatMulNBits in
    blocks of 128 (activations quantized per block of each row inside the kernel)."""

    def rule(node: NodeProto, weight: np.ndarray, producer: str, writer: _DataWriter) -> NodeProto | list[NodeProto]:
        if producer in DYNAMIC_INT8_PRODUCERS:
            return dynamic_int8(node, weight, writer)
        return matmul_nbits(node, weight, writer, 8, 128, 4)

    rewrite_matmuls(source, target, rule, smoothing_for(source, feeds))


def _down_projections(source: Path) -> list[str]:
    """The weights of the MatMuls fed by a Mul, in graph order: the SwiGLU MLP's down projections."""
    graph = onnx.load(str(source), load_external_data=False).graph
    producers = {output: node.op_type for node in graph.node for output in node.output}
    return [node.input[1] for node in graph.node if node.op_type == "MatMul" and producers.get(node.input[0]) == "Mul"]


def _outlier_split(source: Path, target: Path, feeds: list[dict], percent: float) -> None:
    """The shipped int8 scheme, but each down projection as LLM.int8() splits it (Dettmers et al.,
    2022): its input channels with the largest calibrated max |x| (the SwiGLU outliers that a
    per-matrix u8 scale cannot hold) multiply their weight rows in fp32, the rest go through the
    VNNI DynamicQuantizeMatMul, and an Add joins the two (Gather picks each part's channels).

    The calibration is the smoothing's own: smoothing through the up projections at alpha 1 makes
    each down projection's row factor exactly its input's per-channel max |x|. Those factors only
    rank the channels; the down weights are not rescaled, the norms are smoothed as shipped."""
    downs = _down_projections(source)
    calibrated = smoothing_for(source, feeds, product_alpha=1.0)
    smoothing = Smoothing(
        norm_divisors=calibrated.norm_divisors,
        row_multipliers={name: f for name, f in calibrated.row_multipliers.items() if name not in downs},
    )
    before: dict[str, list[NodeProto]] = {}

    def rule(node: NodeProto, weight: np.ndarray, producer: str, writer: _DataWriter) -> NodeProto:
        if node.input[1] not in downs:
            return int8_rule(node, weight, producer, writer)
        x_max = calibrated.row_multipliers[node.input[1]]
        count = max(1, round(len(x_max) * percent / 100))
        outliers = np.sort(np.argsort(x_max)[-count:])
        normal = np.setdiff1d(np.arange(len(x_max)), outliers)
        stem, x = node.input[1], node.input[0]
        for name, rows in (("normal", normal), ("outlier", outliers)):
            writer.add(f"{stem}_{name}_channels", rows.astype(np.int64), TensorProto.INT64)
        writer.add(f"{stem}_outlier_rows", np.ascontiguousarray(weight[outliers]), TensorProto.FLOAT)
        normal_part = helper.make_node("MatMul", [f"{x}_normal", f"{stem}_normal"], [f"{x}_normal_out"], name=node.name)
        before[node.output[0]] = [
            helper.make_node(
                "Gather", [x, f"{stem}_normal_channels"], [f"{x}_normal"], name=f"{node.name}_normal", axis=-1
            ),
            helper.make_node(
                "Gather", [x, f"{stem}_outlier_channels"], [f"{x}_outlier"], name=f"{node.name}_outlier", axis=-1
            ),
            dynamic_int8(normal_part, np.ascontiguousarray(weight[normal]), writer),
            helper.make_node(
                "MatMul", [f"{x}_outlier", f"{stem}_outlier_rows"], [f"{x}_outlier_out"], name=f"{node.name}_fp32"
            ),
        ]
        return helper.make_node(
            "Add", [f"{x}_normal_out", f"{x}_outlier_out"], list(node.output), name=f"{node.name}_join"
        )

    rewrite_matmuls(source, target, rule, smoothing)
    _insert_before(target, before)


def _mlp_inputs(source: Path) -> dict[str, set[str]]:
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


def _outlier_slice(source: Path, target: Path, feeds: list[dict], percent: float) -> None:
    """`_outlier_split` with the channels made contiguous instead of gathered: the gate and up
    projections' output columns (and the down projection's rows) are permuted so the outlier
    channels come last, and two Slices (row-segment copies) replace the Gathers (element copies,
    as much time as the int8 product itself in ONNX Runtime's profile). Exact in fp32."""
    feeding = _mlp_inputs(source)
    calibrated = smoothing_for(source, feeds, product_alpha=1.0)
    smoothing = Smoothing(
        norm_divisors=calibrated.norm_divisors,
        row_multipliers={name: f for name, f in calibrated.row_multipliers.items() if name not in feeding},
    )
    order, kept = {}, {}
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
        weight, x = weight[order[stem]], node.input[0]
        # Slice's bounds must be readable at load time for shape inference: Constants, not external data.
        bounds = {"start0": 0, "end0": kept[stem], "start1": kept[stem], "end1": len(order[stem]), "axis": -1}
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
        writer.add(f"{stem}_outlier_rows", np.ascontiguousarray(weight[kept[stem] :]), TensorProto.FLOAT)
        normal_part = helper.make_node("MatMul", [f"{x}_normal", f"{stem}_normal"], [f"{x}_normal_out"], name=node.name)
        before[node.output[0]] = [
            *constants,
            *(
                helper.make_node(
                    "Slice",
                    [x, f"{stem}_start{index}", f"{stem}_end{index}", f"{stem}_axis"],
                    [f"{x}_{part}"],
                    name=f"{node.name}_{part}",
                )
                for index, part in enumerate(("normal", "outlier"))
            ),
            dynamic_int8(normal_part, np.ascontiguousarray(weight[: kept[stem]]), writer),
            helper.make_node(
                "MatMul", [f"{x}_outlier", f"{stem}_outlier_rows"], [f"{x}_outlier_out"], name=f"{node.name}_fp32"
            ),
        ]
        return helper.make_node(
            "Add", [f"{x}_normal_out", f"{x}_outlier_out"], list(node.output), name=f"{node.name}_join"
        )

    rewrite_matmuls(source, target, rule, smoothing)
    _insert_before(target, before)


def _insert_before(target: Path, before: dict[str, list[NodeProto]]) -> None:
    """Put each rule's extra nodes ahead of the node whose first output keys them (topological order)."""
    model = onnx.load(str(target), load_external_data=False)
    nodes = [n for node in model.graph.node for n in (*before.get(node.output[0] if node.output else "", []), node)]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.save(model, str(target))


def build_variants(
    hf_dir: Path, work: Path, memory_ids: list[int], names: tuple[str, ...] = tuple(VARIANTS)
) -> dict[str, Path]:
    """Export `hf_dir` once in fp32, derive each variant; return name -> model.onnx (cached in `work`)."""
    fp32 = work / "fp32" / "model.onnx"
    if not fp32.exists():
        work.mkdir(parents=True, exist_ok=True)
        run_builder(hf_dir, fp32.parent, "fp32", "cpu", {"exclude_lm_head": "true"}, work / "builder.log")
    dims = stack_dims(json.loads((hf_dir / "config.json").read_text()))
    positions = int(json.loads((hf_dir / "config.json").read_text())["max_position_embeddings"])
    ids = calibration_ids(hf_dir / "tokenizer.json", memory_ids, positions - len(memory_ids))
    feeds = calibration_feeds(fp32, ids, dims["num_kv_heads"], dims["head_size"])
    makers: dict[str, Callable[[Path, Path], None]] = {
        "int4": quantize_int4,
        "int8": lambda source, target: quantize_int8(source, target, feeds),
        "int8-no-smoothing": quantize_int8,
        "int8-dynamic-all": _dynamic_everywhere,
        "int8-dynamic-smoothed": lambda source, target: _dynamic_smoothed(source, target, feeds),
        "int8-nbits-32": _nbits8_everywhere,
        "int8-outliers-1": partial(_outlier_split, feeds=feeds, percent=1),
        "int8-blocks": partial(_int8_blocks, feeds=feeds),
        "int8-rowwise-all": lambda source, target: rewrite_matmuls(
            source,
            target,
            lambda node, weight, _producer, writer: rowwise_int8(node, weight, writer),
            smoothing_for(source, feeds),
        ),
        **{
            f"int8-rowwise-smoothed-{alpha:g}": lambda source, target, alpha=alpha: rewrite_matmuls(
                source, target, int8_rule, smoothing_for(source, feeds, product_alpha=alpha)
            )
            for alpha in ROWWISE_PRODUCT_ALPHAS
        },
        **{
            f"int8-outliers-sliced-{percent:g}": partial(_outlier_slice, feeds=feeds, percent=percent)
            for percent in OUTLIER_PERCENTS
        },
    }
    paths = {"fp32": fp32}
    for name in names:
        if name == "fp32":
            continue
        target = work / name / "model.onnx"
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            makers[name](fp32, target)
        paths[name] = target
    return {name: paths[name] for name in names}
