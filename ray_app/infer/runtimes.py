"""What runs a CPU model actor's network (backbone, neck and head): torch, or ONNX Runtime on
the same network exported when the actor starts. One table, ``RUNTIMES``, that the
hyperparameter ``cpu_runtime`` names and :class:`~ray_app.infer.model.Detector` reads.

Everything around the network stays as it is: the test pipeline, the model's input
normalisation, and the head's own decoding and NMS (``predict_by_feat``) run in torch on the
maps either runtime gives, so detections, mining scores and features come from the same
code. On a GPU the network always runs in torch.

Why ONNX Runtime: the actor runs one batch per thread, each on one intra-op thread. Batches
of 8, 2 threads on 2 cores (``bench/runtime_bench.py``, 2026-11-27): ONNX Runtime gave
1.31-2.17x torch's images per second (yolov8_n at 160 px: 821.6 against 509.1; yolov5_n:
1,443.5 against 664.2), and its two threads scale as two (torch's: 1.8).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

#: the opset of the actor's own graph (every zoo family exports at 11: tests/test_export.py)
OPSET = 11


class TorchNetwork:
    """The network in torch, as mmdet runs it."""

    def __init__(self, model: torch.nn.Module, input_size: int) -> None:
        import torch

        #: the order of the input and the weights: on the CPU channels-last (NHWC), which oneDNN's
        #: convolutions run natively instead of reordering every input and output (yolov8_n at
        #: 256 px, batches of 8, one stream per core on one thread: 142.5 -> 215.7 images/s on
        #: 2 cores, bench/infer_bench.py's forward limit, both layouts); as given on a GPU (not
        #: measured there)
        cpu = next(model.parameters()).device.type == "cpu"
        self.memory_format = torch.channels_last if cpu else torch.contiguous_format
        self.model = model.to(memory_format=self.memory_format)

    def __call__(self, inputs: torch.Tensor, features: bool) -> tuple[tuple[Any, ...], torch.Tensor | None]:
        """(the head's outputs, as ``predict_by_feat`` takes them; the deepest neck level
        averaged over space, with ``features``)."""
        levels = self.model.extract_feat(inputs)
        pooled = levels[-1].float().mean(dim=(2, 3)) if features else None
        return self.model.bbox_head(levels), pooled


class OnnxNetwork:
    """The network exported to ONNX (in eval mode, BatchNorm folded: the model as given) and
    run by ONNX Runtime with one intra-op thread per call, so that concurrent calls, one per
    thread of the actor, each hold one core. The input's batch and spatial axes are dynamic.
    Before it serves, its maps on one noise image must match torch's (to 1e-3, relative and
    absolute); else it raises, and the detector falls back to torch."""

    def __init__(self, model: torch.nn.Module, input_size: int) -> None:
        import torch

        from ray_app.onnx_graph import cpu_session, to_onnx

        #: NCHW, the order of the graph's input: a channels-last batch would be reordered for
        #: nothing and back in ``__call__`` (two copies of every batch, 2 % of a CPU actor
        #: thread's time with yolov8_n at 160 px)
        self.memory_format = torch.contiguous_format
        maps = _maps_module(model)
        noise = torch.from_numpy(np.random.default_rng(0).normal(size=(1, 3, input_size, input_size)).astype("float32"))
        with torch.no_grad():  # one torch pass: the outputs' layout, and what ONNX Runtime must match
            outs = model.bbox_head(model.extract_feat(noise))
        self.groups, self.levels = len(outs), len(outs[0])
        names = [f"out{g}_{k}" for g in range(self.groups) for k in range(self.levels)] + ["pooled"]
        axes = {"inputs": {0: "batch", 2: "height", 3: "width"},
                **{name: {0: "batch", 2: f"{name}_h", 3: f"{name}_w"} for name in names[:-1]}, "pooled": {0: "batch"}}
        self.session = cpu_session(to_onnx(maps, noise, ["inputs"], names, axes, OPSET), threads=1)
        got = self.session.run(None, {"inputs": noise.numpy()})[:-1]
        for w, g in zip((m for group in outs for m in group), got):
            if not np.allclose(g, w.numpy(), rtol=1e-3, atol=1e-3):
                raise ValueError(f"ONNX Runtime's maps are {float(np.abs(g - w.numpy()).max()):.3g} from torch's")

    def __call__(self, inputs: torch.Tensor, features: bool) -> tuple[tuple[Any, ...], torch.Tensor | None]:
        import torch

        arrays = self.session.run(None, {"inputs": inputs.contiguous().numpy()})
        maps = [torch.from_numpy(a) for a in arrays[:-1]]
        outs = tuple(maps[g * self.levels:(g + 1) * self.levels] for g in range(self.groups))
        return outs, torch.from_numpy(arrays[-1]) if features else None


def _maps_module(model: torch.nn.Module) -> torch.nn.Module:
    """The module :class:`OnnxNetwork` traces: every map of the head, group by group and
    level by level, then the deepest neck level averaged over space."""
    from torch import nn

    class Maps(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.eval()

        def forward(self, inputs):
            levels = self.model.extract_feat(inputs)
            outs = self.model.bbox_head(levels)
            return (*[m for group in outs for m in group], levels[-1].mean(dim=(2, 3)))

    return Maps()


#: ``cpu_runtime`` -> what runs the network on the CPU
RUNTIMES = {"torch": TorchNetwork, "onnxruntime": OnnxNetwork}
