"""The smallest ``img_size`` each model family trains at (``model_config.zoo.Family.min_img_size``).

For every family's smallest model and every multiple of 32 from 32 to --max, a plain mmengine
Runner built from the executor's own config (``train.config.build_config``) trains one epoch
(2 iterations, batch 4) and validates once on generated images, each try in a fresh process.
A size passes when that completes; the family's minimum is the smallest size from which
every larger tried size passes. The sizes a network cannot take fail with a tensor-shape
error (yolov6_n at 64: ``The size of tensor a (9) must match the size of tensor b (4)``).

    .venv/bin/python bench/min_img_size.py      # writes bench/results/min_img_size.json
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def try_size(model: str, size: int, data_root: str, work: str) -> None:
    """One epoch and one validation of ``model`` at ``size``; raises if the network cannot take it."""
    from mmengine.runner import Runner

    from ray_app.data.coco import to_coco
    from ray_app.data.index import read_index
    from ray_app.data.sample import SampleData
    from ray_app.protocol.hyperparams import TrainingParams, load_template
    from ray_app.train.config import build_config

    root = Path(data_root)
    data = SampleData(root, root / "train-index.tsv", root / "val-index.tsv", root / "candidate-index.tsv",
                      ["square", "disc", "triangle"])
    work_dir = Path(work)
    to_coco(read_index(data.train_index, "training", True), data.class_names, "ark:raw", work_dir / "t.json", work_dir)
    to_coco(read_index(data.val_index, "validation", True), data.class_names, "ark:raw", work_dir / "v.json", work_dir)
    params = TrainingParams.model_validate({**load_template("training"), "class_names": data.class_names,
                                            "model_name": model, "img_size": size, "max_epochs": 1,
                                            "val_interval": 1, "samples_per_gpu": 4, "workers_per_gpu": 0})
    cfg = build_config(params, work_dir / "t.json", work_dir / "v.json", work_dir / "runner", 2)
    cfg.model.use_syncbn = False
    cfg.launcher = "none"
    Runner.from_cfg(cfg).train()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max", type=int, default=160, help="largest size tried (default 160)")
    parser.add_argument("--try", dest="one", nargs=4, metavar=("MODEL", "SIZE", "DATA", "WORK"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        model, size, data_root, work = args.one
        try_size(model, int(size), data_root, work)
        return

    from ray_app.data.sample import make_dataset
    from ray_app.model_config.zoo import FAMILIES

    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = make_dataset(Path(tmp) / "data", n_train=8, n_val=4, n_candidates=0, image_size=96, seed=5)
        for family in FAMILIES.values():
            tries = {}
            for size in range(32, args.max + 1, 32):
                work = Path(tmp) / f"{family.smallest}-{size}"
                done = subprocess.run([sys.executable, __file__, "--try", family.smallest, str(size), str(data.root),
                                       str(work)], capture_output=True, text=True, cwd=ROOT)
                errors = [line for line in done.stderr.splitlines() if "Error" in line and ":" in line]
                tries[size] = "ok" if done.returncode == 0 else (errors[-1].strip() if errors else "failed")[:200]
                print(f"{family.smallest:16s} {size:4d}: {tries[size]}", flush=True)
            passing = [s for s in tries if all(tries[t] == "ok" for t in tries if t >= s)]
            results[family.folder] = {"model": family.smallest, "min_img_size": min(passing) if passing else None,
                                      "tries": tries, "in_table": family.min_img_size}
    for folder, result in results.items():
        print(f"{folder:8s} smallest trainable img_size {result['min_img_size']} (table: {result['in_table']})")
    print("written:", save("min_img_size", {"command": "bench/min_img_size.py", "families": results}))


if __name__ == "__main__":
    main()
