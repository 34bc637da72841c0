"""Active-learning scores, one module per algorithm; higher = more useful to label.

Each module scores images from what one batch of forward passes gives (ALDD works on the
whole batch's dense maps; the others per image) and says what it needs in its ``ALGORITHM``
(see :mod:`ray_app.mining.base`). ``ALGORITHMS`` is the one table of valid
``mining_algorithm`` values: adding a score is one module and one entry here.
"""

from ray_app.mining import aldd, cald, entropy, random_baseline
from ray_app.mining.base import Algorithm, Augmentation, MiningBatch

ALGORITHMS: dict[str, Algorithm] = {
    "random": random_baseline.ALGORITHM,
    "entropy": entropy.ALGORITHM,
    "aldd": aldd.ALGORITHM,
    "cald": cald.ALGORITHM,
}

__all__ = ["ALGORITHMS", "Algorithm", "Augmentation", "MiningBatch"]
