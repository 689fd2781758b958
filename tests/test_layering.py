"""The runtime must not need torch, transformers or Qt (DESIGN.md §1 layering rule)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT

FORBIDDEN = {"torch", "transformers", "PySide6", "onnxruntime_genai", "onnx_export"}


def _imported_by(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    return set(result.stdout.split())


def test_inference_imports_neither_torch_nor_qt() -> None:
    modules = _imported_by("import inference, inference.model, inference.providers")
    assert not modules & FORBIDDEN, modules & FORBIDDEN


def test_cli_starts_without_the_converter() -> None:
    modules = _imported_by("import app.cli; app.cli.build_parser()")
    assert not modules & (FORBIDDEN - {"onnx_export"}), modules & FORBIDDEN
