"""ALDD (Aghdam et al., "Active Learning for Deep Detection Neural Networks", ICCV 2019),
as the sister executors compute it (ymir-executor-fork, ``det-yolov5-tmi/ymir/mining/
ymir_mining_aldd.py``), for every mmyolo head.

From the head's dense outputs: per feature level ``l``, anchor ``a`` and class ``c`` the
probability map ``p = sigmoid(class logit)``, times ``sigmoid(objectness)`` for heads that
have one (yolov5, yolov7, yolox), resized (bilinear) to the network input's size. Then per
pixel, with ``H`` the binary entropy (natural log) and ``avg9`` a 9x9 mean of the
neighbours (the paper's neighbourhood, in input pixels):

    U_c   = sum_{l,a} [ H(avg9(p_lac)) - avg9(H(p_lac)) ]      (mutual information, >= 0 by Jensen)
    s_c   = mean over 32x32-pixel cells (stride 32) of ( max of U_c in the cell )
    score = sum_c w_c s_c                     (w: ``class_distribution_scores``, all 1 by default)

High where neighbouring predictions disagree. That includes the edges of objects the model
is sure of (the map goes from ~1 to ~0 within a few pixels), so ALDD ranks images with
objects far above background-only ones, but does not rank faint, small or rare objects above
clear ones (docs/mining.md measures both). The neighbourhood and cells are in input pixels,
as in the paper and the sister executors: the version before issue 15 pooled 9x9 and 32x32
cells of the stride-8 map (72 and 256 input pixels; at a 128-px input one region was the
whole image), averaged the anchors and ignored objectness.

Cost: ``classes x levels x anchors`` maps per image, on the model's device, at 1/``STRIDE``
of the input's resolution (4: a quarter; the paper's 9-pixel neighbourhood becomes 3 of
those pixels, 12 input pixels, and a cell 8 of them, 32 input pixels). At full resolution
(``stride=1``) ALDD cut CPU mining at 256 px from 145 to 46 images/s; at a quarter, the two
rank the benchmark's pool alike (docs/mining.md). The 9x9 mean runs as two 1-D means (exact:
the window less the padding is a rectangle); classes go in chunks of at most ``CHUNK``
elements.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ray_app.mining.base import Algorithm, MiningBatch

EPS = 1e-6
#: neighbourhood (pixels of the network input) over which predictions should agree
POOL = 9
#: cells (pixels of the network input) whose most uncertain pixel speaks for them
CELL = 32
#: the maps are computed at 1/STRIDE of the input's resolution, the neighbourhood rounded to
#: the nearest odd number of those pixels (1: 9, exactly the paper; 2: 5, i.e. 10 px; 4: 3,
#: i.e. 12 px); 4 costs 1/16 of the work of 1 and ranks the benchmark's pool the same way
#: (docs/mining.md)
STRIDE = 4
#: elements (images x classes x pixels) of one chunk of probability maps at most: 16 MB
CHUNK = 1 << 22


def _binary_entropy(p: torch.Tensor) -> torch.Tensor:
    p = p.clamp(EPS, 1 - EPS)
    return -(p * p.log() + (1 - p) * torch.log1p(-p))


def _box_mean(x: torch.Tensor, size: int) -> torch.Tensor:
    """The ``size`` x ``size`` mean of the neighbours (padding not counted), as two 1-D means."""
    x = F.avg_pool2d(x, (1, size), stride=1, padding=(0, size // 2), count_include_pad=False)
    return F.avg_pool2d(x, (size, 1), stride=1, padding=(size // 2, 0), count_include_pad=False)


def score_batch(class_logits: list[torch.Tensor], num_classes: int, input_size: tuple[int, int] | None = None,
                objectness: list[torch.Tensor] | None = None,
                class_weights: torch.Tensor | None = None, stride: int = STRIDE) -> torch.Tensor:
    """ALDD score per image of a batch; ``class_logits[l]`` is ``(B, A*C, H_l, W_l)``,
    ``objectness[l]`` ``(B, A, H_l, W_l)``; ``input_size`` defaults to 8x the largest level
    (the stride of mmyolo's finest level). Computed on the logits' device at 1/``stride`` of
    the input's resolution; returned on the CPU."""
    if input_size is None:
        input_size = (8 * max(t.shape[-2] for t in class_logits), 8 * max(t.shape[-1] for t in class_logits))
    height, width = max(1, input_size[0] // stride), max(1, input_size[1] // stride)
    pool = max(1, 2 * round((POOL / stride - 1) / 2) + 1)  # the nearest odd size
    cell = max(1, CELL // stride)
    batch = class_logits[0].shape[0]
    device = class_logits[0].device
    uncertainty = torch.zeros(batch, num_classes, height, width, device=device)
    step = max(1, CHUNK // (batch * height * width))
    for level, logits in enumerate(class_logits):
        _, channels, h, w = logits.shape
        anchors = max(1, channels // num_classes)
        p = logits.float().view(batch, anchors, num_classes, h, w).sigmoid()
        if objectness is not None:
            p = p * objectness[level].float().view(batch, anchors, 1, h, w).sigmoid()
        for a in range(anchors):
            for c in range(0, num_classes, step):
                q = F.interpolate(p[:, a, c:c + step], size=(height, width), mode="bilinear", align_corners=False)
                information = _binary_entropy(_box_mean(q, pool)) - _box_mean(_binary_entropy(q), pool)
                uncertainty[:, c:c + step] += information.clamp_(min=0)
    k = (min(cell, height), min(cell, width))
    scores = F.max_pool2d(uncertainty, k, stride=k).flatten(2).mean(dim=2).cpu()  # (B, C)
    weights = class_weights.to(scores) if class_weights is not None else torch.ones(num_classes)
    return (scores * weights.view(1, -1)).sum(dim=1)


def score_mining_batch(batch: MiningBatch) -> list[float]:
    weights = torch.as_tensor(batch.class_weights) if batch.class_weights is not None else None
    return score_batch(list(batch.class_logits), batch.num_classes, batch.input_size,
                       list(batch.objectness) if batch.objectness is not None else None, weights).tolist()


ALGORITHM = Algorithm(score=score_mining_batch)
