"""Which weights a training run starts from: the user's stage, else the image's COCO
checkpoint for the model, else none (from scratch, with a warning); and fitting those
weights to a model with another number of classes."""

from __future__ import annotations

import itertools
import logging
import re
from pathlib import Path
from typing import Any

from ray_app.checkpoints import load_checkpoint_file, stage_checkpoint, to_bytes
from ray_app.model_config.offline import local_copy
from ray_app.model_config.offline import weights_dir as image_weights_dir
from ray_app.model_config.zoo import released_checkpoints
from ray_app.protocol.atomic import atomic_write_bytes
from ray_app.protocol.model_files import pick_weights, resolve

log = logging.getLogger(__name__)


def coco_weights(config_file: Path, weights_dir: Path | None = None) -> Path | None:
    """The COCO checkpoint baked into the image for this config, in ``weights_dir`` or the
    image's weights folder (``$RAY_APP_WEIGHTS``, default ``/weights``): the file of its
    released URL (named as the metafile names it, see :mod:`ray_app.model_config.weights`;
    yolox_tiny's does not start with its config's name), else a file named
    ``<config stem>*.pth`` (put there by hand, as released mmyolo checkpoints are named)."""
    weights_dir = weights_dir or image_weights_dir()
    if not weights_dir.is_dir():
        return None
    url = released_checkpoints().get(config_file.name.lower())
    released = local_copy(url, weights_dir) if url else None
    if released is not None:
        return released
    matches = sorted(weights_dir.glob(f"{config_file.stem}*.pth"))
    return matches[-1] if matches else None


def _model_key(key: str) -> str:
    """A checkpoint's tensor name as the model names it (a DDP-wrapped save adds ``module.``)."""
    return re.sub(r"^module\.", "", key)


def fit_to_model(state_dict: dict[str, Any], model_state: dict[str, Any]) -> list[str]:
    """Replace, in ``state_dict``, each tensor whose shape differs from the model's tensor of
    that name with the model's own (as the model initialised it), and return their names.

    A COCO checkpoint's class layers are for 80 classes, a task has its own. mmengine would
    skip those tensors itself, but with a size-mismatch dump naming each one, twice (the model,
    then the EMA copy). Replaced, they load without a word and the run says what happened
    in one line (:func:`fit_message`). Names missing on either side are left to mmengine,
    which lists them: a checkpoint of another model is worth that noise."""
    replaced = []
    for key, value in state_dict.items():
        own = model_state.get(_model_key(key))
        if own is not None and hasattr(value, "shape") and tuple(value.shape) != tuple(own.shape):
            state_dict[key] = own.detach().clone()
            replaced.append(key)
    return replaced


def _layer(key: str) -> str:
    """The module a tensor belongs to, up to its first index: ``bbox_head.head_module.cls_preds``
    for ``bbox_head.head_module.cls_preds.0.2.weight``."""
    parts = key.split(".")[:-1]
    head = list(itertools.takewhile(lambda part: not part.isdigit(), parts))
    return ".".join(head or parts)


def fit_message(replaced: list[str], state_dict: dict[str, Any], model_state: dict[str, Any]) -> str:
    """One line: how many tensors of which layers start from their initialisation, and how
    many of the model's tensors the starting weights fill."""
    layers = dict.fromkeys(_layer(key) for key in replaced)
    loaded = sum(_model_key(key) in model_state for key in state_dict) - len(replaced)
    return (f"starting weights: {len(replaced)} tensors of {', '.join(layers)} have other shapes than this "
            f"model's (another number of classes): those layers start from their initialisation; "
            f"{loaded} of the model's {len(model_state)} tensors are loaded")


def pretrained_weights(entries: list[str], models_dir: str, config_file: Path, out_file: Path,
                       out_root: str) -> Path | None:
    """Pick the starting weights and write a weights-only copy at ``out_file``.

    The copy is read with the safe loader (see :mod:`ray_app.checkpoints`), so mmengine's
    own ``load_from`` only ever reads a file we wrote. Returns None for from-scratch.
    """
    source = pick_weights(resolve(entries, models_dir)) if entries else None
    if entries and source is None:
        log.warning("pretrained_model_params %s holds no weights file; looking for COCO weights", entries)
    origin = "pretrained_model_params"
    if source is None:
        source, origin = coco_weights(config_file), "the image's COCO weights"
    if source is None:
        log.warning("no pretrained weights for %s: no pretrained_model_params and no COCO checkpoint in %s "
                    "(the image's COCO_MODELS left it out): training from scratch", config_file.stem,
                    image_weights_dir())
        return None
    checkpoint = load_checkpoint_file(source)
    atomic_write_bytes(out_file, to_bytes(stage_checkpoint(checkpoint)), out_root)
    log.info("starting from %s (%s)", source, origin)
    return out_file
