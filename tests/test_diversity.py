"""The diverse ranking (``ray_app.mining.diversity``) on hand-made features, and through the
mining entry."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import run_entry
from ray_app.mining.diversity import diverse_scores


def world(seed: int = 0, duplicates: int = 5, others: int = 40, dim: int = 256):
    """``duplicates`` near-copies of one image, all scoring highest, and ``others`` distinct
    images scoring lower."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal(dim)
    features = np.vstack([base + 0.01 * rng.standard_normal((duplicates, dim)), rng.standard_normal((others, dim))])
    scores = np.concatenate([np.linspace(1.0, 0.96, duplicates), rng.uniform(0.3, 0.7, others)])
    return scores, features


def order(keys: np.ndarray) -> np.ndarray:
    return np.argsort(-keys, kind="stable")


def test_weight_zero_is_plain_score_order():
    scores, features = world()
    assert np.array_equal(diverse_scores(scores, features, 0.0), scores)


@pytest.mark.parametrize("cluster_size", [1000, 8])  # one cluster; many small k-means clusters
def test_near_duplicates_do_not_fill_the_top(cluster_size):
    scores, features = world()
    keys = diverse_scores(scores, features, 1.0, cluster_size=cluster_size)
    assert np.sum(order(scores)[:5] < 5) == 5  # by score alone the 5 copies take the top 5
    top = order(keys)[:5]
    assert np.sum(top < 5) == 1, top  # diverse: one copy, then the best distinct images
    assert keys[0] == scores[0]  # the best image keeps its score: nothing ranked before it
    assert (keys <= scores + 1e-12).all()
    assert (top[1:] >= 5).all()  # distinct images next (their order shifts by their own similarities)


def test_a_weaker_weight_lets_close_scores_win():
    scores, features = world()
    weak, strong = diverse_scores(scores, features, 0.2), diverse_scores(scores, features, 1.0)
    assert np.sum(order(weak)[:5] < 5) == 5 and np.sum(order(strong)[:5] < 5) == 1


def test_unreadable_images_stay_last():
    scores, features = world()
    scores[[3, 20]] = -1.0
    keys = diverse_scores(scores, features, 1.0)
    assert set(order(keys)[-2:]) == {3, 20} and (keys[[3, 20]] == -1).all()


@pytest.mark.slow
def test_mining_with_diversity_through_the_entry(infer_task, sample):
    """The same forward pass gives the features: result.tsv holds every candidate, sorted,
    each score at most its plain entropy score, the first line unchanged."""
    plain = run_entry(infer_task(run_mining=True, run_infer=False, mining_algorithm="entropy"))
    assert plain.returncode == 0, plain.output[-3000:]
    plain_lines = (plain.out / "result.tsv").read_text().splitlines()
    diverse = run_entry(infer_task(run_mining=True, run_infer=False, mining_algorithm="entropy", diversity=1.0))
    assert diverse.returncode == 0, diverse.output[-3000:]
    assert "diverse ranking of 12 images (diversity 1)" in diverse.output
    lines = (diverse.out / "result.tsv").read_text().splitlines()
    ranked = [(line.split("\t")[0], float(line.split("\t")[1])) for line in lines]
    before = {line.split("\t")[0]: float(line.split("\t")[1]) for line in plain_lines}
    assert sorted(before) == sorted(p for p, _ in ranked)
    assert [s for _, s in ranked] == sorted((s for _, s in ranked), reverse=True)
    assert all(s <= before[p] + 1e-9 for p, s in ranked)
    assert ranked[0] == (plain_lines[0].split("\t")[0], float(plain_lines[0].split("\t")[1]))
    assert any(s < before[p] - 1e-9 for p, s in ranked), "no score was weighed down"
