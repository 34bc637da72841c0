"""How well each mining score separates the images worth labelling from the rest (AUC).

A model is trained through the executor's training task on the seed set of the active-
learning benchmark's dataset (``bench/active_learning.py``: 20 images with objects, 60
background-only); then every pool image goes through the executor's own detector
(``ray_app.infer.model.Detector``, in this process, one batch at a time) and each score of
``ray_app.mining.ALGORITHMS`` is computed from the same passes, with ALDD as it was before
issue 15 beside it (``legacy_aldd``: 9x9 neighbourhoods and 32x32 regions of feature-map
cells instead of input pixels; anchors averaged; no objectness). Two AUCs per score:

- objects vs background: images with at least one object against background-only images;
- hard vs common, among images with objects: a rare-class, small, faint or near-duplicate
  image against an ordinary one.

    .venv/bin/python bench/score_separation.py [--seed 0]

Writes bench/results/score_separation.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.active_learning import M0_EPOCHS, auc, make_al_dataset, train  # noqa: E402
from bench.common import save  # noqa: E402


def legacy_aldd(class_logits: list[torch.Tensor], num_classes: int, pool: int = 9, region: int = 32) -> list[float]:
    """ALDD as ``ray_app/mining/aldd.py`` computed it before issue 15: per level, anchors
    averaged, resized to the largest level; pooling in feature-map cells."""
    def entropy(p):
        p = p.clamp(1e-6, 1 - 1e-6)
        return -(p * p.log() + (1 - p) * (1 - p).log()).sum(dim=1)

    height = max(t.shape[-2] for t in class_logits)
    width = max(t.shape[-1] for t in class_logits)
    level_scores = []
    for logits in class_logits:
        batch, channels, h, w = logits.shape
        p = logits.float().sigmoid().view(batch, max(1, channels // num_classes), num_classes, h, w).mean(dim=1)
        if (h, w) != (height, width):
            p = F.interpolate(p, size=(height, width), mode="bilinear", align_corners=False)
        mean_p = F.avg_pool2d(p, pool, stride=1, padding=pool // 2, count_include_pad=False)
        mean_entropy = F.avg_pool2d(entropy(p).unsqueeze(1), pool, stride=1, padding=pool // 2,
                                    count_include_pad=False).squeeze(1)
        disagreement = (entropy(mean_p) - mean_entropy).clamp(min=0)
        k = (min(region, height), min(region, width))
        peaks = F.max_pool2d(disagreement.unsqueeze(1), k, stride=k, ceil_mode=True)
        level_scores.append(peaks.flatten(1).mean(dim=1))
    return torch.stack(level_scores, dim=1).mean(dim=1).tolist()


def score_pool(models: Path, files: list[str], pool) -> tuple[dict[str, list[float]], np.ndarray]:
    from ray_app.infer.actors import Preprocess
    from ray_app.infer.model import Detector, inference_pipeline, load_stage
    from ray_app.mining import ALGORITHMS, MiningBatch, aldd
    from ray_app.protocol.hyperparams import InferParams

    params = InferParams.model_validate(dict(
        class_names=["square", "disc", "triangle"], model_params_path=files, img_size=0, samples_per_gpu=8,
        workers_per_gpu=0, cpu_num_workers=1, conf_threshold=0.1, iou_threshold=0.65, task_id="t" + "0" * 29,
        gpu_id="", gpu_count=0))
    bundle = load_stage(params, str(models))
    detector = Detector(bundle, "cpu")
    preprocess = Preprocess(inference_pipeline(bundle.cfg), bundle.input_size)
    scores: dict[str, list[float]] = {name: [] for name in [*ALGORITHMS, "aldd at input resolution",
                                                            "aldd (before issue 15)"]}
    features = []
    for start in range(0, len(pool), 8):
        items = pool[start:start + 8]
        data = np.array([Path(i.image).read_bytes() for i in items], dtype=object)
        packed = preprocess.samples(data, [""] * len(items))
        plain = detector.forward(packed, features=True)
        features.append(plain.features)
        for name, algorithm in ALGORITHMS.items():
            augmented = [detector.forward(packed, flip=a.flip, brightness=a.brightness).detections
                         for a in algorithm.augmentations]
            scores[name] += algorithm.score(MiningBatch(
                paths=[i.image for i in items], detections=plain.detections, class_logits=plain.class_logits,
                objectness=plain.objectness, input_size=plain.input_size, augmented=augmented,
                num_classes=detector.num_classes, conf_threshold=0.1, class_weights=None, task_id="t"))
        scores["aldd at input resolution"] += aldd.score_batch(
            list(plain.class_logits), detector.num_classes, plain.input_size,
            list(plain.objectness) if plain.objectness is not None else None, stride=1).tolist()
        scores["aldd (before issue 15)"] += legacy_aldd(list(plain.class_logits), detector.num_classes)
    return scores, np.concatenate(features)


def similarities(features: np.ndarray, pool) -> dict[str, float]:
    """Mean cosine similarity, in the diverse ranking's embedding, of near-duplicate pairs
    (same cluster) and of all other pairs."""
    from ray_app.mining.diversity import embed

    x = embed(features)
    sim = x @ x.T
    cluster = np.array([i.cluster for i in pool])
    same = (cluster[:, None] == cluster[None, :]) & (cluster[:, None] >= 0)
    np.fill_diagonal(same, False)
    other = ~same
    np.fill_diagonal(other, False)
    return {"near_duplicates": round(float(sim[same].mean()), 3), "other_pairs": round(float(sim[other].mean()), 3),
            "other_pairs_p99": round(float(np.quantile(sim[other], 0.99)), 3),
            "near_duplicates_p01": round(float(np.quantile(sim[same], 0.01)), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="separation-") as tmp:
        os.environ["RAY_APP_WEIGHTS"] = str(Path(tmp) / "no-coco-weights")
        splits = make_al_dataset(Path(tmp) / "data", args.seed)
        models, files, mAP, _ = train(Path(tmp) / "m0", Path(tmp) / "data", splits["seed"], splits["test"],
                                      M0_EPOCHS, None, "t" + "0" * 29)
        pool = splits["pool"]
        scores, features = score_pool(models, files, pool)
    objects = {i.image for i in pool if i.kind != "background"}
    hard = {i.image for i in pool if i.kind in ("rare", "small", "faint", "dup")}
    rows = {}
    for name, values in scores.items():
        ranked = list(zip((i.image for i in pool), values))
        rows[name] = {"auc_objects_vs_background": auc(ranked, objects, {i.image for i in pool} - objects),
                      "auc_hard_vs_common": auc(ranked, hard, objects - hard)}
        print(f"{name:24} objects vs background {rows[name]['auc_objects_vs_background']:.3f}   "
              f"hard vs common {rows[name]['auc_hard_vs_common']:.3f}")
    from scipy.stats import spearmanr

    rho = round(float(spearmanr(scores["aldd"], scores["aldd at input resolution"]).statistic), 4)
    print(f"aldd at its default resolution against input resolution: Spearman {rho}")
    cosine = similarities(features, pool)
    print("cosine similarity in the diverse ranking's embedding:", cosine)
    print(save(f"score_separation_seed{args.seed}", {"args": vars(args), "model_mAP": mAP, "auc": rows, "aldd_spearman_default_vs_input_resolution": rho,
                                                     "cosine_similarity": cosine}))


if __name__ == "__main__":
    main()
