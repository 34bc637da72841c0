"""A model actor's imports of mmcv, mmdet and mmyolo (``model.import_model_modules``), each in
a fresh process after the inference modules, as in the actor, three ways, alternated: nothing
left out; scikit-learn and albumentations left out (what a model actor did until 2026-11-27's
night); everything a model actor now leaves out (``actors.leave_out_training_only``: torch's
FSDP with them). Medians, and which of torch's FSDP modules and sympy each way loaded.

    .venv/bin/python bench/actor_imports.py [--rounds 3]     # bench/results/actor_imports.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.common import save  # noqa: E402

CHILD = r'''
import json, sys, time
import ray_app.infer.actors as actors
if sys.argv[1] == "sklearn+albumentations":
    for name in ("sklearn", "albumentations"):
        sys.modules[name] = None
elif sys.argv[1] == "actor":
    actors.leave_out_training_only()
started = time.perf_counter()
from ray_app.infer.model import import_model_modules
import_model_modules()
print(json.dumps({"s": time.perf_counter() - started, "fsdp": "torch.distributed.fsdp" in sys.modules,
                  "sympy": "sympy" in sys.modules}))
'''

WAYS = ("nothing", "sklearn+albumentations", "actor")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    runs: dict[str, list[dict]] = {way: [] for way in WAYS}
    for r in range(args.rounds):
        for way in WAYS if r % 2 == 0 else WAYS[::-1]:
            out = subprocess.run([sys.executable, "-c", CHILD, way], capture_output=True, text=True, cwd=REPO,
                                 check=True).stdout
            runs[way].append(json.loads(out.strip().splitlines()[-1]))
            print(r, way, runs[way][-1], flush=True)
    medians = {way: round(statistics.median(run["s"] for run in rows), 2) for way, rows in runs.items()}
    for way in WAYS:
        print(f"{way:24} {medians[way]:5.2f} s   torch's FSDP loaded: {runs[way][0]['fsdp']}, sympy: {runs[way][0]['sympy']}")
    print(save("actor_imports", {"args": vars(args), "median_s": medians, "runs": runs}))


if __name__ == "__main__":
    main()
