"""ONNX: the exported graph of a :class:`~ray_app.export.decode.DecodedDetector`, and a run
of it in ONNX Runtime (the check that it computes what torch does).

torch's TorchScript-based exporter (``dynamo=False``), as mmyolo's and the sister yolov5
executor's export tools use: opsets 11 to 20, where the torch.export-based one needs 18 or
more, which older runtimes (TensorRT 8, OpenCV's DNN) do not read. torch deprecates it since
2.9; the pinned torch 2.13.0 has it. Every family of the zoo exports with it at opset 11
(tests/test_export.py). The batch axis is dynamic, the input size fixed: the priors of each
level are constants of the graph.
"""

from __future__ import annotations

import io
import logging
import warnings
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

INPUT = "images"
OUTPUTS = ("boxes", "scores")


def export_onnx(detector: torch.nn.Module, size: tuple[int, int], opset: int, metadata: dict[str, str]) -> bytes:
    """The ONNX file of ``detector`` at input ``size`` (height, width), ``metadata`` in its
    ``metadata_props``, checked by ``onnx.checker``."""
    import onnx
    import torch

    buffer = io.BytesIO()
    sample = torch.zeros(1, 3, *size)
    with warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter("always")  # the exporter's deprecation and tracer notes: logged below, once
        torch.onnx.export(detector, (sample,), buffer, dynamo=False, opset_version=opset, input_names=[INPUT],
                          output_names=list(OUTPUTS), do_constant_folding=True,
                          dynamic_axes={name: {0: "batch"} for name in (INPUT, *OUTPUTS)})
    for note in {str(w.message).splitlines()[0] for w in caught}:
        log.debug("torch.onnx: %s", note)
    model = onnx.load_from_string(buffer.getvalue())
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def run_onnx(data: bytes, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(boxes, scores) of the ONNX file ``data`` on ``images`` (B, 3, H, W) float32, in ONNX
    Runtime on the CPU."""
    import onnxruntime

    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    boxes, scores = session.run(list(OUTPUTS), {INPUT: images.astype(np.float32)})
    return boxes, scores
