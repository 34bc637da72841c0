"""Random: a uniform number in [0, 1) per image, the baseline every algorithm must beat.

Seeded by the task id and the image path, so a re-run ranks the same way.
"""

from __future__ import annotations

import hashlib

from ray_app.mining.base import Algorithm, MiningBatch


def score(task_id: str, image: str) -> float:
    """``U[0, 1)``, deterministic in (task_id, image)."""
    digest = hashlib.sha256(f"{task_id}\0{image}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def score_batch(batch: MiningBatch) -> list[float]:
    return [score(batch.task_id, str(path)) for path in batch.paths]


ALGORITHM = Algorithm(score=score_batch)
