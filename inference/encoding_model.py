"""A bundle loaded for encoding only: the memory encoder and the retrieval embedder, no decoder.

Workers that only make memories (the cluster's encoder actors, app/cluster/) have no use for the
7B decoder, which is most of a bundle's size and load time. `EncodingModel` is a `DolphinModel`
that loads only the parts `encode` uses, and inherits `encode` itself: a memory made here comes
from the very code the desktop indexer runs, so a pack holds exactly what local indexing stores
(tests/test_cluster_index.py compares them byte for byte).
"""

from __future__ import annotations

import threading
from pathlib import Path

from inference.bundle import Manifest, load_manifest
from inference.embedder import load_embedder
from inference.encoder import MemoryEncoder
from inference.model import DolphinModel
from inference.providers import ORT_NAMES, available_providers, choose_provider, create_session, default_threads
from inference.tokenizer import DolphinTokenizer


class EncodingModel(DolphinModel):
    """`encode(text)` and `embedder` as `DolphinModel` has them; `answer` is not available.

    `provider` may be "cuda" for a bundle converted for the CPU: an encoder actor on a GPU node
    runs the same weights with ONNX Runtime's CUDA provider (kernels it lacks fall back to the
    CPU). Its memories then agree with the CPU's within rounding, not bit for bit.
    """

    def __init__(self, manifest: Manifest, provider: str = "auto", threads: int | None = None) -> None:
        self.manifest = manifest
        if provider == "cuda" and "cuda" in available_providers():
            self.provider = "cuda"
        else:
            self.provider = choose_provider(provider, manifest.provider)
        self.threads = threads or default_threads()
        self.tokenizer = DolphinTokenizer(manifest.path("tokenizer"))
        self.encoder = MemoryEncoder(
            manifest,
            create_session(str(manifest.path("encoder")), self.provider, self.threads),
            create_session(str(manifest.path("projector")), "cpu", self.threads),
        )
        self.embedder = load_embedder(manifest, self.threads)
        self._lock = threading.Lock()

    @classmethod
    def load(cls, bundle: Path | str, provider: str = "auto", threads: int | None = None) -> EncodingModel:
        return cls(load_manifest(Path(bundle)), provider=provider, threads=threads)

    @property
    def execution_provider(self) -> str:
        """The ONNX Runtime provider name the encoder runs on (for the job's report)."""
        return ORT_NAMES[self.provider]
