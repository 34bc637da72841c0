"""The Ray Data stages of inference: read (driver node) -> preprocess -> model actors.

Rows carry image BYTES from the reader, so preprocessing and the model can run on nodes
that cannot see /in. Every row keeps ``ok`` and ``error`` so a bad image flows through
as an empty result instead of failing its batch.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import ray
import torch

from ray_app.infer.images import decode_bgr, read_bytes
from ray_app.infer.model import Detector, ModelBundle
from ray_app.mining import aldd, cald, entropy, random_baseline

META_KEYS = ("ori_shape", "img_shape", "scale_factor", "pad_param", "pad_shape", "batch_input_shape", "img_id")


def read_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Stage 1 (pinned to the driver's node): path -> bytes."""
    data, errors = zip(*(read_bytes(str(p)) for p in batch["path"]))
    return {"path": batch["path"], "data": np.array(data, dtype=object), "error": np.array(errors, dtype=object)}


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


class Preprocess:
    """Stage 2: decode and run the test pipeline (resize, letterbox) -> CHW uint8 arrays."""

    def __init__(self, steps: list[dict[str, Any]], size: int) -> None:
        from mmengine.dataset import Compose
        from mmyolo.utils import register_all_modules

        register_all_modules()
        self.pipeline = Compose(steps)
        self.blank = np.zeros((3, size, size), dtype=np.uint8)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        inputs, metas, errors = [], [], list(batch["error"])
        for i, data in enumerate(batch["data"]):
            if not errors[i]:
                try:
                    packed = self.pipeline(dict(img=decode_bgr(data), img_id=i))
                    inputs.append(packed["inputs"].numpy())
                    meta = packed["data_samples"].metainfo
                    metas.append(json.dumps({k: _jsonable(meta[k]) for k in META_KEYS if k in meta}))
                    continue
                except Exception as e:  # any decode/pipeline failure is this image's alone
                    errors[i] = f"{type(e).__name__}: {e}"
            inputs.append(self.blank)
            metas.append("{}")
        return {"path": batch["path"], "inputs": np.stack(inputs), "meta": np.array(metas, dtype=object),
                "error": np.array(errors, dtype=object)}


class DetectorActor:
    """Stage 3: one model per actor (per GPU, or CPU), batched forward pass, mining score."""

    def __init__(self, bundle: ModelBundle | ray.ObjectRef, use_gpu: bool, algorithm: str | None,
                 conf_threshold: float, class_weights: list[float] | None, task_id: str) -> None:
        bundle = ray.get(bundle) if isinstance(bundle, ray.ObjectRef) else bundle
        device = "cuda:0" if use_gpu and torch.cuda.is_available() else "cpu"
        if device == "cpu":
            # its share of the CPUs, rounded up: the forward pass is the bottleneck, and the
            # preprocessing actors' share is mostly idle while it runs
            cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
            torch.set_num_threads(max(1, math.ceil(cpus - 1e-6)))
        self.detector = Detector(bundle, device)
        self.algorithm = algorithm
        self.conf_threshold = conf_threshold
        self.weights = np.asarray(class_weights, dtype=np.float64) if class_weights else None
        self.task_id = task_id
        self.node_id = ray.get_runtime_context().get_node_id()
        print(f"model actor ready on node {self.node_id} ({device})", flush=True)

    def _packed(self, batch: dict[str, np.ndarray], rows: list[int]) -> list[dict[str, Any]]:
        from mmdet.structures import DetDataSample

        packed = []
        for i in rows:
            meta = json.loads(batch["meta"][i])
            meta["ori_shape"], meta["img_shape"] = tuple(meta["ori_shape"]), tuple(meta["img_shape"])
            if "scale_factor" in meta:
                meta["scale_factor"] = tuple(meta["scale_factor"])
            if "pad_param" in meta:
                meta["pad_param"] = np.asarray(meta["pad_param"], dtype=np.float32)
            packed.append({"inputs": torch.from_numpy(np.array(batch["inputs"][i])),
                           "data_samples": DetDataSample(metainfo=meta)})
        return packed

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["path"])
        dets = ["[]"] * n
        scores = np.full(n, -1.0)  # a bad image ranks last
        sizes = np.zeros((n, 2), dtype=np.int64)  # (height, width) of the original image
        good = [i for i in range(n) if not batch["error"][i]]
        if good:
            packed = self._packed(batch, good)
            detections, class_logits = self.detector.forward(packed)
            image_scores = self._scores(batch, good, packed, detections, class_logits)
            for k, i in enumerate(good):
                boxes, det_scores, labels = detections[k]
                dets[i] = json.dumps([[*map(float, b), float(s), int(c)] for b, s, c in zip(boxes, det_scores, labels)])
                scores[i] = image_scores[k]
                sizes[i] = packed[k]["data_samples"].metainfo["ori_shape"][:2]
        return {"path": batch["path"], "detections": np.array(dets, dtype=object), "score": scores,
                "height": sizes[:, 0], "width": sizes[:, 1], "error": batch["error"],
                "node": np.array([self.node_id] * n, dtype=object)}

    def _scores(self, batch, good, packed, detections, class_logits) -> list[float]:
        if self.algorithm is None:
            return [0.0] * len(good)
        if self.algorithm == "random":
            return [random_baseline.score(self.task_id, str(batch["path"][i])) for i in good]
        if self.algorithm == "entropy":
            return [entropy.score(s, c, self.conf_threshold, self.weights) for _, s, c in detections]
        if self.algorithm == "aldd":
            weights = torch.as_tensor(self.weights) if self.weights is not None else None
            return aldd.score_batch(list(class_logits), self.detector.num_classes, weights).tolist()
        flipped, _ = self.detector.forward(packed, flip=True)
        brighter, _ = self.detector.forward(packed, brightness=1.2)
        return [cald.score(detections[k], [flipped[k], brighter[k]], self.weights) for k in range(len(good))]
