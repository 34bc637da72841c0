"""The Ray Data stages of inference: preprocess -> model actors.

On a cluster rows carry image BYTES from the read stage (``images.read_batch``, on the
driver's node), so preprocessing and the model can run on nodes that cannot see /in; on a
local Ray rows carry paths and the first actor reads them (``images.with_bytes``). Every row
keeps ``error`` so a bad image flows through as an empty result instead of failing its batch.

Two layouts (``pipeline.stream_results`` picks one):
- **GPU**: a pool of ``PreprocessActor``s decodes on the CPUs and hands letterboxed arrays
  to one ``DetectorActor`` per GPU, so decoding scales with the CPUs, not with the GPUs.
- **CPU**: each ``DetectorActor`` decodes its own batches (``preprocess_steps`` given) and
  works on one batch per CPU it holds, in as many threads, each running torch on one
  thread (see ``model.Detector``). While one thread decodes or runs NMS the others are in
  the network, and there is no second process with its imports and its copies of every
  preprocessed image.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
import ray
import torch

from ray_app.devices import model_device
from ray_app.infer import LOADING_SINCE, PROCESS_AGE_AT_LOADING
from ray_app.infer.images import decode_bgr, with_bytes
from ray_app.infer.model import Detector, ModelBundle, Pass, import_model_modules
from ray_app.infer.runtimes import RUNTIMES
from ray_app.mining import ALGORITHMS, MiningBatch
from ray_app.pause import pause_point

#: Modules a model actor never runs, which mmdet and mmengine import only if they can (each in
#: ``try: import ... except ImportError``): scikit-learn, for multi-object tracking
#: (``mmdet.models.task_modules.tracking``); albumentations, which imports scikit-learn through
#: qudida, for the ``Albu`` training augmentation (together 0.6 s of a model actor's imports on 2
#: cores: 2.06 -> 1.45 s); torch's ZeroRedundancyOptimizer (``mmengine.optim``, which then
#: registers a placeholder) and mmengine's FSDP strategy (``mmengine._strategy``, which then
#: leaves it out). The last two and ``TRAINING_ONLY_STUBS`` keep torch's FSDP and DTensor
#: modules, with sympy, out of the actor: ``mmcv.cnn`` imports mmengine's runner, and with it
#: these, though inference builds no optimiser and wraps no model (mmcv's, mmdet's and
#: mmyolo's imports 1.68 -> 0.94 s, medians of 3 alone on 2 cores: ``bench/actor_imports.py``).
TRAINING_ONLY_IMPORTS = ("sklearn", "albumentations", "torch.distributed.optim", "mmengine._strategy.fsdp")

#: Modules imported without a ``try``, whose one class stands in there by a placeholder that
#: refuses to be built: ``mmengine.model`` imports its FSDP wrapper whenever torch is 2.0 or later.
TRAINING_ONLY_STUBS = {"mmengine.model.wrappers.fully_sharded_distributed": "MMFullyShardedDataParallel"}

META_KEYS = ("ori_shape", "img_shape", "scale_factor", "pad_param", "pad_shape", "batch_input_shape", "img_id")


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def detection_row(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> str:
    """One image's detections as the model actors return them: JSON ``[[x1, y1, x2, y2, score,
    class], ...]``."""
    return json.dumps([[*map(float, b), float(s), int(c)] for b, s, c in zip(boxes, scores, labels)])


def skip_training_only_imports() -> None:
    """Inside a Ray actor, have the optional imports of ``TRAINING_ONLY_IMPORTS`` fail as if they
    were not installed (``sys.modules[name] = None``; one already imported stays), and
    ``TRAINING_ONLY_STUBS`` import their placeholders.
    Only there: an actor owns its worker process, which ends with it. A driver or a test
    process that builds these classes directly is left as it is."""
    if not ray.is_initialized() or ray.get_runtime_context().get_actor_id() is None:
        return
    leave_out_training_only()


def leave_out_training_only() -> None:
    """What :func:`skip_training_only_imports` does inside an actor, in any process (for
    ``bench/actor_imports.py``): a process that calls it cannot train afterwards."""
    for name in TRAINING_ONLY_IMPORTS:
        sys.modules.setdefault(name, None)
    for name, cls in TRAINING_ONLY_STUBS.items():
        sys.modules.setdefault(name, _training_only_stub(name, cls))


def _training_only_stub(name: str, cls: str) -> ModuleType:
    """A module ``name`` whose class ``cls`` says, if anything builds it, why it is not here."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError(f"{cls} is for training; a model actor leaves {name} out (ray_app.infer.actors)")

    module = ModuleType(name)
    setattr(module, cls, type(cls, (), {"__init__": refuse, "__module__": name}))
    return module


def loaded(started: float) -> list[tuple[str, float]]:
    """An actor's first phases, up to ``started`` (``time.monotonic()`` once its imports are
    done): its worker process's own start (``process``: Python, Ray's core worker, ``ray.data``,
    on Linux) and the inference modules' imports with torch and mmengine (``imports``)."""
    process = [("process", PROCESS_AGE_AT_LOADING)] if PROCESS_AGE_AT_LOADING is not None else []
    return [*process, ("imports", started - LOADING_SINCE)]


def start_up(phases: list[tuple[str, float]]) -> str:
    """Where an actor's start went, for its ready line: ``process 2.0 s, imports 1.4 s, mmdet/mmyolo 0.9 s``,
    each phase's name and seconds, in order (``bench/infer_bench.py --timeline`` reads them)."""
    return ", ".join(f"{phase} {seconds:.1f} s" for phase, seconds in phases)


class Preprocess:
    """Decode and run the test pipeline (resize, letterbox): as a Ray Data stage of its
    own (``__call__``, GPU layout) or inside a CPU model actor (``samples``)."""

    def __init__(self, steps: list[dict[str, Any]], size: int) -> None:
        skip_training_only_imports()
        from mmengine.dataset import Compose
        from mmyolo.utils import register_all_modules

        register_all_modules()
        self.pipeline = Compose(steps)
        self.blank = np.zeros((3, size, size), dtype=np.uint8)

    def samples(self, data: np.ndarray, errors: list[str]) -> list[dict[str, Any] | None]:
        """One packed sample (``inputs`` tensor + ``data_samples``) per image, ``None`` for a bad
        one; ``errors`` gets the reason of each image that fails here."""
        packed: list[dict[str, Any] | None] = []
        for i, encoded in enumerate(data):
            packed.append(None)
            if not errors[i]:
                try:
                    packed[i] = self.pipeline(dict(img=decode_bgr(encoded), img_id=i))
                except Exception as e:  # any decode/pipeline failure is this image's alone
                    errors[i] = f"{type(e).__name__}: {e}"
        return packed

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The stage: bytes -> CHW uint8 arrays and JSON meta (plain columns Ray Data can ship)."""
        batch = with_bytes(batch)
        errors = list(batch["error"])
        inputs, metas = [], []
        for sample in self.samples(batch["data"], errors):
            if sample is None:
                inputs.append(self.blank)
                metas.append("{}")
                continue
            inputs.append(sample["inputs"].numpy())
            meta = sample["data_samples"].metainfo
            metas.append(json.dumps({k: _jsonable(meta[k]) for k in META_KEYS if k in meta}))
        return {"path": batch["path"], "inputs": np.stack(inputs), "meta": np.array(metas, dtype=object),
                "error": np.array(errors, dtype=object)}


class PreprocessActor(Preprocess):
    """The GPU layout's preprocessing stage as Ray Data runs it, in actors of its own: a
    ``Preprocess`` that says, once up, where its start went, as the model actor does. The
    first results need both, so the two ready lines tell a slow preprocessing start from a
    slow model actor."""

    def __init__(self, steps: list[dict[str, Any]], size: int) -> None:
        started = time.monotonic()
        super().__init__(steps, size)
        phases = [*loaded(started), ("pipeline", time.monotonic() - started)]
        print(f"preprocessing actor ready on node {ray.get_runtime_context().get_node_id()}: {start_up(phases)}",
              flush=True)


@dataclass(frozen=True)
class DetectorSpec:
    """What a model actor is built from, by keyword and checked on the driver: a name that is
    not a mining algorithm fails here, not in an actor after Ray has started it."""

    bundle: ModelBundle | ray.ObjectRef  # the stage; an ObjectRef of one (ray.put) for many actors
    task_id: str
    use_gpu: bool = False
    algorithm: str | None = None  # a key of ray_app.mining.ALGORITHMS; None: boxes only
    conf_threshold: float = 0.0
    class_weights: tuple[float, ...] | None = None  # class_distribution_scores, one per class
    #: the test pipeline, when the actor decodes its own images (CPU layout); None when a
    #: ``Preprocess`` stage feeds it (GPU layout)
    preprocess_steps: tuple[dict[str, Any], ...] | None = None
    #: return each image's feature vector (column ``feature``) for the diverse ranking
    features: bool = False
    #: what runs the network on the CPU (a key of ``ray_app.infer.runtimes.RUNTIMES``)
    cpu_runtime: str = "torch"

    def __post_init__(self) -> None:
        if self.algorithm is not None and self.algorithm not in ALGORITHMS:
            raise ValueError(f"unknown mining algorithm {self.algorithm!r}; known: {', '.join(ALGORITHMS)}")
        if self.cpu_runtime not in RUNTIMES:
            raise ValueError(f"unknown cpu_runtime {self.cpu_runtime!r}; known: {', '.join(RUNTIMES)}")


class DetectorActor:
    """One model per actor (per GPU, or CPU): batched forward pass, boxes, mining score.

    Ray Data calls it from several threads at once (``pipeline.ActorPlan.batches_at_once``);
    the ``Detector`` decides what may run side by side."""

    def __init__(self, spec: DetectorSpec) -> None:
        started = time.monotonic()
        skip_training_only_imports()
        import_model_modules()
        imported = time.monotonic()
        bundle = ray.get(spec.bundle) if isinstance(spec.bundle, ray.ObjectRef) else spec.bundle
        device = model_device(spec.use_gpu)
        if device == "cpu":
            torch.set_num_threads(1)  # one batch per thread; Ray Data runs one per CPU of the actor
        self.detector = Detector(bundle, device, spec.cpu_runtime)
        steps = list(spec.preprocess_steps) if spec.preprocess_steps else None
        self.preprocess = Preprocess(steps=steps, size=bundle.input_size) if steps else None
        self.algorithm = ALGORITHMS[spec.algorithm] if spec.algorithm else None
        self.conf_threshold = spec.conf_threshold
        self.weights = np.asarray(spec.class_weights, dtype=np.float64) if spec.class_weights else None
        self.task_id = spec.task_id
        self.feature_dim = self.detector.feature_dim() if spec.features else 0  # 0: no features asked for
        self.node_id = ray.get_runtime_context().get_node_id()
        # its process, the inference modules (torch, mmengine), mmcv's, mmdet's and mmyolo's, the
        # model with its weights on its device (a GPU's CUDA start falls here), its runtime (ONNX
        # Runtime: the export and its check)
        phases = [*loaded(started), ("mmdet/mmyolo", imported - started),
                  ("model", self.detector.build_s), (self.detector.runtime, self.detector.network_s)]
        print(f"model actor ready on node {self.node_id} ({device}"
              f"{', network in ONNX Runtime' if self.detector.runtime == 'onnxruntime' else ''}"
              f"{', decoding its own images' if self.preprocess else ''}): {start_up(phases)}", flush=True)

    def _unpack(self, batch: dict[str, np.ndarray], errors: list[str]) -> list[dict[str, Any] | None]:
        """Packed samples from the preprocessing stage's arrays and JSON meta."""
        from mmdet.structures import DetDataSample

        packed: list[dict[str, Any] | None] = []
        for i in range(len(errors)):
            if errors[i]:
                packed.append(None)
                continue
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
        if self.preprocess:  # the CPU layout decodes here; a GPU actor gets arrays from Preprocess
            batch = with_bytes(batch)
        n = len(batch["path"])
        features = np.zeros((n, self.feature_dim), dtype=np.float16)  # zeros for a bad image
        errors = list(batch["error"])
        samples = self.preprocess.samples(batch["data"], errors) if self.preprocess else self._unpack(batch, errors)
        dets = ["[]"] * n
        scores = np.full(n, -1.0)  # a bad image ranks last
        sizes = np.zeros((n, 2), dtype=np.int64)  # (height, width) of the original image
        good = [i for i in range(n) if samples[i] is not None]
        if good:
            packed = [samples[i] for i in good]
            plain = self.detector.forward(packed, features=self.feature_dim > 0)
            image_scores = self._scores(batch, good, packed, plain)
            if plain.features is not None:
                features[good] = plain.features
            for k, i in enumerate(good):
                boxes, det_scores, labels = plain.detections[k]
                dets[i] = detection_row(boxes, det_scores, labels)
                scores[i] = image_scores[k]
                sizes[i] = packed[k]["data_samples"].metainfo["ori_shape"][:2]
        pause_point("model_batch_done", node=self.node_id, images=n)  # tests: a fault while results are in flight
        extra = {"feature": features} if self.feature_dim else {}
        return {**extra, "path": batch["path"], "detections": np.array(dets, dtype=object), "score": scores,
                "height": sizes[:, 0], "width": sizes[:, 1], "error": np.array(errors, dtype=object),
                "node": np.array([self.node_id] * n, dtype=object)}

    def _scores(self, batch, good, packed, plain: Pass) -> list[float]:
        """The mining score of each good image: the extra passes its algorithm asks for, then
        its score function (``ray_app.mining.ALGORITHMS``); 0 for boxes only."""
        if self.algorithm is None:
            return [0.0] * len(good)
        augmented = [self.detector.forward(packed, flip=a.flip, brightness=a.brightness).detections
                     for a in self.algorithm.augmentations]
        return self.algorithm.score(MiningBatch(
            paths=[str(batch["path"][i]) for i in good], detections=plain.detections,
            class_logits=plain.class_logits, objectness=plain.objectness, input_size=plain.input_size,
            augmented=augmented, num_classes=self.detector.num_classes, conf_threshold=self.conf_threshold,
            class_weights=self.weights, task_id=self.task_id))
