"""Which ONNX Runtime execution provider runs a bundle, and with how many threads.

Bundles are built for one provider (the builder picks I/O dtypes and kernels per provider), so
"auto" means: the bundle's own provider when this ONNX Runtime has it. DirectML comes from the
onnxruntime-directml wheel that Windows installs get through a platform marker.
"""

from __future__ import annotations

import os
import sys

import onnxruntime as ort

from inference.bundle import BundleError

ORT_NAMES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "dml": "DmlExecutionProvider"}
LABELS = {"cpu": "CPU", "cuda": "CUDA", "dml": "DirectML"}


def available_providers() -> list[str]:
    """Short names (cpu, cuda, dml) this ONNX Runtime build can run, best first."""
    present = set(ort.get_available_providers())
    return [name for name in ("dml", "cuda", "cpu") if ORT_NAMES[name] in present]


def default_provider() -> str:
    """What a new bundle should target on this machine: DirectML on Windows, CUDA if present, else CPU."""
    available = available_providers()
    if sys.platform == "win32" and "dml" in available:
        return "dml"
    if "cuda" in available:
        return "cuda"
    return "cpu"


def choose_provider(requested: str, bundle_provider: str) -> str:
    """Resolve "auto" or an explicit choice against the bundle and this machine, or say why not."""
    available = available_providers()
    if requested == "auto":
        requested = bundle_provider
    if requested not in ORT_NAMES:
        raise BundleError(f"unknown execution provider {requested!r}: use auto, cpu, cuda or dml")
    if requested != bundle_provider:
        raise BundleError(
            f"this bundle was converted for {LABELS[bundle_provider]}, not {LABELS[requested]}: "
            f"convert the model again with --provider {requested}"
        )
    if requested not in available:
        raise BundleError(
            f"this bundle needs {LABELS[requested]}, which this ONNX Runtime does not provide "
            f"(available: {', '.join(LABELS[p] for p in available)}); convert it with --provider cpu"
        )
    return requested


def default_threads() -> int:
    """All cores: ORT GenAI's default of half the cores runs this workload at half speed."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def session_options(threads: int | None) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or default_threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return options


def create_session(path: str, provider: str, threads: int | None) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(path, sess_options=session_options(threads), providers=[ORT_NAMES[provider]])
    except Exception as exc:  # noqa: BLE001 - ORT raises plain RuntimeError/Fail for any bad file
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BundleError(f"cannot load {path}: {first_line[:300]}") from None
