"""CALD (Yu et al., "Consistency-based Active Learning for Object Detection", CVPR 2022 W).

The model predicts on the image and on ``K`` augmented copies (here: horizontal flip, and
a brightness change; boxes mapped back to the original frame). For each detection ``i``
of the original with score ``s_i`` and class ``c_i``, and each copy ``k``, take the copy's
detection ``j`` of highest IoU ``u_ij``:

    agree_ik = u_ij * (1 - |s_i - s_j|)   if c_j == c_i, else 0
    C_i      = mean_k agree_ik                       (consistency of detection i)
    score    = sum_i w_{c_i} s_i (1 - C_i) / sum_i s_i    (score-weighted inconsistency)

An image with no detection in the original scores the highest score found in any copy
(objects the original missed), 0 when none finds anything. Costs K extra forward passes.
"""

from __future__ import annotations

import numpy as np

from ray_app.mining.base import Algorithm, Augmentation, Detections, MiningBatch

#: the ``K`` augmented copies: a horizontal flip and a 1.2x brighter copy (each one more
#: forward pass per image: CALD costs 3 passes where the other scores cost 1)
AUGMENTATIONS = (Augmentation(flip=True), Augmentation(brightness=1.2))


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of xyxy boxes, (len(a), len(b))."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def score(original: Detections, augmented: list[Detections], class_weights: np.ndarray | None = None) -> float:
    """The CALD inconsistency score of one image (see the module docstring)."""
    boxes, scores, labels = original
    if len(boxes) == 0:
        return float(max((aug[1].max() for aug in augmented if len(aug[1])), default=0.0))
    agreement = np.zeros((len(boxes), len(augmented)))
    for k, (aug_boxes, aug_scores, aug_labels) in enumerate(augmented):
        if len(aug_boxes) == 0:
            continue
        ious = iou_matrix(boxes, aug_boxes)
        best = ious.argmax(axis=1)
        rows = np.arange(len(boxes))
        same_class = aug_labels[best] == labels
        agreement[:, k] = ious[rows, best] * (1 - np.abs(scores - aug_scores[best])) * same_class
    inconsistency = 1 - agreement.mean(axis=1)
    weights = class_weights[labels] if class_weights is not None else 1.0
    return float((weights * scores * inconsistency).sum() / max(scores.sum(), 1e-9))


def score_batch(batch: MiningBatch) -> list[float]:
    return [score(batch.detections[k], [copy[k] for copy in batch.augmented], batch.class_weights)
            for k in range(len(batch.detections))]


ALGORITHM = Algorithm(score=score_batch, augmentations=AUGMENTATIONS)
