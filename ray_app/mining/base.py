"""What a mining score is: a function of one batch's forward passes, and what it needs.

An algorithm is one module that defines ``ALGORITHM`` (an :class:`Algorithm`) and one line
in ``ray_app.mining.ALGORITHMS``. The model actor reads ``Algorithm`` to know which extra
forward passes to run (``augmentations``); every score gets the same ``MiningBatch`` (the
detections and the head's dense class maps of the one plain pass); the actor never names an
algorithm.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Detections = tuple[np.ndarray, np.ndarray, np.ndarray]  # boxes (N, 4) xyxy, scores (N,), labels (N,)


@dataclass(frozen=True)
class Augmentation:
    """One extra forward pass on a transformed input (``model.Detector.forward`` keywords):
    boxes come back in the original image's frame."""

    flip: bool = False
    brightness: float = 1.0


@dataclass
class MiningBatch:
    """One batch of images, as the model saw them: the inputs every score may read."""

    paths: Sequence[str]
    #: per image: what the model found in the image as given
    detections: list[Detections]
    #: the head's class logits per feature level, ``(B, A*C, H_l, W_l)``
    class_logits: Sequence[Any]
    #: per ``Algorithm.augmentations`` entry, per image: what the model found in that copy
    augmented: list[list[Detections]]
    num_classes: int
    conf_threshold: float
    #: ``class_distribution_scores`` (None: all 1)
    class_weights: np.ndarray | None
    task_id: str
    #: the head's objectness logits per level, ``(B, A, H_l, W_l)``; None for heads without
    objectness: Sequence[Any] | None = None
    #: (height, width) of the network input
    input_size: tuple[int, int] | None = None


@dataclass(frozen=True)
class Algorithm:
    """A mining score: ``score`` gives one number per image of a batch, higher = more useful
    to label; the other fields say what it needs beyond one plain forward pass."""

    score: Callable[[MiningBatch], list[float]]
    #: extra forward passes per image, each on a transformed copy (their cost: one pass each)
    augmentations: tuple[Augmentation, ...] = field(default=())
