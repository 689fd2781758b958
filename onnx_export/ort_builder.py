"""Run ONNX Runtime GenAI's model builder with the rotary tables Dolphin really runs with.

Nexa's model is loaded in bf16, so transformers 4.44 keeps its RoPE cos/sin tables as bf16
buffers: every position's angle is rounded to bf16 before the model sees it. The builder computes
the same tables in fp32. Rounding them here is what makes the export agree with the reference to
~1e-6 instead of ~1e-2 (docs/ARCHITECTURE.md §2). Everything else is the stock builder.

It also loads the checkpoint zero-copy: every weight is a view of the memory-mapped safetensors
file, not a private copy, so the builder's footprint is page cache the kernel can drop instead of
a second resident copy of the model (the stock loader materialises it, 2x-4x its size).

Run as a child process (`python -m onnx_export.ort_builder BUILDER-ARGS...`) so the builder's
memory is returned to the system when each stage ends.
"""

from __future__ import annotations

import json
import mmap
import runpy
import struct
import sys
from pathlib import Path
from typing import Any

import onnxruntime_genai.models  # noqa: F401 - puts the builder's own folder on sys.path
import torch
import transformers
from builders import base  # the module object the builder script itself imports

_TORCH_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}


def mapped_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors checkpoint as a view of its file (copy-on-write mapping)."""
    tensors: dict[str, torch.Tensor] = {}
    for path in sorted(folder.glob("*.safetensors")):
        with path.open("rb") as handle:
            (header_len,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(header_len))
            mapping = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY)
        header.pop("__metadata__", None)
        for name, entry in header.items():
            start, end = entry["data_offsets"]
            dtype = _TORCH_DTYPES[entry["dtype"]]
            count = (end - start) // torch.tensor([], dtype=dtype).element_size()
            flat = torch.frombuffer(mapping, dtype=dtype, count=count, offset=8 + header_len + start)
            tensors[name] = flat.reshape(entry["shape"])
    return tensors


class MappedCausalLM:
    """Stands in for AutoModelForCausalLM in the builder: same model, weights mapped, not loaded."""

    @staticmethod
    def from_pretrained(name_or_path: str, **_: Any) -> torch.nn.Module:
        config = transformers.AutoConfig.from_pretrained(name_or_path)
        with torch.device("meta"):
            model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        state = mapped_state_dict(Path(name_or_path))
        if config.tie_word_embeddings:
            state["lm_head.weight"] = state["model.embed_tokens.weight"]
        missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
        if [m for m in missing if "rotary" not in m] or unexpected:
            raise RuntimeError(f"checkpoint does not fit Qwen2: missing {missing[:3]}, unexpected {unexpected[:3]}")
        model.model.rotary_emb = type(model.model.rotary_emb)(config=config)
        return model.eval()


def _round_tables_to_bf16() -> None:
    original = base.Model.make_rotary_embedding_caches_from_scratch

    def bf16_rounded(self: base.Model) -> tuple[torch.Tensor, torch.Tensor]:
        cos_cache, sin_cache = original(self)
        return cos_cache.to(torch.bfloat16).float(), sin_cache.to(torch.bfloat16).float()

    base.Model.make_rotary_embedding_caches_from_scratch = bf16_rounded


def main(argv: list[str]) -> None:
    _round_tables_to_bf16()
    base.AutoModelForCausalLM = MappedCausalLM
    sys.argv = ["onnxruntime_genai.models.builder", *argv]
    runpy.run_module("onnxruntime_genai.models.builder", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
