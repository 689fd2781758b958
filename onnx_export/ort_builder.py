"""Run ONNX Runtime GenAI's model builder with the rotary tables Dolphin really runs with.

Nexa's model is loaded in bf16, so transformers 4.44 keeps its RoPE cos/sin tables as bf16
buffers: every position's angle is rounded to bf16 before the model sees it. The builder computes
the same tables in fp32. Rounding them here is what makes the export agree with the reference to
~1e-6 instead of ~1e-2 (DESIGN.md §2). Everything else is the stock builder.

Run as a child process (`python -m onnx_export.ort_builder BUILDER-ARGS...`) so the builder's
memory is returned to the system when each stage ends.
"""

from __future__ import annotations

import runpy
import sys

import onnxruntime_genai.models  # noqa: F401 - puts the builder's own folder on sys.path
import torch
from builders import base  # the module object the builder script itself imports


def _round_tables_to_bf16() -> None:
    original = base.Model.make_rotary_embedding_caches_from_scratch

    def bf16_rounded(self: base.Model) -> tuple[torch.Tensor, torch.Tensor]:
        cos_cache, sin_cache = original(self)
        return cos_cache.to(torch.bfloat16).float(), sin_cache.to(torch.bfloat16).float()

    base.Model.make_rotary_embedding_caches_from_scratch = bf16_rounded


def main(argv: list[str]) -> None:
    _round_tables_to_bf16()
    sys.argv = ["onnxruntime_genai.models.builder", *argv]
    runpy.run_module("onnxruntime_genai.models.builder", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
