"""A sentence-transformers embedder -> `embedder/` in a model bundle (ONNX + tokenizer).

Retrieval picks the memories the decoder answers from, so the bundle carries a small dense
text embedder next to the Dolphin encoder (docs/ARCHITECTURE.md §8). Any sentence-transformers
model folder (or hub id) with a BERT-like transformer, a Pooling module and optionally Normalize
is exported: the transformer to ONNX with torch (the only place it is needed), pooling and
normalisation are done at run time in numpy (`inference/embedder.py`).

The embedder always runs on the CPU, so its weight products are int8 (`quantize_embedder`):
beside the int8 Dolphin encoder (~280 ms a chunk) the fp32 MiniLM's 17 ms made indexing 5.7 %
slower, past the 5 % retrieval may cost; int8 takes 10 ms, 3.6 % (benchmarks/README.md,
"Embedder precision"; benchmarks/results/retrieval-speed.json).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

from inference.bundle import EmbedderInfo, file_digest

EMBEDDER_FOLDER = "embedder"
POOLINGS = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
}


class EmbedderError(Exception):
    """The embedder cannot be used; one line."""


def resolve_embedder(id_or_folder: str, download: Callable[[str], Path] | None = None) -> Path:
    """A local sentence-transformers folder, or a hub id downloaded into the hub cache."""
    path = Path(id_or_folder).expanduser()
    if path.is_dir():
        return path
    if path.exists() or id_or_folder.count("/") != 1:
        raise EmbedderError(f"{id_or_folder} is neither a sentence-transformers folder nor a hub id (owner/name)")
    if download is None:
        from huggingface_hub import snapshot_download

        def download(repo: str) -> Path:
            return Path(snapshot_download(repo, allow_patterns=["*.json", "*.safetensors", "*.txt", "1_Pooling/*"]))

    try:
        return download(id_or_folder)
    except Exception as exc:  # noqa: BLE001 - hub errors come in many types; one line for the user
        raise EmbedderError(f"cannot download the embedder {id_or_folder} ({type(exc).__name__}): {exc}") from None


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def describe(source: Path) -> dict:
    """Pooling, normalisation, length and prompts, as the sentence-transformers config says."""
    modules = _read_json(source / "modules.json")
    if not isinstance(modules, list) or not modules:
        raise EmbedderError(f"{source} is not a sentence-transformers model (no modules.json)")
    kinds = {m.get("type", "").rsplit(".", 1)[-1]: m for m in modules}
    if "Transformer" not in kinds or "Pooling" not in kinds:
        raise EmbedderError(f"{source}: only Transformer + Pooling (+ Normalize) models can be exported")
    pooling_config = _read_json(source / kinds["Pooling"].get("path", "1_Pooling") / "config.json")
    pooling = next((name for key, name in POOLINGS.items() if pooling_config.get(key)), None)
    if pooling is None:
        raise EmbedderError(f"{source}: unsupported pooling {pooling_config}")
    settings = _read_json(source / "sentence_bert_config.json")
    prompts = _read_json(source / "config_sentence_transformers.json").get("prompts", {}) or {}
    if not (source / "tokenizer.json").exists():
        raise EmbedderError(f"{source} has no tokenizer.json (a fast tokenizer is needed)")
    return {
        "pooling": pooling,
        "normalize": "Normalize" in kinds,
        "max_tokens": int(settings.get("max_seq_length", 256)),
        "dim": int(pooling_config.get("word_embedding_dimension", 0)),
        "query_prefix": str(prompts.get("query", "")),
        "document_prefix": str(prompts.get("document", prompts.get("passage", ""))),
    }


def export_embedder(
    id_or_folder: str, bundle: Path, progress: Callable[[str], None] = lambda message: None
) -> EmbedderInfo:
    """Write `embedder/model.onnx` (int8) and `embedder/tokenizer.json` into `bundle`."""
    source = resolve_embedder(id_or_folder)
    facts = describe(source)
    out = Path(bundle) / EMBEDDER_FOLDER
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    progress(f"exporting the embedder {id_or_folder}")
    fp32 = out / "model-fp32.onnx"
    hidden_size = export_transformer(source, fp32)
    progress("quantizing the embedder to int8")
    quantize_embedder(fp32, out / "model.onnx")
    fp32.unlink()
    shutil.copyfile(source / "tokenizer.json", out / "tokenizer.json")
    dim = facts["dim"] or hidden_size
    weights = file_digest(out / "model.onnx") + file_digest(out / "model.onnx.data")
    digest = hashlib.sha256((weights + json.dumps(facts, sort_keys=True)).encode())
    return EmbedderInfo(
        file=f"{EMBEDDER_FOLDER}/model.onnx",
        tokenizer=f"{EMBEDDER_FOLDER}/tokenizer.json",
        dim=dim,
        pooling=facts["pooling"],
        normalize=facts["normalize"],
        max_tokens=facts["max_tokens"],
        query_prefix=facts["query_prefix"],
        document_prefix=facts["document_prefix"],
        identity=f"{Path(id_or_folder).name}-{digest.hexdigest()[:16]}",
        source=str(id_or_folder),
    )


def export_transformer(source: Path, target: Path) -> int:
    """The sentence-transformers folder's transformer as an fp32 ONNX graph at `target`
    (input_ids, attention_mask -> last_hidden_state); returns its hidden size."""
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(source), torch_dtype=torch.float32, attn_implementation="eager")
    model.eval()
    uses_token_types = "token_type_ids" in model.forward.__code__.co_varnames

    class Wrapper(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            extra = {"token_type_ids": torch.zeros_like(input_ids)} if uses_token_types else {}
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state

    example = (torch.ones(2, 8, dtype=torch.int64), torch.ones(2, 8, dtype=torch.int64))
    with torch.no_grad():
        torch.onnx.export(
            Wrapper(),
            example,
            str(target),
            input_names=["input_ids", "attention_mask"],
            output_names=["last_hidden_state"],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "sequence"},
                "attention_mask": {0: "batch", 1: "sequence"},
                "last_hidden_state": {0: "batch", 1: "sequence"},
            },
            opset_version=17,
            dynamo=False,
        )
    return int(model.config.hidden_size)


def quantize_embedder(source: Path, target: Path) -> None:
    """Every weight product as int8 with activations quantized per row (`rowwise_int8`): on
    all-MiniLM-L6-v2 over 120 FAQ answers, pooled embeddings at cosine 0.998 mean / 0.996 worst
    from fp32 and 1.7x faster (benchmarks/embedder_precision.py). One scale per matrix
    (DynamicQuantizeMatMul) was 1.2x faster still but 3x further from fp32 (0.9945 / 0.989)."""
    from onnx_export.quantize import rewrite_matmuls, rowwise_int8

    rewrite_matmuls(source, target, lambda node, weight, _producer, writer: rowwise_int8(node, weight, writer))


def add_embedder(
    bundle: Path, id_or_folder: str, progress: Callable[[str], None] = lambda message: None
) -> EmbedderInfo:
    """Add (or replace) the embedder of an existing bundle, and rewrite its manifest."""
    import dataclasses

    from inference.bundle import describe_files, load_manifest

    manifest = load_manifest(Path(bundle))
    info = export_embedder(id_or_folder, Path(bundle), progress)
    content = dataclasses.replace(manifest.content, embedder=info, files={})
    content = dataclasses.replace(content, files=describe_files(Path(bundle)))
    content.write(Path(bundle))
    return info
