"""What a runtime does with an exported model's outputs, in numpy alone: the reference for
anyone who serves the file (docs/export.md), and the proof that the file is enough.

:func:`detections` keeps what mmyolo's ``predict_by_feat`` keeps after the decoding the graph
holds: pairs (prior, class) over the score threshold, the ``nms_pre`` best of them, NMS per
class, the ``max_per_img`` best, boxes mapped back to the original image.
``tests/test_export.py`` checks it gives the boxes, scores and labels of the executor's own
inference on the same images. The thresholds are the file's ``test_cfg`` metadata, or a
task's own (as infer's ``conf_threshold`` and ``iou_threshold``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices of the boxes greedy NMS keeps, best first: a box goes when it overlaps one
    kept before it by more than ``iou_threshold`` (mmcv's ``nms``: areas without a +1)."""
    order = np.argsort(-scores, kind="stable")
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(best)
        low = np.maximum(boxes[best, :2], boxes[rest, :2])
        high = np.minimum(boxes[best, 2:], boxes[rest, 2:])
        overlap = np.prod(np.clip(high - low, 0, None), axis=1)
        iou = overlap / np.maximum(areas[best] + areas[rest] - overlap, np.finfo(np.float32).eps)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def detections(boxes: np.ndarray, scores: np.ndarray, score_thr: float, iou_threshold: float,
               multi_label: bool = True, nms_pre: int = 30000, max_per_img: int = 300,
               scale_factor: Sequence[float] = (1.0, 1.0), pad_param: Sequence[float] | None = None,
               ori_shape: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's (boxes (K, 4) x1 y1 x2 y2, scores (K,), labels (K,)) from the exported
    outputs ``boxes (N, 4)`` and ``scores (N, C)``. ``scale_factor`` (w, h), ``pad_param``
    (top, bottom, left, right) and ``ori_shape`` (height, width) are what the test pipeline's
    resize and padding did to the image, to map the boxes back; leave them out for input
    pixels."""
    if multi_label and scores.shape[1] > 1:
        rows, labels = np.nonzero(scores > score_thr)
        kept = scores[rows, labels]
    else:
        labels = scores.argmax(axis=1)
        kept = scores[np.arange(len(scores)), labels]
        rows = np.nonzero(kept > score_thr)[0]
        labels, kept = labels[rows], kept[rows]
    best = np.argsort(-kept, kind="stable")[:nms_pre]
    rows, labels, kept = rows[best], labels[best], kept[best]
    picked = boxes[rows].astype(np.float64)
    if pad_param is not None:
        picked -= np.array([pad_param[2], pad_param[0], pad_param[2], pad_param[0]], dtype=np.float64)
    picked /= np.tile(np.asarray(scale_factor, dtype=np.float64), 2)
    # NMS per class in one pass: each class's boxes moved apart from every other class's
    offsets = labels[:, None] * (np.abs(picked).max(initial=0) + 1)
    keep = nms(picked + offsets, kept, iou_threshold)[:max_per_img]
    picked, kept, labels = picked[keep], kept[keep], labels[keep]
    if ori_shape is not None:
        picked[:, 0::2] = picked[:, 0::2].clip(0, ori_shape[1])
        picked[:, 1::2] = picked[:, 1::2].clip(0, ori_shape[0])
    return picked, kept, labels
