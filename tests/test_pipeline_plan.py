"""How the inference pipeline cuts the candidate index into read blocks (no Ray needed)."""

from __future__ import annotations

import pytest

from ray_app.infer.pipeline import MAX_BATCHES_PER_BLOCK, ActorPlan, rows_per_block


def test_large_sets_get_blocks_of_several_whole_batches():
    plan = ActorPlan(count=1, num_cpus=2.0, batches_at_once=2)
    assert rows_per_block(2000, 8, plan) == 8 * MAX_BATCHES_PER_BLOCK
    assert rows_per_block(100_000, 16, plan) == 16 * MAX_BATCHES_PER_BLOCK


def test_small_sets_keep_every_actor_thread_busy():
    """Blocks shrink (down to one batch) so that each of the actors' threads gets several."""
    assert rows_per_block(12, 4, ActorPlan(count=1, num_cpus=2.0, batches_at_once=2)) == 4
    assert rows_per_block(320, 8, ActorPlan(count=1, num_cpus=2.0, batches_at_once=2)) == 32
    assert rows_per_block(320, 8, ActorPlan(count=4, num_cpus=1, num_gpus=1)) == 8  # 4 GPUs x 2 batches at once
    assert rows_per_block(0, 8, ActorPlan(count=1, num_cpus=1)) == 8


def test_model_actor_spec_rejects_an_unknown_algorithm_on_the_driver():
    """A typo fails where the spec is made (the driver), not in a model actor Ray has started."""
    from ray_app.infer.actors import DetectorSpec

    with pytest.raises(ValueError, match="unknown mining algorithm 'entrop'; known: .*entropy"):
        DetectorSpec(bundle=None, task_id="t", algorithm="entrop")
    assert DetectorSpec(bundle=None, task_id="t", algorithm="cald").algorithm == "cald"
    assert DetectorSpec(bundle=None, task_id="t").algorithm is None
