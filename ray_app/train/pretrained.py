"""Which weights a training run starts from: the user's stage, else the image's COCO
checkpoint for the model, else none (from scratch, with a warning)."""

from __future__ import annotations

import logging
from pathlib import Path

from ray_app.checkpoints import load_checkpoint_file, stage_checkpoint, to_bytes
from ray_app.model_config.offline import weights_dir as image_weights_dir
from ray_app.protocol.atomic import atomic_write_bytes
from ray_app.protocol.model_files import pick_weights, resolve

log = logging.getLogger(__name__)


def coco_weights(config_file: Path, weights_dir: Path | None = None) -> Path | None:
    """A checkpoint baked into the image for this config (released mmyolo checkpoints are
    named ``<config stem>_<date>-<hash>.pth``), in ``weights_dir`` or the image's weights
    folder (``$RAY_APP_WEIGHTS``, default ``/weights``)."""
    weights_dir = weights_dir or image_weights_dir()
    if not weights_dir.is_dir():
        return None
    matches = sorted(weights_dir.glob(f"{config_file.stem}*.pth"))
    return matches[-1] if matches else None


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
        log.warning("no pretrained weights for %s: training from scratch", config_file.stem)
        return None
    checkpoint = load_checkpoint_file(source)
    atomic_write_bytes(out_file, to_bytes(stage_checkpoint(checkpoint)), out_root)
    log.info("starting from %s (%s)", source, origin)
    return out_file
