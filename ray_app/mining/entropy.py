"""Entropy (the original executor's score).

    score(image) = - sum_{d : p_d > conf} w_{c_d} * p_d * log2(p_d)

over the image's detections ``d`` with score ``p_d`` above ``conf_threshold`` and class
``c_d``; ``w`` is ``class_distribution_scores`` (all 1 when empty). 0 with no detection.
"""

from __future__ import annotations

import numpy as np

from ray_app.mining.base import Algorithm, MiningBatch


def score(scores: np.ndarray, labels: np.ndarray, conf_threshold: float, class_weights: np.ndarray | None) -> float:
    """The entropy score of one image's detections."""
    keep = scores > conf_threshold
    p = np.clip(scores[keep], 1e-12, 1.0)
    weights = class_weights[labels[keep]] if class_weights is not None else 1.0
    return float(-(weights * p * np.log2(p)).sum())


def score_batch(batch: MiningBatch) -> list[float]:
    return [score(scores, labels, batch.conf_threshold, batch.class_weights)
            for _, scores, labels in batch.detections]


ALGORITHM = Algorithm(score=score_batch)
