"""The ONNX Runtime backend (optional extra: pip install -e '.[onnx]').

Serves single-input models on the CPU. The input's shape and element type come from the graph
(symbolic dimensions accept any size) unless the config states them. Options: `input_name` and
`output_name` to pick among several, `threads` for ONNX Runtime's intra-op thread pool.
"""

from __future__ import annotations

from typing import Any

from .base import LoadedModel, ModelLoadError, resolve_input

ONNX_TYPES = {"tensor(float)": "float32", "tensor(double)": "float64", "tensor(int64)": "int64"}


def _pick(items: list[Any], wanted: str | None, what: str) -> Any:
    if wanted is None:
        if len(items) != 1 and what == "input":
            raise ModelLoadError(f"the graph has {len(items)} inputs; set options.input_name")
        return items[0]
    for item in items:
        if item.name == wanted:
            return item
    raise ModelLoadError(f"the graph has no {what} named {wanted!r}")


def load(spec: Any) -> LoadedModel:
    try:
        import onnxruntime as ort
    except ImportError:
        raise ModelLoadError(
            "the onnx backend needs ONNX Runtime: pip install -e '.[onnx]'"
        ) from None
    options = ort.SessionOptions()
    if spec.options.get("threads"):
        options.intra_op_num_threads = int(spec.options["threads"])
    try:
        session = ort.InferenceSession(
            spec.path, sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime raises its own, undocumented exception classes
        raise ModelLoadError(f"cannot load ONNX model {spec.path}: {exc}") from None
    graph_input = _pick(session.get_inputs(), spec.options.get("input_name"), "input")
    graph_output = _pick(session.get_outputs(), spec.options.get("output_name"), "output")
    dtype = ONNX_TYPES.get(graph_input.type)
    if dtype is None:
        raise ModelLoadError(f"input type {graph_input.type} is not supported")
    shape = [d if isinstance(d, int) else None for d in graph_input.shape[1:]]
    in_name, out_name = graph_input.name, graph_output.name

    def run(batch):
        return session.run([out_name], {in_name: batch})[0]

    meta = session.get_modelmeta()
    # An unset model_version reads back as 0 or as INT64_MAX, depending on the exporter.
    graph_version = meta.version if 0 < meta.version < 2**63 - 1 else None
    return LoadedModel(
        name=spec.name,
        version=str(spec.version or graph_version or "1"),
        backend="onnx",
        input=resolve_input(spec.input, shape=shape, dtype=dtype),
        run=run,
        outputs=spec.outputs or [graph_output.name],
        description=spec.description or meta.description or None,
        details={"input_name": in_name, "output_name": out_name, "producer": meta.producer_name},
    )
