"""The runtime must not need torch, transformers or Qt (docs/ARCHITECTURE.md §1)."""

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


def test_the_app_core_imports_no_qt() -> None:
    modules = _imported_by("import app.library.library, app.settings, app.chats, app.download, app.power, app.cli")
    assert not modules & {"PySide6", "torch", "transformers"}, modules & FORBIDDEN


def test_only_the_ui_package_names_pyside6() -> None:
    import ast

    offenders = []
    for package in ("app", "inference", "onnx_export"):
        for path in (ROOT / package).rglob("*.py"):
            if "ui" in path.relative_to(ROOT).parts:
                continue
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
                if isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module]
                if any(n.split(".")[0] == "PySide6" for n in names):
                    offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def test_the_manifest_is_written_and_read_by_one_type(fp32_bundle) -> None:
    """The converter writes a BundleManifest; the runtime reads the same type back, field by field."""
    import json

    from inference.bundle import MANIFEST_NAME, BundleManifest, load_manifest
    from inference.tokenizer import MEMORY_TOKENS

    data = json.loads((fp32_bundle / MANIFEST_NAME).read_text())
    typed = BundleManifest.from_json(data)
    assert typed.to_json() == data
    manifest = load_manifest(fp32_bundle)
    assert manifest.content == typed
    assert manifest.memory_size == len(MEMORY_TOKENS) == len(manifest.memory_token_ids)
