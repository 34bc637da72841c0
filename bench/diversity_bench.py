"""How long the diverse ranking (``ray_app.mining.diversity``) takes on the driver.

Random features of the width of mmyolo necks' deepest level (256 for yolov8_n, 1024 for
yolov8_x / rtmdet_x ...), with clusters of near-duplicates, and uniform scores; the median of
``--repeats`` runs per size. Writes bench/results/diversity.json.

    .venv/bin/python bench/diversity_bench.py [--sizes 1000,10000,100000] [--dims 256,1024]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import save  # noqa: E402
from ray_app.mining.diversity import diverse_scores  # noqa: E402


def candidates(n: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` feature vectors (float16, as the model actors send them): a tenth of them in
    clusters of 10 near-duplicates."""
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((n, dim)).astype(np.float32)
    dup = n // 10
    features[:dup] = np.repeat(features[:dup:10], 10, axis=0)[:dup] + 0.01 * rng.standard_normal((dup, dim))
    return rng.random(n), features.astype(np.float16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--dims", default="256,1024")
    parser.add_argument("--weight", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = []
    for dim in map(int, args.dims.split(",")):
        for n in map(int, args.sizes.split(",")):
            scores, features = candidates(n, dim)
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                diverse_scores(scores, features, args.weight)
                times.append(time.perf_counter() - start)
            rows.append({"candidates": n, "dim": dim, "seconds_median": round(statistics.median(times), 3),
                         "features_mb": round(features.nbytes / 2**20, 1)})
            print(f"{n:>7} candidates x {dim:>4} features ({rows[-1]['features_mb']:>6} MB): "
                  f"{rows[-1]['seconds_median']:.2f} s", flush=True)
    print(save("diversity", {"args": vars(args), "rows": rows}))


if __name__ == "__main__":
    main()
