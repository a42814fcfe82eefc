"""Tiny real models built at test time, with the NumPy function each one must equal."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

W = np.array([[0.5, -1.0], [0.25, 2.0], [-0.75, 0.1]])
B = np.array([0.1, -0.2])


def expected_affine(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64) @ W + B


def write_builtin(path: Path, *, kind: str = "linear", scale: float = 1.0, version: str = "1.0"):
    path.write_text(
        json.dumps(
            {
                "format": "builtin-v1",
                "kind": kind,
                "version": version,
                "weights": (W * scale).tolist(),
                "bias": (B * scale).tolist(),
            }
        )
    )
    return path


def write_mlp(path: Path) -> Path:
    hidden_w = np.array([[1.0, -1.0, 0.5, 0.0], [0.5, 0.5, -0.5, 1.0], [-1.0, 0.25, 1.0, 0.5]])
    hidden_b = np.array([0.0, 0.1, -0.1, 0.2])
    out_w = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.5]])
    out_b = np.array([0.05, -0.05])
    path.write_text(
        json.dumps(
            {
                "format": "builtin-v1",
                "kind": "mlp",
                "layers": [
                    {"weights": hidden_w.tolist(), "bias": hidden_b.tolist(), "activation": "relu"},
                    {"weights": out_w.tolist(), "bias": out_b.tolist(), "activation": "softmax"},
                ],
            }
        )
    )

    def reference(x):
        h = np.maximum(np.asarray(x, dtype=np.float64) @ hidden_w + hidden_b, 0)
        z = h @ out_w + out_b
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    return reference


def write_onnx(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["X", "W"], ["XW"]),
            helper.make_node("Add", ["XW", "B"], ["Y"]),
        ],
        "affine",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", 2])],
        [
            numpy_helper.from_array(W.astype(np.float32), "W"),
            numpy_helper.from_array(B.astype(np.float32), "B"),
        ],
    )
    # IR 8 / opset 17: what every ONNX Runtime of the last years reads.
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def write_torchscript(path: Path) -> Path:
    import torch

    layer = torch.nn.Linear(3, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(W.T, dtype=torch.float32))
        layer.bias.copy_(torch.tensor(B, dtype=torch.float32))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is deprecated", category=DeprecationWarning)
        torch.jit.save(torch.jit.script(layer), str(path))
    return path
