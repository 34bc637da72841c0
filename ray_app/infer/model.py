"""Loading a YMIR model stage into an mmyolo detector, and running it batched.

One forward pass gives both the detections and the dense class maps (for ALDD): the
detector's ``extract_feat`` and head are called directly instead of ``test_step``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mmengine.config import Config

from ray_app.checkpoints import load_checkpoint_file
from ray_app.config_files import load_config_safely
from ray_app.protocol.errors import ErrorCode, YmirError
from ray_app.protocol.hyperparams import InferParams
from ray_app.protocol.model_files import pick_config, pick_weights, resolve
from ray_app.model_config.edit import apply_cfg_options, img_scale, set_img_size

log = logging.getLogger(__name__)


@dataclass
class Pass:
    """What one batched forward pass gives."""

    #: per image: boxes (N, 4) xyxy in the original image, scores (N,), labels (N,)
    detections: list[tuple[np.ndarray, np.ndarray, np.ndarray]]
    #: the head's class logits per feature level, ``(B, A*C, H_l, W_l)``
    class_logits: Any
    #: the head's objectness logits per level, ``(B, A, H_l, W_l)``, for heads that have one
    #: (yolov5, yolov7, yolox: the third output ``predict_by_feat`` takes); None otherwise
    objectness: Any
    #: per image, the deepest neck level averaged over space, ``(B, channels)``; None unless asked for
    features: np.ndarray | None
    #: (height, width) of the network input, padding included
    input_size: tuple[int, int]


@dataclass
class ModelBundle:
    """What every actor needs to rebuild the model: plain data, cheap to ship via Ray."""

    cfg: Config
    state_dict: dict[str, torch.Tensor]
    class_names: list[str]
    source: str

    @property
    def input_size(self) -> int:
        """The square network input the stage runs at (:func:`~ray_app.model_config.edit.img_scale`)."""
        return img_scale(self.cfg)


def read_stage(weights: Path, config_file: Path, task_classes: list[str]) -> ModelBundle:
    """A stage's config and weights as a :class:`ModelBundle`, read as data (a model file never
    runs code here), named by the classes the weights were trained on where they say.

    Raises 300004 for a file that cannot be read, or weights trained on another number of
    classes than ``task_classes``. Shared by inference and by the export of a trained stage
    (``ray_app.export``)."""
    try:
        cfg = load_config_safely(config_file)
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError) as e:
        raise YmirError(ErrorCode.MODEL, f"model config {config_file} cannot be read: {type(e).__name__}: {e}") from None
    checkpoint = load_checkpoint_file(weights)
    model_classes = list((checkpoint.get("meta", {}).get("dataset_meta") or {}).get("classes") or [])
    class_names = model_classes or list(task_classes)
    if model_classes and len(model_classes) != len(task_classes):
        raise YmirError(ErrorCode.MODEL, f"model {weights.name} was trained on {len(model_classes)} classes "
                                         f"{model_classes}, the task has {len(task_classes)}: {list(task_classes)}")
    if model_classes and model_classes != list(task_classes):
        log.warning("model classes %s differ from the task's %s: boxes are named by the model's",
                    model_classes, list(task_classes))
    return ModelBundle(cfg, checkpoint["state_dict"], class_names, str(weights))


def load_stage(params: InferParams, models_dir: str) -> ModelBundle:
    """Config and weights from ``model_params_path`` (best weights first, as in training),
    with the task's input size, thresholds and ``cfg_options`` applied to the config."""
    paths = resolve(params.model_params_path, models_dir)
    weights = pick_weights(paths)
    if weights is None:
        missing = [str(p) for p in paths if not p.is_file()]
        raise YmirError(ErrorCode.MODEL, f"model_params_path {params.model_params_path} holds no weights file"
                                         + (f" (missing: {', '.join(missing)})" if missing else ""))
    config_file = pick_config(paths)
    if config_file is None:
        raise YmirError(ErrorCode.MODEL, f"model_params_path {params.model_params_path} holds no config (.py) file")
    bundle = read_stage(weights, config_file, list(params.class_names))
    cfg = bundle.cfg
    if params.img_size:
        set_img_size(cfg, params.img_size)
    test_cfg = cfg.model.test_cfg
    test_cfg.score_thr = params.conf_threshold
    test_cfg.setdefault("nms", {})["iou_threshold"] = params.iou_threshold
    test_cfg.max_per_img = min(int(test_cfg.get("max_per_img", 300)), 300)
    apply_cfg_options(cfg, params.cfg_options)
    log.info("model: %s with %s, input %d px%s", weights, config_file.name, bundle.input_size,
             "" if params.img_size else " (the size it was trained at: img_size 0)")
    return bundle


def import_model_modules() -> None:
    """mmcv's, mmdet's and mmyolo's modules that a detector is built from, with mmyolo's
    registry. ``mmcv.cnn`` brings in mmengine's runner and optimisers, and with them torch's
    FSDP modules, which inference never runs: a model actor leaves those out first
    (``actors.skip_training_only_imports``), and these imports take it 0.94 s instead of 1.68 s
    on 2 cores (``bench/actor_imports.py``; 0.9 of the actor's 2.8 s after its process is up,
    ``bench/infer_bench.py --timeline``)."""
    import mmcv.cnn  # noqa: F401
    import mmdet.apis  # noqa: F401
    from mmyolo.utils import register_all_modules

    register_all_modules()


def build_detector(bundle: ModelBundle, device: str) -> torch.nn.Module:
    """The mmyolo detector of ``bundle`` on ``device``, in eval mode, each BatchNorm folded into
    the convolution before it, as mmyolo's deploy tools do (the same outputs to float rounding,
    one op less per layer). 300004 when the weights do not fit the config."""
    import_model_modules()
    from mmcv.cnn import fuse_conv_bn
    from mmdet.apis import init_detector

    cfg = bundle.cfg.copy()
    cfg.model.use_syncbn = False
    model = init_detector(cfg, checkpoint=None, device=device, palette="none")
    missing, unexpected = model.load_state_dict(bundle.state_dict, strict=False)
    missing = [k for k in missing if not k.startswith("data_preprocessor")]
    if missing or unexpected:
        raise YmirError(ErrorCode.MODEL, f"weights {bundle.source} do not fit the config: {len(missing)} "
                                         f"missing and {len(unexpected)} unexpected tensors, e.g. {(missing + unexpected)[:3]}")
    model.eval()
    return fuse_conv_bn(model)


def inference_pipeline(cfg: Config) -> list[dict[str, Any]]:
    """The test pipeline, fed decoded arrays instead of files, without annotations."""
    steps = []
    for step in cfg.test_dataloader.dataset.pipeline:
        kind = str(step["type"]).split(".")[-1]
        if kind == "LoadImageFromFile":
            steps.append(dict(type="mmdet.LoadImageFromNDArray"))
        elif kind != "LoadAnnotations":
            steps.append(dict(step))
    return steps


class Detector:
    """An mmyolo detector on one device, with batched inference and dense maps.

    Safe to call from several threads. On a GPU one batch at a time goes through the
    network, so batch k's decoding and NMS overlap batch k+1's forward pass. On the CPU the
    calls run the network side by side, each on one thread: one torch thread (the caller sets
    ``torch.set_num_threads(1)``), or one ONNX Runtime thread with ``cpu_runtime``
    ``onnxruntime`` (``infer/runtimes.py``): whole batches in parallel beat one batch split over
    threads, whose hundreds of small barrier-synchronised ops stall whenever another
    process takes a core. Box decoding and NMS run one batch at a time either way (the head
    caches its priors on itself).
    """

    def __init__(self, bundle: ModelBundle, device: str, cpu_runtime: str = "torch") -> None:
        from ray_app.infer.runtimes import RUNTIMES

        started = time.monotonic()
        self.model = build_detector(bundle, device)
        built = time.monotonic()
        #: seconds to build the model (its weights loaded, on its device: a GPU's CUDA start
        #: falls here), then to set its runtime up (``network_s``), for the actor's ready line
        self.build_s = built - started
        #: the key of ``infer/runtimes.py:RUNTIMES`` that runs the network: ``cpu_runtime`` on the
        #: CPU, torch on a GPU, and torch where ``cpu_runtime`` cannot serve this network
        self.runtime = cpu_runtime if device == "cpu" else "torch"
        try:
            self.network = RUNTIMES[self.runtime](self.model, bundle.input_size)
        except Exception as error:  # an export the stage's network does not allow: torch serves it as ever
            if self.runtime == "torch":
                raise
            log.warning("cpu_runtime %s cannot serve %s, torch runs the network instead: %s: %s", self.runtime,
                        bundle.source, type(error).__name__, error)
            self.runtime = "torch"
            self.network = RUNTIMES[self.runtime](self.model, bundle.input_size)
        self.network_s = time.monotonic() - built
        self.memory_format = self.network.memory_format  # the order the runtime takes its input in
        self.device = device
        self._network = threading.Lock() if device != "cpu" else contextlib.nullcontext()
        self._boxes = threading.Lock()
        self.num_classes = len(bundle.class_names)

    @torch.no_grad()
    def feature_dim(self) -> int:
        """The length of the feature vector ``forward`` gives (one tiny pass to find it)."""
        with self._network:
            features = self.model.extract_feat(torch.zeros(1, 3, 64, 64, device=self.device))
        return int(features[-1].shape[1])

    @torch.no_grad()
    def forward(self, packed: list[dict[str, Any]], flip: bool = False, brightness: float = 1.0,
                features: bool = False) -> Pass:
        """Batched forward pass: detections, the head's dense maps and, with ``features``, the
        pooled features (for the diverse ranking of ``ray_app.mining.diversity``), see :class:`Pass`.

        ``flip`` and ``brightness`` transform the network input (for CALD); detections
        come back in the coordinates of the input as given to the network, then rescaled
        to the original image.
        """
        images = [p["inputs"] for p in packed]
        if brightness != 1.0:  # on raw pixels, before the model's own normalisation
            images = [(image.float() * brightness).clamp(0, 255).to(image.dtype) for image in images]
        head = self.model.bbox_head
        with self._network:
            data = self.model.data_preprocessor({"inputs": images,
                                                 "data_samples": [p["data_samples"] for p in packed]}, False)
            inputs, samples = data["inputs"].contiguous(memory_format=self.memory_format), data["data_samples"]
            if flip:
                inputs = inputs.flip(-1)
            outs, pooled = self.network(inputs, features)
            pooled = pooled.cpu().numpy() if pooled is not None else None
        with self._boxes:
            results = head.predict_by_feat(*outs, batch_img_metas=[s.metainfo for s in samples], rescale=True)
        detections = []
        for result, sample in zip(results, samples):
            boxes = result.bboxes.cpu().numpy().astype(np.float64)
            if flip:  # mirror back: the flipped input covers the same padded canvas
                width = _mirror_width(sample.metainfo, inputs.shape[-1])
                boxes[:, [0, 2]] = width - boxes[:, [2, 0]]
            detections.append((boxes, result.scores.cpu().numpy().astype(np.float64),
                               result.labels.cpu().numpy().astype(np.int64)))
        return Pass(detections=detections, class_logits=outs[0], objectness=outs[2] if len(outs) > 2 else None,
                    features=pooled, input_size=(int(inputs.shape[-2]), int(inputs.shape[-1])))


def _mirror_width(meta: dict[str, Any], input_width: int) -> float:
    """The width to mirror boxes about, in original-image pixels.

    The flipped tensor is the whole network input (letterbox and batch padding included):
    a box found at ``x`` in it lies at ``input_width - x`` unflipped. Undoing the
    pipeline's offset ``left`` and scale ``s`` gives ``x_orig = (input_width - 2*left)/s - x'``
    where ``x'`` is the flipped box already rescaled as if unflipped.
    """
    pad = meta.get("pad_param")
    left = float(pad[2]) if pad is not None else 0.0
    scale = float(np.asarray(meta.get("scale_factor", (1.0, 1.0))).reshape(-1)[0])
    return (input_width - 2 * left) / scale
