"""The machine's ceilings for a matrix product through ONNX Runtime, fp32 and int8.

An int8 encoder is held to the int8 ceiling, not the fp32 one: on a CPU with VNNI the u8 x s8
product runs ~3x the fp32 rate, so "90% of the fp32 peak" can be 30% of what the hardware does.
Both are a square product of `size` (2048 by default) with the session options the app uses,
except that their threads do not spin once a product is done: ONNX Runtime's workers spin-wait
for more work after a run, and on 2 cores a product's spinning pool took ~10 % from an encoder
chunk started right after it (0.295 s best, 0.315 median, against 0.258 / 0.283 after a product
that does not spin; 0.274 / 0.281 after a pause). A single large GEMM does not need them to spin.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

from inference.providers import session_options


def _session(nodes: list, inputs: list, output_type: int, size: int, threads: int) -> ort.InferenceSession:
    graph = helper.make_graph(nodes, "peak", inputs, [helper.make_tensor_value_info("c", output_type, [size, size])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = session_options(threads)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def fp32_product(size: int, threads: int) -> Callable[[], None]:
    """One fp32 MatMul of two size x size matrices, ready to run."""
    session = _session(
        [helper.make_node("MatMul", ["a", "b"], ["c"])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [size, size]) for n in ("a", "b")],
        TensorProto.FLOAT,
        size,
        threads,
    )
    a = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
    return lambda: session.run(None, {"a": a, "b": a})


def int8_product(size: int, threads: int) -> Callable[[], None]:
    """One MatMulInteger of u8 x s8 size x size matrices (the VNNI kernel's native pair), ready to run."""
    session = _session(
        [helper.make_node("MatMulInteger", ["a", "b"], ["c"])],
        [
            helper.make_tensor_value_info("a", TensorProto.UINT8, [size, size]),
            helper.make_tensor_value_info("b", TensorProto.INT8, [size, size]),
        ],
        TensorProto.INT32,
        size,
        threads,
    )
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (size, size), dtype=np.uint8)
    b = rng.integers(-127, 128, (size, size), dtype=np.int8)
    return lambda: session.run(None, {"a": a, "b": b})


def best_rate(run: Callable[[], None], size: int, repeats: int = 5) -> float:
    """Operations per second (2 size^3 per product), best of `repeats`, in G/s."""
    run()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best / 1e9


def peaks(threads: int, size: int = 2048) -> dict[str, float]:
    return {
        "fp32_gflops": best_rate(fp32_product(size, threads), size),
        "int8_gops": best_rate(int8_product(size, threads), size),
        "size": size,
    }
