"""Helpers shared by the benchmarks: machine info and result files."""

from __future__ import annotations

import json
import os
import platform
import threading
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``): the same 2-core machine has been lent on
    different hosts, whose network speed differed by 2.2x (yolov8_n's forward limit at 160 px
    in ONNX Runtime, 834.7 images/s on 2026-11-27 morning, 379.9 on an "AMD EPYC" that afternoon)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    import torch

    return {"cpu_count": os.cpu_count(), "cpu_model": cpu_model(), "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}


class BusyCores:
    """How many of the machine's cores were busy while a block ran: ``/proc/stat`` (Linux) read
    every ``interval`` s by a thread. ``between(a, b)`` averages the samples from ``a`` to ``b``
    seconds after the block began: whether a step of a start-up had the machine to itself or
    waited on one process while cores stood idle."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.samples: list[tuple[float, float]] = []  # (seconds since the start, busy cores since the sample before)
        self._stop = threading.Event()

    @staticmethod
    def _read() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        return sum(fields), fields[3] + fields[4]  # all jiffies, idle + iowait

    def _sample(self) -> None:
        cores = os.cpu_count() or 1
        before = self._read()
        while not self._stop.wait(self.interval):
            now = self._read()
            total = now[0] - before[0]
            if total:
                self.samples.append((time.monotonic() - self.start, cores * (1 - (now[1] - before[1]) / total)))
            before = now

    def __enter__(self) -> BusyCores:
        self.start = time.monotonic()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def between(self, a: float, b: float) -> float | None:
        """Mean busy cores over the samples that end within (a, b]; None if none do."""
        inside = [busy for at, busy in self.samples if a < at <= b]
        return round(sum(inside) / len(inside), 2) if inside else None


def save(name: str, payload: dict) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **payload}, indent=2) + "\n")
    return path


def noise_pixels(batch: int, size: int, seed: int):
    """Images as the test pipeline hands them to a model: uint8 BGR (batch, 3, size, size) noise."""
    import numpy as np
    import torch

    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (batch, 3, size, size), dtype=np.uint8))


def untrained_detector(model_name: str, size: int, num_classes: int = 3):
    """(detector, ModelBundle) of the zoo model at ``size``, randomly initialised, its
    BatchNorm statistics measured on noise (with the initial ones, activations grow through
    the layers to 1e8 px boxes) and folded as in inference: outputs of a trained model's
    magnitude, for the export's tests and benchmark, with no training."""
    import torch
    from mmcv.cnn import fuse_conv_bn
    from mmdet.apis import init_detector
    from mmengine.config import Config
    from mmyolo.utils import register_all_modules

    from ray_app.infer.model import ModelBundle
    from ray_app.model_config.edit import set_img_size, set_num_classes
    from ray_app.model_config.zoo import config_path

    register_all_modules()
    cfg = Config.fromfile(config_path(model_name))
    set_num_classes(cfg, num_classes)
    set_img_size(cfg, size)
    cfg.model.use_syncbn = False
    torch.manual_seed(0)
    model = init_detector(cfg, checkpoint=None, device="cpu", palette="none")
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over the batches below
    with torch.no_grad():
        for seed in range(3):  # pixels as the test pipeline gives them, normalised as the model does
            inputs = model.data_preprocessor({"inputs": list(noise_pixels(4, size, seed=10 + seed))}, False)["inputs"]
            model.train()
            model.extract_feat(inputs)
            model.eval()
    bundle = ModelBundle(cfg, {}, [f"c{i}" for i in range(num_classes)], model_name)
    return fuse_conv_bn(model), bundle
