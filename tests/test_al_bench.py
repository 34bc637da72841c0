"""The active-learning benchmark's own pieces (bench/active_learning.py): the generated
dataset has the make-up docs/mining.md states, and the AUC it reports is the AUC."""

from __future__ import annotations

import sys
from collections import Counter

import pytest
from PIL import Image

from conftest import REPO

sys.path.insert(0, str(REPO))
from bench.active_learning import DUP_CLUSTER, SIZE, SPLITS, auc, make_al_dataset, picked_summary  # noqa: E402


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    return make_al_dataset(tmp_path_factory.mktemp("al"), seed=3)


def test_the_dataset_has_the_stated_make_up(splits):
    for split, kinds in SPLITS.items():
        assert Counter(i.kind for i in splits[split]) == Counter(kinds), split
        positives = sum(count for kind, count in kinds.items() if kind != "background")
        if split != "test":
            assert kinds["background"] == 3 * positives  # the anchor's 1:3
    for item in splits["seed"] + splits["pool"] + splits["test"]:
        lines = [line.split(", ") for line in open(item.annotation).read().splitlines()]
        assert (item.kind == "background") == (not lines), item
        for class_id, *box in lines:
            x1, y1, x2, y2 = map(int, box)
            assert 0 <= x1 < x2 <= SIZE and 0 <= y1 < y2 <= SIZE
        if item.kind == "rare":
            assert any(int(line[0]) == 2 for line in lines)  # the triangle
    assert Image.open(splits["pool"][0].image).size == (SIZE, SIZE)
    clusters = Counter(i.cluster for i in splits["pool"] if i.kind == "dup")
    assert set(clusters.values()) == {DUP_CLUSTER} and len(clusters) == SPLITS["pool"]["dup"] // DUP_CLUSTER


def test_picked_summary_counts_kinds_and_clusters(splits):
    dups = [i for i in splits["pool"] if i.kind == "dup"][:8]
    summary = picked_summary(dups + [i for i in splits["pool"] if i.kind == "background"][:2])
    assert summary["dup"] == 8 and summary["background"] == 2 and summary["with_objects"] == 8
    assert summary["dup_clusters"] == len({i.cluster for i in dups})


def test_auc():
    ranked = [("a", 3.0), ("b", 2.0), ("c", 2.0), ("d", 1.0)]
    assert auc(ranked, {"a", "c"}, {"b", "d"}) == 0.875  # a beats both; c ties b, beats d
    assert auc(ranked, {"a"}, {"b", "c", "d"}) == 1.0
    assert auc(ranked, {"d"}, {"a"}) == 0.0
    assert auc(ranked, set(), {"a"}) is None
