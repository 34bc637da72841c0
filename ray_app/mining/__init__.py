"""Active-learning scores, one module per algorithm; higher = more useful to label.

Each module exposes ``score_batch(...)`` over a batch of images; ``ALGORITHMS`` maps the
``mining_algorithm`` hyperparameter to what the model actor must compute for it.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class AlgorithmNeeds:
    """What an algorithm needs from the forward pass."""

    dense_maps: bool = False      # the head's per-pixel class logits (ALDD)
    augmented_passes: int = 0     # extra forward passes on transformed inputs (CALD)


ALGORITHMS = {
    "random": AlgorithmNeeds(),
    "entropy": AlgorithmNeeds(),
    "aldd": AlgorithmNeeds(dense_maps=True),
    "cald": AlgorithmNeeds(augmented_passes=2),
}
