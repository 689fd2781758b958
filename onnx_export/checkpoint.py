"""Find, validate and describe a Dolphin checkpoint without loading its weights.

Every check here reads only JSON and safetensors headers, so a broken 16 GB download is
reported in a second, before the converter spends minutes on it.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path

ENCODER_PREFIX = "model.context_encoder.encoder.model."
PROJECTOR_PREFIX = "model.context_encoder.projector.context_projection."
HUB_IDS = ("NexaAIDev/Dolphin", "NexaAIDev/Squid")
_BYTES_PER_DTYPE = {"BF16": 2, "F16": 2, "F32": 4, "F64": 8, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


class CheckpointError(Exception):
    """The source is not a usable Dolphin checkpoint; the message says why, in one line."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    file: Path
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class DolphinCheckpoint:
    root: Path
    source_id: str
    config: dict
    tensors: dict[str, TensorInfo]

    @property
    def encoder_config(self) -> dict:
        return self.config["encoder_config"]

    @property
    def shard_files(self) -> list[Path]:
        return sorted({t.file for t in self.tensors.values()})

    def decoder_names(self) -> list[str]:
        return [n for n in self.tensors if not n.startswith("model.context_encoder.")]

    def encoder_names(self) -> list[str]:
        return [n for n in self.tensors if n.startswith(ENCODER_PREFIX)]

    def fingerprint(self) -> str:
        """sha256 over config, tokenizer and every shard's bytes: identifies the exact weights."""
        digest = hashlib.sha256()
        for path in [self.root / "config.json", self.root / "tokenizer.json", *self.shard_files]:
            digest.update(path.name.encode())
            with path.open("rb") as handle:
                while block := handle.read(1 << 24):
                    digest.update(block)
        return digest.hexdigest()


def read_safetensors_header(path: Path) -> dict[str, dict]:
    """The header of a safetensors file, after checking the file holds every byte it promises."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise CheckpointError(f"{path.name} is not a safetensors file (too short)")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > min(size - 8, 100_000_000):
            raise CheckpointError(f"{path.name} is not a safetensors file (bad header length)")
        try:
            header = json.loads(handle.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{path.name} has a corrupt safetensors header ({exc})") from None
    header.pop("__metadata__", None)
    data_end = max((entry["data_offsets"][1] for entry in header.values()), default=0)
    if 8 + header_len + data_end > size:
        missing = 8 + header_len + data_end - size
        raise CheckpointError(f"{path.name} is truncated: {missing:,} bytes missing (re-download it)")
    return header


def _load_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path.name} is missing from {path.parent}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path.name} is not valid JSON ({exc})") from None


def resolve_source(source: str) -> tuple[Path, str]:
    """A local folder as is; a hub id (Dolphin or Squid) through huggingface_hub's cache."""
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(f"{source} is a file; give the checkpoint's folder")
        return path.resolve(), path.resolve().name
    if source.count("/") != 1 or source.startswith((".", "/")):
        raise CheckpointError(f"{source} does not exist")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise CheckpointError(
            f"{source} is not a folder, and huggingface_hub is not installed to download it"
        ) from None
    try:
        return Path(snapshot_download(source)), source
    except Exception as exc:  # noqa: BLE001 - any hub failure becomes one readable line
        raise CheckpointError(
            f"could not download {source}: {type(exc).__name__}: {str(exc).splitlines()[0]}"
        ) from None


def open_checkpoint(source: str) -> DolphinCheckpoint:
    """Validate config, tokenizer and shards; fail on the first thing that would break conversion."""
    root, source_id = resolve_source(source)
    config_path = root / "config.json"
    if not config_path.exists():
        raise CheckpointError(f"{root} is not a Dolphin checkpoint: no config.json")
    config = _load_json(config_path)
    if config.get("model_type") != "dolphin" or "DolphinForCausalLM" not in config.get("architectures", []):
        raise CheckpointError(
            f"{root} is not a Dolphin checkpoint: model_type is {config.get('model_type')!r}, expected 'dolphin'"
        )
    if not isinstance(config.get("encoder_config"), dict):
        raise CheckpointError(f"{root} is not a Dolphin checkpoint: config.json has no encoder_config")
    if not (root / "tokenizer.json").exists():
        raise CheckpointError(f"{root} has no tokenizer.json")
    if config.get("_name_or_path") in HUB_IDS and source_id == root.name:
        source_id = config["_name_or_path"]

    index_path = root / "model.safetensors.index.json"
    if index_path.exists():
        weight_map = _load_json(index_path).get("weight_map", {})
        files = sorted(set(weight_map.values()))
    elif (root / "model.safetensors").exists():
        files = ["model.safetensors"]
    else:
        raise CheckpointError(f"{root} has no model.safetensors.index.json or model.safetensors")
    missing = [f for f in files if not (root / f).exists()]
    if missing:
        raise CheckpointError(
            f"shard {missing[0]} is missing from {root}"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
        )

    tensors: dict[str, TensorInfo] = {}
    for file_name in files:
        header = read_safetensors_header(root / file_name)
        for name, entry in header.items():
            tensors[name] = TensorInfo(name, root / file_name, entry["dtype"], tuple(entry["shape"]))
    checkpoint = DolphinCheckpoint(root, source_id, config, tensors)
    _check_tensors(checkpoint)
    return checkpoint


def _check_tensors(checkpoint: DolphinCheckpoint) -> None:
    config, enc = checkpoint.config, checkpoint.encoder_config
    required = {
        "model.embed_tokens.weight": (config["vocab_size"], config["hidden_size"]),
        "model.norm.weight": (config["hidden_size"],),
        ENCODER_PREFIX + "embed_tokens.weight": (enc["vocab_size"], enc["hidden_size"]),
        ENCODER_PREFIX + "norm.weight": (enc["hidden_size"],),
        PROJECTOR_PREFIX + "weight": (config["hidden_size"], enc["hidden_size"]),
        PROJECTOR_PREFIX + "bias": (config["hidden_size"],),
    }
    if not config.get("tie_word_embeddings", False):
        required["lm_head.weight"] = (config["vocab_size"], config["hidden_size"])
    for stack, prefix in ((config, "model.layers."), (enc, ENCODER_PREFIX + "layers.")):
        for i in range(stack["num_hidden_layers"]):
            required[f"{prefix}{i}.self_attn.q_proj.weight"] = (stack["hidden_size"], stack["hidden_size"])
            required[f"{prefix}{i}.mlp.down_proj.weight"] = (stack["hidden_size"], stack["intermediate_size"])
    for name, shape in required.items():
        info = checkpoint.tensors.get(name)
        if info is None:
            raise CheckpointError(f"tensor {name} is missing: this is not a complete Dolphin checkpoint")
        if info.shape != shape:
            raise CheckpointError(f"tensor {name} has shape {list(info.shape)}, config.json says {list(shape)}")
        if info.dtype not in _BYTES_PER_DTYPE:
            raise CheckpointError(f"tensor {name} has unsupported dtype {info.dtype}")
