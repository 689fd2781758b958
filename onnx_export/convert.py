"""Checkpoint -> model bundle.

The Dolphin checkpoint is split, tensor by tensor and shard by shard, into two stock Qwen2
checkpoints (the 0.5B encoder and the main decoder) plus the projector; ONNX Runtime GenAI's
model builder exports each stack; the projector and the decoder's embedding table become the
memory-splice stage. Peak memory is the builder's load of the decoder, never the whole Dolphin
model twice.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from safetensors import safe_open
from safetensors.torch import save_file

from inference.bundle import (
    BUNDLE_PATHS,
    BundleManifest,
    DecoderInfo,
    EmbedderInfo,
    EncoderInfo,
    SourceInfo,
    StackInfo,
    TokenizerInfo,
    describe_files,
)
from inference.tokenizer import END_OF_TEXT, MEMORY_TOKENS
from onnx_export.checkpoint import ENCODER_PREFIX, PROJECTOR_PREFIX, DolphinCheckpoint, open_checkpoint
from onnx_export.embedder import EmbedderError, export_embedder
from onnx_export.quantize import INT8_SCHEME, quantize_int4, quantize_int8
from onnx_export.smoothing import calibration_feeds

PRECISIONS = ("int4", "fp16", "fp32")
# The encoder may also be int8 (CPU only: DynamicQuantizeMatMul has no GPU kernel). It is the
# default for CPU bundles: on the 0.5B encoder it runs ~2.4x the chunks/s of int4, and on trained
# weights its memory is ~20x closer to fp32 (cosine 0.997 against int4's 0.938; the benchmark is
# benchmarks/encoder_precision.py, the figures are in benchmarks/README.md).
ENCODER_PRECISIONS = ("int8", "int4", "fp16", "fp32")
CALIBRATION_CHUNKS = 4
CALIBRATION_TOKENS = 384  # the default chunk size: what the encoder sees while indexing
PROVIDERS = ("cpu", "dml", "cuda")
DEFAULT_MAX_CONTEXT_TOKENS = 2048
_QWEN2_KEYS = (
    "hidden_act",
    "hidden_size",
    "intermediate_size",
    "max_position_embeddings",
    "num_attention_heads",
    "num_hidden_layers",
    "num_key_value_heads",
    "rms_norm_eps",
    "rope_theta",
    "vocab_size",
    "bos_token_id",
    "eos_token_id",
    "tie_word_embeddings",
    "attention_dropout",
)


class ConversionError(Exception):
    """Conversion stopped; the message is one line for the user."""


Progress = Callable[[str], None]


def qwen2_config(source: dict) -> dict:
    config = {k: source[k] for k in _QWEN2_KEYS if k in source}
    config.update(
        {
            "architectures": ["Qwen2ForCausalLM"],
            "model_type": "qwen2",
            "use_sliding_window": False,
            "sliding_window": source.get("max_position_embeddings"),
            "max_window_layers": source["num_hidden_layers"],
            "torch_dtype": "bfloat16",
            "use_cache": True,
        }
    )
    return config


def stack_dims(config: dict) -> dict:
    heads = config["num_attention_heads"]
    return {
        "hidden_size": config["hidden_size"],
        "num_layers": config["num_hidden_layers"],
        "num_kv_heads": config["num_key_value_heads"],
        "head_size": config["hidden_size"] // heads,
    }


def split_checkpoint(checkpoint: DolphinCheckpoint, work: Path, bundle: Path, progress: Progress) -> dict:
    """Stream the shards into encoder/decoder Qwen2 folders, the projector and the embedding table."""
    dec_dir, enc_dir = work / "decoder-hf", work / "encoder-hf"
    for folder in (dec_dir, enc_dir):
        folder.mkdir(parents=True)
        for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"):
            if (checkpoint.root / name).exists():
                shutil.copy2(checkpoint.root / name, folder / name)
    (dec_dir / "config.json").write_text(json.dumps(qwen2_config(checkpoint.config), indent=2))
    (enc_dir / "config.json").write_text(json.dumps(qwen2_config(checkpoint.encoder_config), indent=2))

    maps: dict[Path, dict[str, str]] = {dec_dir: {}, enc_dir: {}}
    projector: dict[str, np.ndarray] = {}
    embedding_dtype = ""
    shards = checkpoint.shard_files
    for number, shard in enumerate(shards, start=1):
        progress(f"splitting shard {number}/{len(shards)}: {shard.name}")
        outputs: dict[Path, dict[str, torch.Tensor]] = {dec_dir: {}, enc_dir: {}}
        with safe_open(str(shard), framework="pt") as reader:
            for name in reader.keys():
                if name.startswith(PROJECTOR_PREFIX):
                    projector[name.removeprefix(PROJECTOR_PREFIX)] = reader.get_tensor(name).float().numpy()
                elif name.startswith(ENCODER_PREFIX):
                    outputs[enc_dir]["model." + name.removeprefix(ENCODER_PREFIX)] = reader.get_tensor(name)
                elif name.startswith("model.context_encoder."):
                    raise ConversionError(
                        f"unexpected tensor {name}: this checkpoint's context encoder is not Dolphin's"
                    )
                else:
                    tensor = reader.get_tensor(name)
                    if name == "model.embed_tokens.weight":
                        embedding_dtype = _save_embedding_table(tensor, bundle / "embeddings.npy")
                    outputs[dec_dir][name] = tensor
        for folder, tensors in outputs.items():
            if tensors:
                file_name = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
                save_file(tensors, str(folder / file_name), metadata={"format": "pt"})
                maps[folder].update({n: file_name for n in tensors})
        del outputs
    for folder, weight_map in maps.items():
        (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    _write_projector(projector["weight"], projector["bias"], bundle / "projector.onnx")
    return {"embedding_dtype": embedding_dtype}


def _save_embedding_table(tensor: torch.Tensor, path: Path) -> str:
    """bf16 is stored as its raw 16 bits: exact, and half the size of fp32 (2.2 GB -> 1.1 GB)."""
    if tensor.dtype == torch.bfloat16:
        np.save(path, tensor.contiguous().view(torch.int16).numpy().view(np.uint16))
        return "bfloat16"
    if tensor.dtype in (torch.float16, torch.float32):
        np.save(path, tensor.contiguous().numpy())
        return str(tensor.dtype).removeprefix("torch.")
    raise ConversionError(f"unsupported embedding dtype {tensor.dtype}")


def _write_projector(weight: np.ndarray, bias: np.ndarray, path: Path) -> None:
    """states [n, 32, enc] -> memory [n, 32, dec]; fp32, the weights are the checkpoint's values."""
    enc, dec = weight.shape[1], weight.shape[0]
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["encoder_states", "weight_t"], ["projected"]),
            helper.make_node("Add", ["projected", "bias"], ["memory"]),
        ],
        "dolphin_projector",
        [helper.make_tensor_value_info("encoder_states", TensorProto.FLOAT, ["batch", "memory_size", enc])],
        [helper.make_tensor_value_info("memory", TensorProto.FLOAT, ["batch", "memory_size", dec])],
        [
            numpy_helper.from_array(np.ascontiguousarray(weight.T, dtype=np.float32), "weight_t"),
            numpy_helper.from_array(bias.astype(np.float32), "bias"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="dolphin-desk")
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def run_builder(hf_dir: Path, out_dir: Path, precision: str, provider: str, options: dict[str, str], log: Path) -> None:
    """The ORT GenAI builder in a child process (its peak memory ends with it)."""
    builder_options = {"accuracy_level": "4", **options} if precision == "int4" else dict(options)
    command = [
        sys.executable,
        "-m",
        "onnx_export.ort_builder",
        "-i",
        str(hf_dir),
        "-o",
        str(out_dir),
        "-p",
        precision,
        "-e",
        provider,
        "-c",
        str(hf_dir.parent / "cache"),
        "--extra_options",
        *[f"{k}={v}" for k, v in builder_options.items()],
    ]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]),
    }
    with log.open("ab") as log_file:
        result = subprocess.run(command, stdout=log_file, stderr=subprocess.STDOUT, env=env, check=False)
    if result.returncode != 0 or not (out_dir / "model.onnx").exists():
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise ConversionError(
            f"the ONNX Runtime GenAI builder failed on {hf_dir.name} ({tail[0][:300]}); full log: {log}"
        )


def export_stack(
    hf_dir: Path,
    out_dir: Path,
    precision: str,
    provider: str,
    options: dict[str, str],
    log: Path,
    calibration_ids: list[list[int]] | None = None,
) -> None:
    """One Qwen2 stack to ONNX. CPU int4 and int8 go through an fp32 export and the streaming
    quantizer, which needs about one weight matrix of RAM where the builder's own int4 pass needs
    ~4x the model; GPU bundles keep the builder's path (their I/O is fp16). int8 calibrates its
    SmoothQuant factors on `calibration_ids` run through the fp32 export."""
    if precision not in ("int4", "int8") or provider != "cpu":
        run_builder(hf_dir, out_dir, precision, provider, options, log)
        return
    fp32_dir = out_dir.with_name(out_dir.name + "-fp32")
    run_builder(hf_dir, fp32_dir, "fp32", provider, options, log)
    out_dir.mkdir(parents=True, exist_ok=True)
    source = fp32_dir / "model.onnx"
    if precision == "int4":
        quantize_int4(source, out_dir / "model.onnx")
    else:
        dims = stack_dims(json.loads((hf_dir / "config.json").read_text()))
        feeds = calibration_feeds(source, calibration_ids or [], dims["num_kv_heads"], dims["head_size"])
        quantize_int8(source, out_dir / "model.onnx", feeds)
    shutil.rmtree(fp32_dir)


def default_encoder_precision(precision: str, provider: str) -> str:
    """int8 for CPU int4 bundles (faster and closer to fp32 than int4); otherwise the decoder's."""
    return "int8" if precision == "int4" and provider == "cpu" else precision


def calibration_ids(tokenizer_path: Path, memory_ids: list[int], max_tokens: int) -> list[list[int]]:
    """Seeded random ordinary tokens, each chunk followed by the [memory_i] tokens as in encoding.

    Random tokens calibrate SmoothQuant almost as well as real text on trained weights (see
    onnx_export/smoothing.py), and need no corpus in the converter."""
    rng = np.random.default_rng(0)
    ordinary = min(memory_ids) if memory_ids else _vocab_size(tokenizer_path)
    length = min(CALIBRATION_TOKENS, max_tokens)
    return [rng.integers(0, ordinary, length).tolist() + list(memory_ids) for _ in range(CALIBRATION_CHUNKS)]


def _vocab_size(tokenizer_path: Path) -> int:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(tokenizer_path)).get_vocab_size()


def memory_token_ids(tokenizer_path: Path) -> list[int]:
    """The 32 [memory_i] ids; a tokenizer without them is not Dolphin's, and nothing should be exported."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    ids = [tokenizer.token_to_id(t) for t in MEMORY_TOKENS]
    if None in ids:
        raise ConversionError("the checkpoint's tokenizer lacks the [memory_i] tokens: not a Dolphin tokenizer")
    return [int(i) for i in ids]


def _keep_onnx_only(folder: Path) -> None:
    """The builder also writes its own tokenizer and genai_config; the bundle has one of each."""
    for path in folder.iterdir():
        if not (path.name == "model.onnx" or path.name.startswith("model.onnx.data") or path.suffix == ".data"):
            path.unlink()


def convert(
    source: str,
    out: Path,
    precision: str = "int4",
    provider: str = "cpu",
    encoder_precision: str | None = None,
    max_context_tokens: int = DEFAULT_MAX_CONTEXT_TOKENS,
    force: bool = False,
    progress: Progress = lambda message: None,
    embedder: str | None = None,
) -> Path:
    """Convert a Dolphin checkpoint (folder or hub id) into a bundle at `out`; return `out`.
    `embedder` (a sentence-transformers folder or hub id) adds the dense retrieval embedder."""
    if precision not in PRECISIONS:
        raise ConversionError(f"precision must be one of {', '.join(PRECISIONS)}")
    if provider not in PROVIDERS:
        raise ConversionError(f"provider must be one of {', '.join(PROVIDERS)}")
    if precision == "fp16" and provider == "cpu":
        raise ConversionError("fp16 bundles need --provider cuda or dml; on the CPU use int4 or fp32")
    encoder_precision = encoder_precision or default_encoder_precision(precision, provider)
    if encoder_precision not in ENCODER_PRECISIONS:
        raise ConversionError(f"encoder precision must be one of {', '.join(ENCODER_PRECISIONS)}")
    if encoder_precision == "int8" and provider != "cpu":
        raise ConversionError("int8 encoders run on the CPU only; for cuda or dml use --encoder-precision int4 or fp16")
    if encoder_precision == "fp16" and provider == "cpu":
        raise ConversionError("an fp16 encoder needs --provider cuda or dml; on the CPU use int8, int4 or fp32")
    out = Path(out).expanduser().resolve()
    if out.exists() and any(out.iterdir()):
        if not force:
            raise ConversionError(f"{out} already exists and is not empty (use --force to replace it)")
    started = time.monotonic()
    progress("reading the checkpoint")
    checkpoint = open_checkpoint(source)
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    work = staging / ".work"
    work.mkdir(parents=True)
    try:
        split = split_checkpoint(checkpoint, work, staging, progress)
        log = staging / "convert.log"
        progress(f"exporting the memory encoder ({encoder_precision})")
        calibration = None
        if encoder_precision == "int8":
            encoder_positions = int(checkpoint.encoder_config["max_position_embeddings"]) - len(MEMORY_TOKENS)
            tokenizer_path = checkpoint.root / "tokenizer.json"
            calibration = calibration_ids(
                tokenizer_path, memory_token_ids(tokenizer_path), min(max_context_tokens, encoder_positions)
            )
        export_stack(
            work / "encoder-hf",
            staging / "encoder",
            encoder_precision,
            provider,
            {"exclude_lm_head": "true"},
            log,
            calibration,
        )
        progress(f"exporting the decoder ({precision})")
        decoder_options = {"exclude_embeds": "true", "prune_lm_head": "true"}
        export_stack(work / "decoder-hf", staging / "decoder", precision, provider, decoder_options, log)
        for folder in ("encoder", "decoder"):
            _keep_onnx_only(staging / folder)
        shutil.copy2(checkpoint.root / "tokenizer.json", staging / "tokenizer.json")
        shutil.rmtree(work)
        log.unlink(missing_ok=True)
        embedder_info = _embedder(embedder, staging, progress)
        progress("fingerprinting the source and writing the manifest")
        manifest = _manifest(checkpoint, staging, precision, encoder_precision, provider, max_context_tokens, split)
        manifest = dataclasses.replace(manifest, embedder=embedder_info)
        manifest.write(staging)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        # Free the disk (the split checkpoint and exports are as large as the model); keep the log.
        for item in staging.iterdir():
            if item.name != "convert.log":
                shutil.rmtree(item) if item.is_dir() else item.unlink()
        if not any(staging.iterdir()):
            staging.rmdir()
        raise
    progress(f"done in {time.monotonic() - started:.1f} s: {out}")
    return out


def _peak_rss_mb() -> dict[str, int]:
    """Peak resident memory of the converter itself and of its largest builder child."""
    try:
        import resource
    except ImportError:  # Windows
        return {}
    scale = 1 / 1024 if sys.platform != "darwin" else 1 / 1024 / 1024
    return {
        "converter": int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale),
        "builder": int(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale),
    }


def _embedder(embedder: str | None, bundle: Path, progress: Progress) -> EmbedderInfo | None:
    """The retrieval embedder, if asked for. A hub id that cannot be downloaded (offline) does
    not cost the conversion: the bundle works with keyword search, and `dolphin-desk
    add-embedder` adds the embedder later."""
    if not embedder:
        return None
    try:
        return export_embedder(embedder, bundle, progress)
    except EmbedderError as exc:
        if Path(embedder).expanduser().exists():
            raise
        progress(f"note: {exc}; the bundle uses keyword search until `dolphin-desk add-embedder` adds one")
        shutil.rmtree(bundle / "embedder", ignore_errors=True)
        return None


def encoder_files_digest(files: dict[str, dict], encoder_file: str) -> str:
    """sha256 over the hashes of every file of the encoder's folder: the graph and its weights.

    The graph alone would not do: two int8 exports with different SmoothQuant factors share
    model.onnx and differ only in model.onnx.data, and their memories must not mix."""
    folder = encoder_file.rsplit("/", 1)[0] + "/"
    digest = hashlib.sha256()
    for name in sorted(n for n in files if n.startswith(folder)):
        digest.update(f"{name}:{files[name]['sha256']};".encode())
    return digest.hexdigest()


def _manifest(
    checkpoint: DolphinCheckpoint,
    bundle: Path,
    precision: str,
    encoder_precision: str,
    provider: str,
    max_context_tokens: int,
    split: dict,
) -> BundleManifest:
    import onnxruntime_genai
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(bundle / "tokenizer.json"))
    memory_ids = memory_token_ids(bundle / "tokenizer.json")
    eos_id = checkpoint.config.get("eos_token_id", tokenizer.token_to_id(END_OF_TEXT))
    enc_config = checkpoint.encoder_config
    encoder_positions = int(enc_config["max_position_embeddings"]) - len(MEMORY_TOKENS)
    fingerprint = checkpoint.fingerprint()
    files = describe_files(bundle)
    encoder_file, decoder_file = BUNDLE_PATHS["encoder"], BUNDLE_PATHS["decoder"]
    encoder_digest = encoder_files_digest(files, encoder_file)
    return BundleManifest(
        memory_size=len(MEMORY_TOKENS),
        precision=precision,
        provider=provider,
        source=SourceInfo(checkpoint.source_id, fingerprint, str(checkpoint.root)),
        tokenizer=TokenizerInfo(int(eos_id), [int(i) for i in memory_ids]),
        encoder=EncoderInfo(
            StackInfo(file=encoder_file, precision=encoder_precision, **stack_dims(enc_config)),
            min(max_context_tokens, encoder_positions),
            f"{fingerprint[:16]}-{encoder_precision}-{encoder_digest[:16]}",
        ),
        decoder=DecoderInfo(
            StackInfo(file=decoder_file, precision=precision, **stack_dims(checkpoint.config)),
            int(checkpoint.config["vocab_size"]),
            int(checkpoint.config["max_position_embeddings"]),
        ),
        embeddings_dtype=split["embedding_dtype"],
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        converter={
            "onnxruntime_genai": onnxruntime_genai.__version__,
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "rope_tables": "bf16-rounded, as the reference runs them",
            **({"encoder_quantization": INT8_SCHEME} if encoder_precision == "int8" else {}),
            "peak_rss_mb": _peak_rss_mb(),
        },
        files=files,
    )
