"""The TorchScript backend (optional extra: pip install -e '.[torch]').

Loads a `torch.jit.save`d module on the CPU and runs it under `torch.inference_mode()`. A
TorchScript file does not declare its input, so state `input.shape` in the config to have inputs
checked before they reach the model; the element type defaults to float32. Option: `threads`
(torch's intra-op threads for this process).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from .base import LoadedModel, ModelLoadError, resolve_input


def load(spec: Any) -> LoadedModel:
    try:
        import torch
    except ImportError:
        raise ModelLoadError(
            "the torchscript backend needs PyTorch: pip install -e '.[torch]' "
            "(pip install torch==2.13.0 takes the CPU build)"
        ) from None
    if spec.options.get("threads"):
        torch.set_num_threads(int(spec.options["threads"]))
    try:
        with warnings.catch_warnings():
            # torch marks TorchScript deprecated; loading the files users have is our job.
            warnings.filterwarnings(
                "ignore", message=".*is deprecated", category=DeprecationWarning
            )
            module = torch.jit.load(spec.path, map_location="cpu")
    except (RuntimeError, ValueError, OSError) as exc:
        raise ModelLoadError(f"cannot load TorchScript model {spec.path}: {exc}") from None
    module.eval()

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = module(torch.from_numpy(batch))
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out.detach().cpu().numpy()

    return LoadedModel(
        name=spec.name,
        version=str(spec.version or "1"),
        backend="torchscript",
        input=resolve_input(spec.input, shape=None, dtype="float32"),
        run=run,
        outputs=spec.outputs,
        description=spec.description,
        details={"torch": torch.__version__},
    )
