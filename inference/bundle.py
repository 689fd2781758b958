"""The model bundle: what the converter writes and everything else reads.

A bundle is a folder:

    manifest.json          format version, dims, precision, provider, source, file list
    tokenizer.json         the checkpoint's own tokenizer (with the 32 [memory_i] tokens)
    encoder/model.onnx     the 0.5B Qwen2 encoder (ORT GenAI builder, hidden_states output)
    projector.onnx         Linear(encoder width -> decoder width), run at answer time
    decoder/model.onnx     the main decoder (ORT GenAI builder, inputs_embeds input)
    embeddings.npy         the decoder's token embedding table, for the memory splice

The projector is a separate stage so the library can persist 32 x 896 encoder states per chunk
instead of 32 x 3584 projected ones (docs/ARCHITECTURE.md §4).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
# Execution providers a bundle or a setting can name ("auto": the bundle's own, if present).
PROVIDERS = ("auto", "cpu", "cuda", "dml")


class BundleError(Exception):
    """A bundle that cannot be used; the message is one line a user can act on."""


@dataclass(frozen=True)
class StackInfo:
    """One transformer stack of the bundle (encoder or decoder)."""

    file: str
    hidden_size: int
    num_layers: int
    num_kv_heads: int
    head_size: int
    precision: str


@dataclass(frozen=True)
class EncoderInfo:
    stack: StackInfo
    max_context_tokens: int  # the most text tokens one memory may stand for
    identity: str  # names the encoder's exact weights and export: memories are valid only for it


@dataclass(frozen=True)
class DecoderInfo:
    stack: StackInfo
    vocab_size: int
    max_positions: int


@dataclass(frozen=True)
class TokenizerInfo:
    eos_token_id: int
    memory_token_ids: list[int]


@dataclass(frozen=True)
class SourceInfo:
    id: str
    sha256: str
    path: str


@dataclass(frozen=True)
class EmbedderInfo:
    """The bundle's dense text embedder for retrieval (optional: without it, BM25 alone)."""

    file: str
    tokenizer: str
    dim: int
    pooling: str  # mean | cls | max
    normalize: bool
    max_tokens: int
    query_prefix: str
    document_prefix: str
    identity: str  # embeddings are valid only for this value
    source: str


BUNDLE_PATHS = {
    "tokenizer": "tokenizer.json",
    "encoder": "encoder/model.onnx",
    "projector": "projector.onnx",
    "decoder": "decoder/model.onnx",
    "embeddings": "embeddings.npy",
}


@dataclass(frozen=True)
class BundleManifest:
    """manifest.json, typed: the converter writes one, the runtime reads one (`load_manifest`)."""

    memory_size: int
    precision: str
    provider: str
    source: SourceInfo
    tokenizer: TokenizerInfo
    encoder: EncoderInfo
    decoder: DecoderInfo
    embeddings_dtype: str
    embedder: EmbedderInfo | None = None
    created: str = ""
    converter: dict[str, Any] = field(default_factory=dict)
    paths: dict[str, str] = field(default_factory=lambda: dict(BUNDLE_PATHS))
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "kind": "dolphin-desk-model-bundle",
            "created": self.created,
            "memory_size": self.memory_size,
            "precision": self.precision,
            "provider": self.provider,
            "source": asdict(self.source),
            "converter": self.converter,
            "tokenizer": asdict(self.tokenizer),
            "encoder": asdict(self.encoder),
            "decoder": asdict(self.decoder),
            "embeddings": {"dtype": self.embeddings_dtype},
            **({"embedder": asdict(self.embedder)} if self.embedder else {}),
            "paths": self.paths,
            "files": self.files,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BundleManifest:
        """Raises KeyError, TypeError or ValueError for a manifest that lacks or mistypes a field."""
        encoder, decoder = data["encoder"], data["decoder"]
        return cls(
            memory_size=int(data["memory_size"]),
            precision=str(data["precision"]),
            provider=str(data["provider"]),
            source=SourceInfo(**data["source"]),
            tokenizer=TokenizerInfo(
                int(data["tokenizer"]["eos_token_id"]), [int(i) for i in data["tokenizer"]["memory_token_ids"]]
            ),
            encoder=EncoderInfo(
                StackInfo(**encoder["stack"]), int(encoder["max_context_tokens"]), str(encoder["identity"])
            ),
            decoder=DecoderInfo(
                StackInfo(**decoder["stack"]), int(decoder["vocab_size"]), int(decoder["max_positions"])
            ),
            embeddings_dtype=str(data["embeddings"]["dtype"]),
            embedder=EmbedderInfo(**data["embedder"]) if data.get("embedder") else None,
            created=str(data.get("created", "")),
            converter=dict(data.get("converter", {})),
            paths={key: str(data["paths"][key]) for key in BUNDLE_PATHS},
            files=dict(data.get("files", {})),
            format_version=int(data["format_version"]),
        )

    def write(self, root: Path) -> None:
        (Path(root) / MANIFEST_NAME).write_text(json.dumps(self.to_json(), indent=2), encoding="utf-8")


@dataclass(frozen=True)
class Manifest:
    """A loaded bundle: where it is and what its manifest says."""

    root: Path
    content: BundleManifest

    @property
    def memory_size(self) -> int:
        return self.content.memory_size

    @property
    def encoder(self) -> StackInfo:
        return self.content.encoder.stack

    @property
    def decoder(self) -> StackInfo:
        return self.content.decoder.stack

    @property
    def max_context_tokens(self) -> int:
        """The most text tokens one memory may stand for; longer contexts are truncated."""
        return self.content.encoder.max_context_tokens

    @property
    def max_positions(self) -> int:
        return self.content.decoder.max_positions

    @property
    def eos_token_id(self) -> int:
        return self.content.tokenizer.eos_token_id

    @property
    def memory_token_ids(self) -> list[int]:
        return list(self.content.tokenizer.memory_token_ids)

    @property
    def provider(self) -> str:
        return self.content.provider

    @property
    def precision(self) -> str:
        return self.content.precision

    @property
    def embeddings_dtype(self) -> str:
        return self.content.embeddings_dtype

    @property
    def encoder_identity(self) -> str:
        """Names the encoder's exact weights and export: memories are only valid for this value."""
        return self.content.encoder.identity

    @property
    def embedder(self) -> EmbedderInfo | None:
        return self.content.embedder

    def path(self, key: str) -> Path:
        return self.root / self.content.paths[key]


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 24):
            digest.update(block)
    return digest.hexdigest()


def describe_files(root: Path) -> dict[str, dict[str, Any]]:
    """Size and sha256 of every file under `root` except the manifest, for later verification."""
    return {
        str(p.relative_to(root)): {"bytes": p.stat().st_size, "sha256": file_digest(p)}
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != MANIFEST_NAME
    }


def load_manifest(root: Path, verify_hashes: bool = False) -> Manifest:
    """Read and check a bundle; raise BundleError naming the first problem.

    Sizes are always checked (cheap, and catches truncated copies); hashes only on request,
    since hashing a 5 GB decoder takes longer than loading it.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise BundleError(f"model bundle {root} does not exist or is not a folder")
    manifest_path = root / MANIFEST_NAME
    if not manifest_path.exists():
        raise BundleError(f"{root} is not a Dolphin Desk model bundle: no {MANIFEST_NAME}")
    try:
        data = json.loads(manifest_path.read_text(encoding="utf-8"))
        version = int(data["format_version"])
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"{manifest_path} is corrupt ({type(exc).__name__}): convert the model again") from None
    if version > FORMAT_VERSION:
        raise BundleError(
            f"bundle format {version} is newer than this app understands (up to {FORMAT_VERSION}): update Dolphin Desk"
        )
    if version < 1:
        raise BundleError(f"bundle format {version} is not supported: convert the model again")
    for rel_path, expected in data.get("files", {}).items():
        path = root / rel_path
        if not path.exists():
            raise BundleError(f"bundle file {rel_path} is missing: convert the model again or copy the whole folder")
        size = path.stat().st_size
        if size != expected["bytes"]:
            raise BundleError(f"bundle file {rel_path} is corrupt: {size:,} bytes, expected {expected['bytes']:,}")
        if verify_hashes and file_digest(path) != expected["sha256"]:
            raise BundleError(f"bundle file {rel_path} is corrupt: its checksum does not match")
    try:
        manifest = Manifest(root, BundleManifest.from_json(data))
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"{manifest_path} is incomplete (missing {exc}): convert the model again") from None
    return manifest
