"""Encoder precision: the converter's int8 and int4 encoders against its fp32 one, on the committed
tiny checkpoint, and the manifest identity that keeps their memories apart.

Tolerances are the documented ones (benchmarks/README.md, "Encoder precision"), set with margin
under what benchmarks/encoder_precision.py measured on these fixtures: int8 cosine 0.9991 mean,
0.992 worst; int4 0.95 mean, 0.83 worst (random weights: a trained model's figures are in the
benchmark's results).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from app.library.store import Store
from tests.conftest import CHECKPOINT

TOLERANCE = {"int8": {"cosine_mean": 0.995, "cosine_min": 0.98}, "int4": {"cosine_mean": 0.9, "cosine_min": 0.75}}


@pytest.fixture(scope="session")
def encoder_bundles(fp32_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One bundle per encoder precision, all with the fp32 decoder, made by the converter."""
    from onnx_export.convert import convert

    folder = tmp_path_factory.mktemp("encoder-precision")
    bundles = {"fp32": fp32_bundle}
    for precision in ("int8", "int4"):
        bundles[precision] = convert(
            str(CHECKPOINT), folder / precision, precision="fp32", provider="cpu", encoder_precision=precision
        )
    return bundles


@pytest.fixture(scope="session")
def encoder_models(encoder_bundles: dict[str, Path]) -> dict:
    from inference import DolphinModel

    return {precision: DolphinModel.load(bundle) for precision, bundle in encoder_bundles.items()}


def _cosines(states: np.ndarray, reference: np.ndarray) -> np.ndarray:
    return (states * reference).sum(-1) / (np.linalg.norm(states, axis=-1) * np.linalg.norm(reference, axis=-1))


def test_quantized_memories_stay_within_tolerance_of_fp32(encoder_models: dict, reference: dict, report) -> None:
    contexts = [case["contexts"][0] for case in reference["cases"][:3]]
    fp32 = np.stack([encoder_models["fp32"].encode(text).states for text in contexts])
    worst_delta = {}
    for precision, bounds in TOLERANCE.items():
        states = np.stack([encoder_models[precision].encode(text).states for text in contexts])
        assert states.shape == fp32.shape and np.isfinite(states).all()
        cosines = _cosines(states, fp32)
        assert cosines.mean() >= bounds["cosine_mean"], (precision, cosines.mean())
        assert cosines.min() >= bounds["cosine_min"], (precision, cosines.min())
        worst_delta[precision] = float(np.abs(states - fp32).max())
        report(f"{precision} encoder vs fp32: cosine {cosines.mean():.4f} mean, {cosines.min():.4f} worst, "
               f"max |delta| {worst_delta[precision]:.3f}")  # fmt: skip
    assert worst_delta["int8"] < worst_delta["int4"]


def test_each_precision_has_its_own_identity_and_its_memories_stay_apart(
    encoder_models: dict, encoder_bundles: dict[str, Path], tmp_path: Path
) -> None:
    from inference import InputError, load_manifest

    identities = {precision: model.encoder_identity for precision, model in encoder_models.items()}
    assert len(set(identities.values())) == 3
    for precision, bundle in encoder_bundles.items():
        manifest = load_manifest(bundle, verify_hashes=True)
        assert manifest.encoder.precision == precision
        assert f"-{precision}-" in manifest.encoder_identity
    assert "encoder_quantization" in load_manifest(encoder_bundles["int8"]).content.converter

    memory = encoder_models["int8"].encode("The ark rested on the mountains of Ararat.")
    with pytest.raises(InputError):
        encoder_models["fp32"].project([memory])
    store = Store(tmp_path)
    try:
        store.put_memory("h", identities["int8"], memory.states, memory.token_count)
        assert store.get_memory("h", identities["fp32"]) is None
        assert store.get_memory("h", identities["int8"]) is not None
    finally:
        store.close()


def test_the_int8_encoder_runs_on_int8_kernels(encoder_bundles: dict[str, Path]) -> None:
    """Every weight product is quantized: u8 x s8 dynamic where a norm or attention feeds it,
    row-wise u8 x s8 (MatMulInteger) for the down projection; no fp32 MatMul with a weight is left."""
    model = onnx.load(str(encoder_bundles["int8"] / "encoder" / "model.onnx"), load_external_data=False)
    ops = [node.op_type for node in model.graph.node]
    weights = {t.name for t in model.graph.initializer}
    assert not [n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in weights]
    assert ops.count("DynamicQuantizeMatMul") == 2 * 4  # qkv, o, gate, up in each of 2 layers
    assert ops.count("MatMulInteger") == 2 and "MatMulNBits" not in ops
    integer = [n for n in model.graph.node if n.op_type == "MatMulInteger"]
    assert all(n.input[1] in weights and n.input[1].endswith("_s8") for n in integer)


def _one_matmul(path: Path, weight: np.ndarray, opset: int = 21) -> None:
    k, n = weight.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="/model/layers.0/mlp/down_proj/MatMul")],
        "one",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "sequence", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "sequence", n])],
        [onnx.numpy_helper.from_array(weight, "w")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), str(path))


@pytest.mark.parametrize("opset", [17, 21])  # the embedder's export, the encoder's: reductions differ
def test_rowwise_int8_gives_each_token_its_own_scale(tmp_path: Path, opset: int) -> None:
    """A token whose inputs are 500x the others' (a trained down projection has such tokens) costs
    the other tokens nothing: each row is quantized with its own scale. One scale for the whole
    matrix, as DynamicQuantizeMatMul uses, flattens them. Any batch and sequence shape runs."""
    import onnxruntime as ort

    from onnx_export.quantize import dynamic_int8, rewrite_matmuls, rowwise_int8

    rng = np.random.default_rng(5)
    weight = rng.standard_normal((64, 24)).astype(np.float32)
    x = rng.standard_normal((2, 7, 64)).astype(np.float32)
    x[1, 3] *= 500
    source = tmp_path / "fp32.onnx"
    _one_matmul(source, weight, opset)
    results = {}
    for name, rule in {"rowwise": rowwise_int8, "per_matrix": dynamic_int8}.items():
        target = tmp_path / f"{name}.onnx"
        rewrite_matmuls(source, target, lambda node, w, _producer, writer, rule=rule: rule(node, w, writer))
        session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
        results[name] = session.run(None, {"x": x})[0]
    exact = x @ weight
    assert results["rowwise"].shape == exact.shape == (2, 7, 24)
    others = np.ones((2, 7), dtype=bool)
    others[1, 3] = False

    def error(y: np.ndarray, rows: np.ndarray) -> float:
        return float(np.abs(y[rows] - exact[rows]).max() / np.abs(exact[rows]).max())

    assert error(results["rowwise"], others) < 0.02
    assert error(results["rowwise"], ~others) < 0.02
    assert error(results["per_matrix"], others) > 10 * error(results["rowwise"], others)

    session = ort.InferenceSession(str(tmp_path / "rowwise.onnx"), providers=["CPUExecutionProvider"])
    for shape in [(1, 1, 64), (3, 1, 64), (1, 9, 64), (1, 0, 64)]:
        rows = rng.standard_normal(shape).astype(np.float32)
        y = session.run(None, {"x": rows})[0]
        assert y.shape == (*shape[:2], 24)
        np.testing.assert_allclose(y, rows @ weight, atol=0.02 * max(1.0, float(np.abs(rows @ weight).max(initial=0))))
    assert not session.run(None, {"x": np.zeros((2, 3, 64), np.float32)})[0].any()


def test_smoothing_alone_changes_nothing_in_fp32(fp32_bundle: Path, tmp_path: Path) -> None:
    """SmoothQuant only moves scale between each norm and its MatMuls: with the weights left in
    fp32, the encoder computes the same states."""
    import onnxruntime as ort

    from onnx_export.quantize import rewrite_matmuls
    from onnx_export.smoothing import calibration_feeds, smoothing_factors

    source = fp32_bundle / "encoder" / "model.onnx"
    ids = np.random.default_rng(3).integers(0, 500, (2, 40)).tolist()
    feeds = calibration_feeds(source, ids, 1, 16)
    model = onnx.load(str(source))
    arrays = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    smoothing = smoothing_factors(source, feeds, lambda name: arrays[name])
    assert smoothing.norm_divisors and len(smoothing.row_multipliers) == 2 * 3  # qkv; gate and up

    def keep_fp32(node, weight, _producer, writer):
        writer.add(node.input[1], weight, TensorProto.FLOAT)
        return node

    target = tmp_path / "model.onnx"
    rewrite_matmuls(source, target, keep_fp32, smoothing)
    runs = [ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]) for path in (source, target)]
    for feed in feeds:
        before, after = (run.run(["hidden_states"], feed)[0] for run in runs)
        np.testing.assert_allclose(after, before, atol=1e-4, rtol=1e-4)


def test_default_and_refused_encoder_precisions(tmp_path: Path) -> None:
    from onnx_export.convert import ConversionError, convert, default_encoder_precision

    assert default_encoder_precision("int4", "cpu") == "int8"
    assert default_encoder_precision("fp32", "cpu") == "fp32"
    assert default_encoder_precision("int4", "cuda") == "int4"
    with pytest.raises(ConversionError, match="CPU only"):
        convert(str(CHECKPOINT), tmp_path / "b", provider="cuda", encoder_precision="int8")
    with pytest.raises(ConversionError, match="encoder precision"):
        convert(str(CHECKPOINT), tmp_path / "b", encoder_precision="int2")
