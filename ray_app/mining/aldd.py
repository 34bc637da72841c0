"""ALDD (Aghdam et al., "Active Learning for Deep Detection Neural Networks", ICCV 2019).

From the detector's dense class-probability maps ``P_l`` (one per feature level, sigmoid
of the head's class logits, anchors averaged, resized to the largest level's shape):

    H(p)  = - sum_c [ p_c log p_c + (1 - p_c) log(1 - p_c) ]       (binary entropy, classes summed)
    U_l   = H( avgpool9(P_l) ) - avgpool9( H(P_l) )                  (per pixel; >= 0 by Jensen)
    s_l   = mean over 32x32 regions of ( max of U_l in the region )
    score = mean_l s_l

High where neighbouring predictions disagree: the model is unsure where an object is.
Regions are 32x32 cells of the resized map (the whole map when smaller).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ray_app.mining.base import Algorithm, MiningBatch

EPS = 1e-6


def _binary_entropy(p: torch.Tensor) -> torch.Tensor:
    p = p.clamp(EPS, 1 - EPS)
    return -(p * p.log() + (1 - p) * (1 - p).log()).sum(dim=1)


def score_batch(class_logits: list[torch.Tensor], num_classes: int, class_weights: torch.Tensor | None = None,
                pool: int = 9, region: int = 32) -> torch.Tensor:
    """ALDD score per image of a batch; ``class_logits[l]`` is ``(B, A*C, H_l, W_l)``."""
    height = max(t.shape[-2] for t in class_logits)
    width = max(t.shape[-1] for t in class_logits)
    level_scores = []
    for logits in class_logits:
        batch, channels, h, w = logits.shape
        anchors = max(1, channels // num_classes)
        p = logits.float().sigmoid().view(batch, anchors, num_classes, h, w).mean(dim=1)
        if class_weights is not None:
            p = p * class_weights.view(1, -1, 1, 1).to(p)
        if (h, w) != (height, width):
            p = F.interpolate(p, size=(height, width), mode="bilinear", align_corners=False)
        mean_p = F.avg_pool2d(p, pool, stride=1, padding=pool // 2, count_include_pad=False)
        mean_entropy = F.avg_pool2d(_binary_entropy(p).unsqueeze(1), pool, stride=1, padding=pool // 2,
                                    count_include_pad=False).squeeze(1)
        disagreement = (_binary_entropy(mean_p) - mean_entropy).clamp(min=0)
        k = (min(region, height), min(region, width))
        peaks = F.max_pool2d(disagreement.unsqueeze(1), k, stride=k, ceil_mode=True)
        level_scores.append(peaks.flatten(1).mean(dim=1))
    return torch.stack(level_scores, dim=1).mean(dim=1)


def score_mining_batch(batch: MiningBatch) -> list[float]:
    weights = torch.as_tensor(batch.class_weights) if batch.class_weights is not None else None
    return score_batch(list(batch.class_logits), batch.num_classes, weights).tolist()


ALGORITHM = Algorithm(score=score_mining_batch)
