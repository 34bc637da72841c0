"""The deployment formats a trained stage can be exported to: one table that the training
template's ``deploy_formats`` names, and the export reads (as Ultralytics'
``export_formats()``). A new format is one module and one entry here."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ray_app.export import onnx_format


@dataclass(frozen=True)
class ExportFormat:
    """One format: how to make the file and how to run it back for the check."""

    #: the name ``deploy_formats`` uses
    name: str
    #: the file's suffix, after the stage name (``epoch_30.onnx``)
    suffix: str
    #: the modules it needs, beside torch (the image installs them)
    modules: tuple[str, ...]
    #: the ``opset`` values it takes
    opsets: range
    #: (detector, (height, width), opset, metadata) -> the file's bytes
    export: Callable[..., bytes]
    #: (file bytes, images (B, 3, H, W) float32) -> (boxes, scores), as the detector gives them
    run: Callable[[bytes, np.ndarray], tuple[np.ndarray, np.ndarray]]

    def missing_modules(self) -> list[str]:
        """The modules it needs that this Python cannot import (found without importing)."""
        return [m for m in self.modules if importlib.util.find_spec(m) is None]


FORMATS = {f.name: f for f in (
    ExportFormat("onnx", ".onnx", ("onnx", "onnxruntime"), range(11, 21), onnx_format.export_onnx,
                 onnx_format.run_onnx),
)}
