"""Active-learning scores, one module per algorithm; higher = more useful to label.

Each module scores images from what one batched forward pass gives (ALDD works on the
whole batch's dense maps; the others per image). ``ALGORITHMS`` is the list of valid
``mining_algorithm`` values, with what each needs from the model.
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
