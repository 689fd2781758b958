"""One encoder, every precision: an fp32 export and the quantized variants made from it.

The converter's own functions make each variant (`run_builder`, `quantize_int4`, `quantize_int8`
with the converter's calibration), so a variant measured here is the file a bundle would hold.
Three more int8 routes are built only to be measured against the one the converter ships; they
are what the choice in onnx_export/quantize.py was made from.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

from onnx_export.convert import calibration_ids, run_builder, stack_dims
from onnx_export.quantize import (
    dynamic_int8,
    matmul_nbits,
    quantize_int4,
    quantize_int8,
    rewrite_matmuls,
    smoothing_for,
)
from onnx_export.smoothing import calibration_feeds

# name -> what it is; "fp32", "int4" and "int8" are what `--encoder-precision` makes.
VARIANTS = {
    "fp32": "fp32 export (ORT GenAI builder)",
    "int4": "MatMulNBits 4-bit, blocks of 32, accuracy level 4 (int8 compute)",
    "int8": "the converter's int8: SmoothQuant + DynamicQuantizeMatMul, MatMulNBits 8-bit/128 for down_proj",
    "int8-no-smoothing": "int8 as shipped but without SmoothQuant",
    "int8-dynamic-all": "DynamicQuantizeMatMul for every MatMul, no smoothing (onnxruntime quantize_dynamic's route)",
    "int8-dynamic-smoothed": "DynamicQuantizeMatMul everywhere after SmoothQuant, down_proj's via up_proj (alpha 0.8)",
    "int8-nbits-32": "MatMulNBits 8-bit, blocks of 32, accuracy level 4, every MatMul",
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
