"""Editing a loaded mmyolo config for a task: classes and input size.

mmyolo configs resolve their top-level variables (``num_classes``, ``img_scale``) into many
nested places when loaded; changing the variable afterwards changes nothing. So each is
rewritten where it landed, by key, across the whole config. Training and inference both
edit a config this way (a stage is served at the size the task asks for), and both take
``cfg_options``.
"""

from __future__ import annotations

import argparse
import logging
import shlex
from typing import Any

from mmengine.config import Config, DictAction

from ray_app.protocol.errors import ErrorCode, YmirError

log = logging.getLogger(__name__)

#: keys whose values are input sizes (ints, or (w, h) pairs) in mmyolo pipelines
SIZE_KEYS = {"img_scale", "scale", "crop_size", "size", "img_size", "border", "width", "height"}
#: heads whose loss weights the configs scale by num_classes / 80 and (img_scale / 640) ** 2
YOLOV5_STYLE_HEADS = {"YOLOv5Head", "YOLOv7Head"}


def walk(node: Any):
    """Every dict inside ``node`` (dicts and lists, depth first)."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            yield from walk(value)


def set_num_classes(cfg: Config, num_classes: int) -> None:
    """Every ``num_classes`` in the config, and the yolov5-style class loss weight."""
    for node in walk(cfg._cfg_dict):
        if "num_classes" in node:
            node["num_classes"] = num_classes
    head = cfg.model.get("bbox_head", {})
    if head.get("type") in YOLOV5_STYLE_HEADS and "loss_cls" in head:
        head.loss_cls.loss_weight *= num_classes / 80
    cfg.num_classes = num_classes


def img_scale(cfg: Config) -> int:
    """The square input size a config runs at: its ``img_scale`` (640 where a foreign config has none)."""
    return int(cfg.get("img_scale", (640, 640))[0])


def input_step(cfg: Config) -> int:
    """The multiple each side of the network's input must be: the head's largest stride
    (32; 64 for the P6 models, whose fourth output level has stride 64). Another size gives
    feature maps the neck cannot join (a tensor-shape error inside a worker)."""
    head = cfg.model.get("bbox_head", {})
    strides = ((head.get("prior_generator") or {}).get("strides")
               or (head.get("head_module") or {}).get("featmap_strides") or [32])
    return max(int(s[0] if isinstance(s, (list, tuple)) else s) for s in strides)


def set_img_size(cfg: Config, size: int) -> None:
    """Square input ``size`` in every pipeline and batch-shape policy; error 300001 when
    ``size`` is no multiple of the model's :func:`input_step`."""
    step = input_step(cfg)
    if size % step:
        below = max(step, size // step * step)
        raise YmirError(ErrorCode.CONFIG, f"img_size {size} does not fit this model: its largest stride is {step}, "
                                          f"so img_size must be a multiple of {step} (e.g. {below} or {below + step})")
    base = img_scale(cfg)
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
    for node in walk(cfg._cfg_dict):
        for key in SIZE_KEYS & set(node):
            node[key] = resized(node[key])
    head = cfg.model.get("bbox_head", {})
    if head.get("type") in YOLOV5_STYLE_HEADS and "loss_obj" in head:
        head.loss_obj.loss_weight *= (size / base) ** 2
    cfg.img_scale = (size, size)


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


def apply_cfg_options(cfg: Config, text: str) -> None:
    """Merge ``cfg_options`` into ``cfg`` (last, over every other edit), with one log line."""
    options = parse_cfg_options(text)
    if options:
        cfg.merge_from_dict(options)
        log.info("cfg_options applied: %s", options)
