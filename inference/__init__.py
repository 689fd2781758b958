"""Everything that runs a Dolphin model bundle; imports neither Qt, torch nor transformers.

The public names are loaded on first use: the document-extraction child process imports
`inference.tokenizer` to chunk text, and must not pay for (or be limited by the address space
of) ONNX Runtime, which `inference.model` pulls in.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from inference.bundle import BundleError, Manifest, load_manifest
    from inference.conversation import Exchange
    from inference.encoder import Memory
    from inference.errors import InputError
    from inference.model import AnswerStats, AnswerStream, DolphinModel
    from inference.sampling import GenerationSettings

_EXPORTS = {
    "AnswerStats": "inference.model",
    "AnswerStream": "inference.model",
    "BundleError": "inference.bundle",
    "DolphinModel": "inference.model",
    "Exchange": "inference.conversation",
    "GenerationSettings": "inference.sampling",
    "InputError": "inference.errors",
    "Manifest": "inference.bundle",
    "Memory": "inference.encoder",
    "load_manifest": "inference.bundle",
}

__all__ = [
    "AnswerStats",
    "AnswerStream",
    "BundleError",
    "DolphinModel",
    "Exchange",
    "GenerationSettings",
    "InputError",
    "Manifest",
    "Memory",
    "load_manifest",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'inference' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
