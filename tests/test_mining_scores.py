"""The mining scores on hand-made inputs: each formula as its docstring states it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ray_app.mining import aldd, cald, entropy, random_baseline


def test_entropy_matches_the_original_formula():
    scores, labels = np.array([0.9, 0.5, 0.05]), np.array([0, 1, 1])
    expected = -(0.9 * math.log2(0.9) + 0.5 * math.log2(0.5))  # 0.05 is below conf_threshold
    assert entropy.score(scores, labels, 0.1, None) == pytest.approx(expected)
    assert entropy.score(np.array([]), np.array([], dtype=int), 0.1, None) == 0
    weighted = entropy.score(scores, labels, 0.1, np.array([1.0, 2.0]))
    assert weighted == pytest.approx(-(0.9 * math.log2(0.9) + 2 * 0.5 * math.log2(0.5)))


def test_random_is_uniform_and_repeatable():
    values = [random_baseline.score("task", f"/in/{i}.jpg") for i in range(2000)]
    assert all(0 <= v < 1 for v in values) and 0.45 < sum(values) / len(values) < 0.55
    assert random_baseline.score("task", "/in/1.jpg") == values[1]
    assert random_baseline.score("other", "/in/1.jpg") != values[1]


def test_aldd_is_high_where_neighbours_disagree():
    calm = torch.full((1, 3, 16, 16), -4.0)  # confidently empty everywhere
    noisy = calm.clone()
    noisy[0, :, ::2, ::2] = 4.0  # a checkerboard of confident objects: neighbours disagree
    uniform_object = torch.full((1, 3, 16, 16), 4.0)  # confident object everywhere: they agree
    scores = aldd.score_batch([torch.cat([calm, noisy, uniform_object])], num_classes=3)
    assert scores[1] > 10 * scores[0] and scores[1] > 10 * scores[2]
    assert (scores >= 0).all()


def test_aldd_handles_anchors_and_levels():
    logits = [torch.randn(2, 3 * 4, 16, 16), torch.randn(2, 3 * 4, 8, 8)]  # 3 anchors x 4 classes
    assert aldd.score_batch(logits, num_classes=4).shape == (2,)
    objectness = [torch.randn(2, 3, 16, 16), torch.randn(2, 3, 8, 8)]
    assert aldd.score_batch(logits, 4, (128, 128), objectness).shape == (2,)


def blob(inside: float, size: int = 16, at: slice = slice(6, 10)) -> torch.Tensor:
    """Logits of a (1, 1, size, size) stride-8 map: ``inside`` on a 4x4-cell square, -6 elsewhere."""
    t = torch.full((1, 1, size, size), -6.0)
    t[0, 0, at, at] = inside
    return t


def test_aldd_works_in_input_pixels_as_the_paper():
    """The neighbourhood is 9 input pixels, not 9 map cells: an object of 4 cells (32 px)
    is not averaged away, and a background-only map scores ~0."""
    background, sure = blob(-6.0), blob(6.0)
    scores = aldd.score_batch([torch.cat([background, sure])], num_classes=1, input_size=(128, 128), stride=1)
    assert scores[0] < 1e-3 and scores[1] > 100 * max(scores[0].item(), 1e-6)
    quarter = aldd.score_batch([torch.cat([background, sure])], num_classes=1, input_size=(128, 128))
    assert quarter[0] < 1e-3 and quarter[1] > 100 * max(quarter[0].item(), 1e-6)  # the default: 1/4 resolution
    # by hand: MI = H(avg9 p) - avg9 H(p) at input resolution, max per 32x32 cell, mean over cells
    p = F.interpolate(sure.sigmoid(), size=(128, 128), mode="bilinear", align_corners=False)
    h = lambda q: -(q.clamp(1e-6, 1 - 1e-6) * q.clamp(1e-6, 1 - 1e-6).log()  # noqa: E731
                    + (1 - q).clamp(1e-6, 1 - 1e-6) * (1 - q).clamp(1e-6, 1 - 1e-6).log())
    mean = lambda q: F.avg_pool2d(q, 9, stride=1, padding=4, count_include_pad=False)  # noqa: E731
    mi = (h(mean(p)) - mean(h(p))).clamp(min=0)
    assert scores[1].item() == pytest.approx(F.max_pool2d(mi, 32, 32).mean().item(), rel=1e-5)


def test_aldd_multiplies_objectness_and_weighs_classes():
    logits = torch.cat([blob(6.0), blob(6.0)], dim=1)  # 2 classes, the same map
    no_object = [torch.full((1, 1, 16, 16), -8.0)]
    sure_object = [torch.full((1, 1, 16, 16), 8.0)]
    with_object = aldd.score_batch([logits], 2, (128, 128), sure_object)
    assert aldd.score_batch([logits], 2, (128, 128), no_object) < 0.01 * with_object
    one_class = aldd.score_batch([logits], 2, (128, 128), sure_object, torch.tensor([1.0, 0.0]))
    assert one_class.item() == pytest.approx(with_object.item() / 2, rel=1e-5)


def boxes(*rows):
    rows = np.array(rows, dtype=float).reshape(-1, 6)
    return rows[:, :4], rows[:, 4], rows[:, 5].astype(int)


def test_cald_consistent_predictions_score_low():
    original = boxes([10, 10, 50, 50, 0.9, 0])
    same = boxes([10, 10, 50, 50, 0.9, 0])
    moved = boxes([30, 30, 70, 70, 0.4, 0])
    other_class = boxes([10, 10, 50, 50, 0.9, 1])
    assert cald.score(original, [same, same]) == pytest.approx(0.0)
    assert 0 < cald.score(original, [same, moved]) < cald.score(original, [moved, moved]) <= 1
    assert cald.score(original, [other_class, other_class]) == pytest.approx(1.0)
    assert cald.score(boxes(), [boxes(), moved]) == pytest.approx(0.4)  # found only in a copy
    assert cald.score(boxes(), [boxes(), boxes()]) == 0


def test_one_table_of_algorithms():
    """Every mining_algorithm is one entry: its score function and the extra passes it needs
    (CALD's flip and brightness live with CALD); the template's default is one of them."""
    import yaml

    from conftest import REPO
    from ray_app.mining import ALGORITHMS, Augmentation, MiningBatch

    assert set(ALGORITHMS) == {"random", "entropy", "aldd", "cald"}
    assert ALGORITHMS["cald"].augmentations == (Augmentation(flip=True), Augmentation(brightness=1.2))
    assert all(not a.augmentations for name, a in ALGORITHMS.items() if name != "cald")
    default = yaml.safe_load((REPO / "img-man" / "mining-template.yaml").read_text())["mining_algorithm"]
    assert default in ALGORITHMS
    empty = (np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=int))
    found = (np.array([[0.0, 0, 10, 10]]), np.array([0.6]), np.array([1]))
    batch = MiningBatch(paths=["a.jpg", "b.jpg"], detections=[found, empty],
                        class_logits=[torch.zeros(2, 3, 4, 4)], augmented=[[found, empty], [empty, empty]],
                        num_classes=3, conf_threshold=0.1, class_weights=None, task_id="t")
    for name, algorithm in ALGORITHMS.items():
        batch.augmented = [[found, empty]] * len(algorithm.augmentations)
        scores = algorithm.score(batch)
        assert len(scores) == 2 and all(isinstance(s, float) and s >= 0 for s in scores), name
    assert ALGORITHMS["entropy"].score(batch)[1] == 0  # no detection: nothing to be unsure of
