"""`make bench`: every benchmark, one after the other (results in bench/results/), each with
the arguments its figures in docs/ were measured with."""

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RUNS = {
    "train_bench.py": [],
    "train_contention.py": [],
    "convert_bench.py": [],
    "infer_bench.py": [],
    "profile_batch.py": [],
    "profile_batch.py --cpu-runtime onnxruntime": ["--size", "256", "--input", "160"],  # the steady rate's ceiling
    "infer_bench.py --timeline": ["--images", "320", "--size", "256", "--input", "160"],  # start-up, step by step
    "ray_start.py": ["--runs", "6", "--full"],  # where ray.init waits, and what lean_local_start saves
    "actor_imports.py": [],  # a model actor's mmcv/mmdet/mmyolo imports, with and without what it leaves out
    "scaling_bench.py": ["--images", "1500", "--rounds", "3"],  # docs/scaling.md
    "min_img_size.py": [],  # model_config.zoo.FAMILIES, docs/training.md
    "infer_bench.py --mining-only": ["--images", "320", "--rounds", "3"],  # docs/mining.md
    "diversity_bench.py": [],  # docs/mining.md
    "score_separation.py": [],  # docs/mining.md
}  # bench/active_learning.py (~40 min) runs on its own: make bench-al
for script, args in RUNS.items():
    print(f"=== {script} {' '.join(args)}", flush=True)
    name, *flags = script.split()
    subprocess.run([sys.executable, str(HERE / name), *flags, *args], check=True)
