"""ONNX: the exported graph of a :class:`~ray_app.export.decode.DecodedDetector`, and a run
of it in ONNX Runtime (the check that it computes what torch does). The exporter, its opsets
and why: ``ray_app.onnx_graph``. The batch axis is dynamic, the input size fixed: the priors
of each level are constants of the graph.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ray_app.onnx_graph import cpu_session, to_onnx

if TYPE_CHECKING:
    import torch

INPUT = "images"
OUTPUTS = ("boxes", "scores")


def export_onnx(detector: torch.nn.Module, size: tuple[int, int], opset: int, metadata: dict[str, str]) -> bytes:
    """The ONNX file of ``detector`` at input ``size`` (height, width), ``metadata`` in its
    ``metadata_props``, checked by ``onnx.checker``."""
    import onnx
    import torch

    data = to_onnx(detector, torch.zeros(1, 3, *size), [INPUT], list(OUTPUTS),
                   {name: {0: "batch"} for name in (INPUT, *OUTPUTS)}, opset)
    model = onnx.load_from_string(data)
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def run_onnx(data: bytes, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(boxes, scores) of the ONNX file ``data`` on ``images`` (B, 3, H, W) float32, in ONNX
    Runtime on the CPU."""
    boxes, scores = cpu_session(data).run(list(OUTPUTS), {INPUT: images.astype(np.float32)})
    return boxes, scores
