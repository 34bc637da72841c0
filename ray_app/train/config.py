"""The mmengine config of a training run, from the zoo config and the hyperparameters.

mmyolo configs resolve their top-level variables (``num_classes``, ``img_scale``,
``max_epochs``) into many nested places when loaded; changing the variable afterwards
changes nothing. So each is rewritten where it landed, by key, across the whole config.
"""

from __future__ import annotations

import argparse
import logging
import shlex
from pathlib import Path
from typing import Any

from mmengine.config import Config, DictAction

from ray_app.protocol.errors import ErrorCode, YmirError
from ray_app.protocol.hyperparams import TrainingParams
from ray_app.train.zoo import config_path

log = logging.getLogger(__name__)

#: keys whose values are input sizes (ints, or (w, h) pairs) in mmyolo pipelines
SIZE_KEYS = {"img_scale", "scale", "crop_size", "size", "img_size", "border", "width", "height"}
#: heads whose loss weights the configs scale by num_classes / 80 and (img_scale / 640) ** 2
YOLOV5_STYLE_HEADS = {"YOLOv5Head", "YOLOv7Head"}
METRIC = "coco/bbox_mAP"


def _walk(node: Any):
    """Every dict inside ``node`` (dicts and lists, depth first)."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            yield from _walk(value)


def set_num_classes(cfg: Config, num_classes: int) -> None:
    """Every ``num_classes`` in the config, and the yolov5-style class loss weight."""
    for node in _walk(cfg._cfg_dict):
        if "num_classes" in node:
            node["num_classes"] = num_classes
    head = cfg.model.get("bbox_head", {})
    if head.get("type") in YOLOV5_STYLE_HEADS and "loss_cls" in head:
        head.loss_cls.loss_weight *= num_classes / 80
    cfg.num_classes = num_classes


def set_img_size(cfg: Config, size: int) -> None:
    """Square input ``size`` in every pipeline and batch-shape policy."""
    base = int(cfg.get("img_scale", (640, 640))[0])
    mapping = {base: size, 2 * base: 2 * size, -(base // 2): -(size // 2)}
    if "test_img_scale" in cfg:  # yolox tiny/nano test at another size than they train
        mapping.setdefault(int(cfg.test_img_scale[0]), size)
        cfg.test_img_scale = (size, size)

    def resized(value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            return mapping.get(value, value)
        if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) for v in value):
            return type(value)(mapping.get(v, v) for v in value)
        return value

    for key in ("tta_model", "tta_pipeline", "img_scales", "_multiscale_resize_transforms"):
        cfg.pop(key, None)  # test-time augmentation: not used here, and sized for 640
    for node in _walk(cfg._cfg_dict):
        for key in SIZE_KEYS & set(node):
            node[key] = resized(node[key])
    head = cfg.model.get("bbox_head", {})
    if head.get("type") in YOLOV5_STYLE_HEADS and "loss_obj" in head:
        head.loss_obj.loss_weight *= (size / base) ** 2
    cfg.img_scale = (size, size)


def set_max_epochs(cfg: Config, max_epochs: int, val_interval: int) -> None:
    """``max_epochs`` and what depends on it (schedulers, pipeline switches), scaled."""
    base = int(cfg.train_cfg.max_epochs)

    def scaled(value: int) -> int:
        return int(round(value * max_epochs / base))

    hooks = [*cfg.get("default_hooks", {}).values(), *cfg.get("custom_hooks", [])]
    for hook in hooks:
        if not isinstance(hook, dict):
            continue
        if "max_epochs" in hook:
            hook["max_epochs"] = max_epochs
        for key in ("switch_epoch", "num_last_epochs", "total_epochs"):
            if key in hook:
                hook[key] = scaled(hook[key])
    schedulers = cfg.get("param_scheduler") or []
    for scheduler in schedulers if isinstance(schedulers, list) else [schedulers]:
        if not scheduler.get("by_epoch", True):
            continue  # iteration-based warm-up: independent of the epoch count
        begin = scaled(scheduler.get("begin", 0))
        scheduler["begin"] = begin
        if "end" in scheduler:
            scheduler["end"] = max(scaled(scheduler["end"]), begin + 1)
        if "T_max" in scheduler:
            scheduler["T_max"] = max(scaled(scheduler["T_max"]), 1)
    cfg.train_cfg.max_epochs = max_epochs
    cfg.train_cfg.val_interval = val_interval
    cfg.train_cfg.pop("dynamic_intervals", None)  # ours is val_interval, everywhere
    cfg.max_epochs = max_epochs


def set_dataset(cfg: Config, train_json: Path, val_json: Path, class_names: list[str]) -> None:
    """Point the dataloaders and evaluators at the converted COCO files (absolute image paths)."""
    metainfo = {"classes": tuple(class_names)}
    for loader, ann_file in (("train_dataloader", train_json), ("val_dataloader", val_json),
                             ("test_dataloader", val_json)):
        datasets = [d for d in _walk(cfg[loader].dataset) if "ann_file" in d] or [cfg[loader].dataset]
        for dataset in datasets:
            dataset.update(data_root="", ann_file=str(ann_file), data_prefix=dict(img=""), metainfo=metainfo)
            if "filter_cfg" in dataset:
                dataset.filter_cfg["min_size"] = 1  # small images are data too
    for evaluator in ("val_evaluator", "test_evaluator"):
        cfg[evaluator].ann_file = str(val_json)
        cfg[evaluator].classwise = False


def set_loader(cfg: Config, batch_size: int, num_workers: int) -> None:
    """Batch size and data-loader processes per Train worker."""
    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        cfg[loader].num_workers = num_workers
        cfg[loader].persistent_workers = num_workers > 0
    cfg.train_dataloader.batch_size = batch_size
    optimizer = cfg.optim_wrapper.optimizer
    if "batch_size_per_gpu" in optimizer:
        optimizer.batch_size_per_gpu = batch_size


def parse_cfg_options(text: str) -> dict[str, Any]:
    """``"a.b=1 c=[1,2]"`` -> a dict, with mmengine's own ``DictAction`` (which parses
    literals and never evaluates code); a malformed option is error 300001."""
    if not text.strip():
        return {}
    parser = argparse.ArgumentParser(exit_on_error=False, add_help=False)
    parser.add_argument("--cfg-options", nargs="+", action=DictAction)
    try:
        return parser.parse_args(["--cfg-options", *shlex.split(text)]).cfg_options or {}
    except (argparse.ArgumentError, ValueError, SystemExit) as e:
        raise YmirError(ErrorCode.CONFIG, f"cfg_options {text!r} is not a list of key=value: {e}") from None


def build_config(params: TrainingParams, train_json: Path, val_json: Path, work_dir: Path) -> Config:
    """The full mmengine config of this training run (cfg_options applied last)."""
    cfg = Config.fromfile(str(config_path(params.model_name)))
    set_num_classes(cfg, len(params.class_names))
    set_img_size(cfg, params.img_size)
    set_max_epochs(cfg, params.max_epochs, params.val_interval)
    set_dataset(cfg, train_json, val_json, params.class_names)
    set_loader(cfg, params.samples_per_gpu, params.workers_per_gpu)
    if params.learning_rate > 0:
        cfg.optim_wrapper.optimizer.lr = params.learning_rate
    cfg.default_hooks.checkpoint = dict(
        type="CheckpointHook", interval=params.val_interval, by_epoch=True,
        save_best=None, max_keep_ckpts=1, save_last=True)
    cfg.default_hooks.logger = dict(type="LoggerHook", interval=10)
    cfg.visualizer = dict(type="mmdet.DetLocalVisualizer", name="visualizer",
                          vis_backends=[dict(type="LocalVisBackend"), dict(type="TensorboardVisBackend")])
    cfg.model_wrapper_cfg = dict(type="MMDistributedDataParallel",
                                 find_unused_parameters=params.find_unused_parameters)
    cfg.work_dir = str(work_dir)
    cfg.load_from = None
    cfg.resume = False
    if params.args_options.strip():
        log.warning("args_options %r ignored: this executor has no train.py arguments; use cfg_options",
                    params.args_options)
    options = parse_cfg_options(params.cfg_options)
    if options:
        cfg.merge_from_dict(options)
        log.info("cfg_options applied: %s", options)
    return cfg


def evaluate_config(cfg: Config) -> dict[str, float]:
    """The test-time NMS IoU and score thresholds, for ``result.yaml``."""
    test_cfg = cfg.model.get("test_cfg", {}) or {}
    nms = test_cfg.get("nms", {}) or {}
    return {"iou_thr": float(nms.get("iou_threshold", 0.65)), "conf_thr": float(test_cfg.get("score_thr", 0.001))}


def set_warmup(cfg: Config, total_iters: int) -> None:
    """Cap warm-up at a tenth of the run.

    mmyolo warms up for at least 1000 iterations and 3 epochs (tuned for 300 COCO epochs);
    on a small YMIR dataset that can be the whole run, which then never reaches its
    learning rate.
    """
    cap = max(1, total_iters // 10)
    max_epochs = int(cfg.train_cfg.max_epochs)
    for hook in cfg.get("default_hooks", {}).values():
        if isinstance(hook, dict) and str(hook.get("type", "")).endswith("ParamSchedulerHook"):
            ppyoloe = "PPYOLOE" in hook["type"]  # its hook spells the key 'min', yolov5's 'mim'
            iter_key = "warmup_min_iter" if ppyoloe else "warmup_mim_iter"
            hook[iter_key] = min(hook.get(iter_key, 1000), cap)
            hook["warmup_epochs"] = min(hook.get("warmup_epochs", 5 if ppyoloe else 3), max(1, max_epochs // 10))
    schedulers = cfg.get("param_scheduler") or []
    for scheduler in schedulers if isinstance(schedulers, list) else [schedulers]:
        if not scheduler.get("by_epoch", True) and scheduler.get("begin", 0) == 0 and "end" in scheduler:
            scheduler["end"] = min(scheduler["end"], cap)
