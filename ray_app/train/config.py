"""The mmengine config of a training run, from the zoo config and the hyperparameters.

Classes and input size are edited as inference edits them (:mod:`ray_app.model_config.edit`);
what only training has (epochs, warm-up, data, loaders, hooks) is edited here. A hook or a
scheduler only ever gets keys its own ``__init__`` names: the families use different ones
(yolov5's ``YOLOv5ParamSchedulerHook`` takes ``warmup_mim_iter``, ppyoloe's spells it
``warmup_min_iter``, yolox and rtmdet keep mmengine's plain ``ParamSchedulerHook``, which
takes none), and an unknown key fails when the Runner is built.
"""

from __future__ import annotations

import inspect
import logging
import shlex
from functools import lru_cache
from pathlib import Path

from mmengine.config import Config

from ray_app.model_config.edit import apply_cfg_options, set_img_size, set_num_classes, walk
from ray_app.model_config.offline import localize_weights
from ray_app.model_config.zoo import config_path
from ray_app.protocol.hyperparams import TrainingParams

log = logging.getLogger(__name__)

METRIC = "coco/bbox_mAP"
#: warm-up length in iterations, as yolov5-style hooks spell it and as ppyoloe's does
WARMUP_ITER_KEYS = ("warmup_mim_iter", "warmup_min_iter")


@lru_cache(maxsize=None)
def init_parameters(type_name: str) -> dict[str, inspect.Parameter]:
    """The named ``__init__`` parameters of a registered hook or scheduler type
    (``**kwargs`` left out: the plain hooks hand them to a parent that takes none)."""
    from mmyolo.registry import HOOKS, PARAM_SCHEDULERS
    from mmyolo.utils import register_all_modules

    register_all_modules(init_default_scope=False)
    cls = HOOKS.get(type_name) or PARAM_SCHEDULERS.get(type_name)
    if cls is None:
        return {}
    return {name: p for name, p in inspect.signature(cls.__init__).parameters.items()
            if name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}


def hook_configs(cfg: Config) -> list[dict]:
    """Every hook config: the default hooks and the custom ones."""
    hooks = [*cfg.get("default_hooks", {}).values(), *cfg.get("custom_hooks", [])]
    return [hook for hook in hooks if isinstance(hook, dict) and "type" in hook]


def scheduler_configs(cfg: Config) -> list[dict]:
    schedulers = cfg.get("param_scheduler") or []
    return list(schedulers) if isinstance(schedulers, (list, tuple)) else [schedulers]


def set_max_epochs(cfg: Config, max_epochs: int, val_interval: int) -> None:
    """``max_epochs`` and what depends on it (schedulers, pipeline switches), scaled."""
    base = int(cfg.train_cfg.max_epochs)

    def scaled(value: int) -> int:
        return int(round(value * max_epochs / base))

    for hook in hook_configs(cfg):
        if "max_epochs" in hook:
            hook["max_epochs"] = max_epochs
        for key in ("switch_epoch", "num_last_epochs", "total_epochs"):
            if key in hook:
                hook[key] = scaled(hook[key])
    for scheduler in scheduler_configs(cfg):
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
        datasets = [d for d in walk(cfg[loader].dataset) if "ann_file" in d] or [cfg[loader].dataset]
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


#: the original executor's train.py arguments that mean something here, and what they set
ARGS_OPTIONS = {"--amp": "amp"}


def parse_args_options(text: str) -> set[str]:
    """The original's ``args_options`` (``"--amp --resume"``): the flags this executor maps
    (``ARGS_OPTIONS``) as the hyperparameters they turn on; one warning names the rest."""
    words = shlex.split(text or "")
    ignored = [w for w in words if w not in ARGS_OPTIONS]
    if ignored:
        log.warning("args_options %s ignored: this executor has no train.py; it maps only %s (use cfg_options "
                    "for the rest; --resume: a run lost mid-way resumes by itself, from its last checkpoint)",
                    " ".join(ignored), ", ".join(ARGS_OPTIONS))
    return {ARGS_OPTIONS[w] for w in words if w in ARGS_OPTIONS}


def set_amp(cfg: Config, use_gpu: bool, amp: bool) -> None:
    """Mixed precision (mmengine's ``AmpOptimWrapper``, dynamic loss scale) when asked for and
    training on GPUs; on CPU one log line says it is ignored (it needs CUDA)."""
    if not amp:
        return
    if not use_gpu:
        log.info("amp ignored: mixed precision needs GPUs; training on CPU in fp32")
        return
    cfg.optim_wrapper.type = "AmpOptimWrapper"
    cfg.optim_wrapper.setdefault("loss_scale", "dynamic")


def build_config(params: TrainingParams, train_json: Path, val_json: Path, work_dir: Path,
                 iters_per_epoch: int, use_gpu: bool = False) -> Config:
    """The full mmengine config of this training run (cfg_options applied last);
    ``iters_per_epoch`` (per worker) sizes the warm-up; ``use_gpu`` decides AMP."""
    cfg = Config.fromfile(str(config_path(params.model_name)))
    set_num_classes(cfg, len(params.class_names))
    set_img_size(cfg, params.img_size)
    set_max_epochs(cfg, params.max_epochs, params.val_interval)
    set_warmup(cfg, iters_per_epoch * params.max_epochs, iters_per_epoch)
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
    set_amp(cfg, use_gpu, params.amp or "amp" in parse_args_options(params.args_options))
    apply_cfg_options(cfg, params.cfg_options)
    localize_weights(cfg, params.model_name)  # after cfg_options: they may name URLs too
    return cfg


def evaluate_config(cfg: Config) -> dict[str, float]:
    """The test-time NMS IoU and score thresholds, for ``result.yaml``."""
    test_cfg = cfg.model.get("test_cfg", {}) or {}
    nms = test_cfg.get("nms", {}) or {}
    return {"iou_thr": float(nms.get("iou_threshold", 0.65)), "conf_thr": float(test_cfg.get("score_thr", 0.001))}


def set_warmup(cfg: Config, total_iters: int, iters_per_epoch: int) -> None:
    """Cap warm-up at a tenth of the run, in the keys each family's hook or scheduler takes.

    mmyolo warms up for at least 1000 iterations and 3 epochs (tuned for 300 COCO epochs);
    on a small YMIR dataset that can be the whole run, which then never reaches its
    learning rate. Where the warm-up is a scheduler (yolox, rtmdet: the first of several,
    from iteration 0) it becomes iteration-based and ends at the cap; the schedulers after
    it keep their shape.
    """
    cap = max(1, total_iters // 10)
    epoch_cap = max(1, int(cfg.train_cfg.max_epochs) // 10)
    for hook in hook_configs(cfg):
        takes = init_parameters(str(hook["type"]))
        for key in WARMUP_ITER_KEYS:
            if key in takes:
                hook[key] = min(hook.get(key, takes[key].default), cap)
        if "warmup_epochs" in takes:
            hook["warmup_epochs"] = min(hook.get("warmup_epochs", takes["warmup_epochs"].default), epoch_cap)
    schedulers = scheduler_configs(cfg)
    if len(schedulers) < 2 or schedulers[0].get("begin", 0) != 0 or "end" not in schedulers[0]:
        return
    warmup = schedulers[0]
    end = warmup["end"] if not warmup.get("by_epoch", True) else warmup["end"] * iters_per_epoch
    warmup.update(by_epoch=False, begin=0, end=max(1, min(end, cap)))
    warmup.pop("convert_to_iter_based", None)
