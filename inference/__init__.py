"""Everything that runs a Dolphin model bundle; imports neither Qt, torch nor transformers."""

from inference.bundle import BundleError, Manifest, load_manifest
from inference.encoder import Memory
from inference.errors import InputError
from inference.model import AnswerStats, AnswerStream, DolphinModel
from inference.sampling import GenerationSettings

__all__ = [
    "AnswerStats",
    "AnswerStream",
    "BundleError",
    "DolphinModel",
    "GenerationSettings",
    "InputError",
    "Manifest",
    "Memory",
    "load_manifest",
]
