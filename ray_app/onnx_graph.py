"""A torch module as an ONNX graph, and an ONNX Runtime session of it: shared by the export of
a trained stage (``ray_app.export``) and the CPU model actors that serve a stage through
ONNX Runtime (``ray_app.infer.model``).

torch's TorchScript-based exporter (``dynamo=False``): opsets 11 to 20, every zoo family
exports with it at 11 (tests/test_export.py). torch deprecates it since 2.9; the pinned
torch 2.13.0 has it.
"""

from __future__ import annotations

import io
import logging
import warnings
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnxruntime
    import torch

log = logging.getLogger(__name__)


def to_onnx(module: torch.nn.Module, sample: torch.Tensor, inputs: list[str], outputs: list[str],
            dynamic_axes: dict[str, dict[int, str]], opset: int) -> bytes:
    """The ONNX file of ``module`` traced on ``sample`` (its mode as it is: eval for a model)."""
    import torch

    buffer = io.BytesIO()
    with warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter("always")  # the exporter's deprecation and tracer notes: logged below, once
        torch.onnx.export(module, (sample,), buffer, dynamo=False, opset_version=opset, input_names=inputs,
                          output_names=outputs, do_constant_folding=True, dynamic_axes=dynamic_axes)
    for note in {str(w.message).splitlines()[0] for w in caught}:
        log.debug("torch.onnx: %s", note)
    return buffer.getvalue()


def cpu_session(data: bytes, threads: int = 0) -> onnxruntime.InferenceSession:
    """An ONNX Runtime session of ``data`` on the CPU; ``threads``: its intra-op threads (0:
    ONNX Runtime's default, every core)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = options.inter_op_num_threads = threads
    return onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])
