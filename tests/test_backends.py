"""Each backend loads a real model file and computes what NumPy computes."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from inference_server.models import ModelLoadError, load_model, to_batch
from inference_server.settings import ModelSpec, parse_section
from tests.models import expected_affine, write_builtin, write_mlp, write_onnx, write_torchscript

X = [[1.0, 2.0, 3.0], [-0.5, 0.0, 4.25], [10.0, -3.0, 0.5]]


def spec(**fields) -> ModelSpec:
    return parse_section(ModelSpec, {"name": "m", **fields}, origin="test")


def predict(model, rows):
    return model.predict(to_batch(rows, model.input))


def test_builtin_linear_and_logistic(tmp_path):
    linear = load_model(spec(backend="builtin", path=str(write_builtin(tmp_path / "l.json"))))
    np.testing.assert_allclose(predict(linear, X), expected_affine(X))
    assert linear.input.shape == (3,) and linear.version == "1.0"
    path = write_builtin(tmp_path / "g.json", kind="logistic")
    logistic = load_model(spec(backend="builtin", path=str(path)))
    np.testing.assert_allclose(predict(logistic, X), 1 / (1 + np.exp(-expected_affine(X))))


def test_builtin_mlp(tmp_path):
    reference = write_mlp(tmp_path / "mlp.json")
    model = load_model(spec(backend="builtin", path=str(tmp_path / "mlp.json")))
    out = predict(model, X)
    np.testing.assert_allclose(out, reference(X))
    np.testing.assert_allclose(out.sum(axis=1), 1.0)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"kind": "forest"}', "linear, logistic or mlp"),
        ('{"kind": "linear", "weights": [[1, 2]], "bias": [1, 2, 3]}', "one per output"),
        ('{"kind": "linear", "weights": "x", "bias": [1]}', "numeric"),
        (
            '{"kind": "mlp", "layers": [{"weights": [[1]], "bias": [0], "activation": "gelu"}]}',
            "activation",
        ),
        ("[1, 2]", "JSON object"),
        ("{oops", "not valid JSON"),
    ],
)
def test_builtin_bad_files(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ModelLoadError, match=message):
        load_model(spec(backend="builtin", path=str(path)))


def test_onnx(tmp_path):
    pytest.importorskip("onnxruntime")
    model = load_model(spec(backend="onnx", path=str(write_onnx(tmp_path / "m.onnx"))))
    assert model.input.shape == (3,) and model.input.dtype == "float32"
    out = predict(model, X)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected_affine(X), rtol=1e-5, atol=1e-5)
    assert model.details["input_name"] == "X"


@pytest.mark.parametrize(
    ("backend", "module", "message"),
    [
        ("onnx", "onnxruntime", "cannot load ONNX model"),
        ("torchscript", "torch", "cannot load TorchScript model"),
    ],
)
def test_unloadable_file_is_a_load_error(tmp_path, backend, module, message):
    pytest.importorskip(module)
    path = tmp_path / "junk.bin"
    path.write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match=message):
        load_model(spec(backend=backend, path=str(path)))


def test_onnx_unknown_input_name(tmp_path):
    pytest.importorskip("onnxruntime")
    path = write_onnx(tmp_path / "m.onnx")
    with pytest.raises(ModelLoadError, match="no input named 'Z'"):
        load_model(spec(backend="onnx", path=str(path), options={"input_name": "Z"}))


def test_torchscript(tmp_path):
    pytest.importorskip("torch")
    path = write_torchscript(tmp_path / "m.pt")
    model = load_model(spec(backend="torchscript", path=str(path), input={"shape": [3]}))
    out = predict(model, X)
    np.testing.assert_allclose(out, expected_affine(X), rtol=1e-5, atol=1e-5)
    assert model.input.dtype == "float32"


@pytest.mark.parametrize(
    ("backend", "module", "extra"),
    [("onnx", "onnxruntime", "'.[onnx]'"), ("torchscript", "torch", "'.[torch]'")],
)
def test_missing_optional_package_names_the_extra(tmp_path, monkeypatch, backend, module, extra):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail
    with pytest.raises(ModelLoadError) as info:
        load_model(spec(backend=backend, path=str(tmp_path / "any")))
    assert f"pip install -e {extra}" in str(info.value)


def test_input_validation_rules():
    from auth.errors import ValidationError
    from inference_server.models.base import InputSpec

    image = InputSpec(shape=(2, None), dtype="float32")
    assert to_batch([[[1, 2], [3, 4]]], image).shape == (1, 2, 2)
    assert to_batch([[1, 2, 5], [3, 4, 6]], image).shape == (1, 2, 3)  # one sample
    with pytest.raises(ValidationError, match="shape"):
        to_batch([[[1, 2]]], image)
    ints = InputSpec(shape=(2,), dtype="int64")
    assert to_batch([[1, 2]], ints).dtype == np.int64
    with pytest.raises(ValidationError, match="not integers"):
        to_batch([[1.5, 2]], ints)
    lenient = InputSpec(shape=(2,), dtype="float64", allow_non_finite=True)
    assert np.isnan(to_batch([[float("nan"), 1]], lenient)).any()
    with pytest.raises(ValidationError, match="NaN"):
        to_batch([[float("nan"), 1]], InputSpec(shape=(2,), dtype="float64"))
