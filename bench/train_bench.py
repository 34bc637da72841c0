"""Training benchmark: does it learn, and what does the Ray Train wrapper cost?

Trains yolov5_n (or --model) on the generated shapes set for a fixed number of epochs,
twice on the same data and config:
  plain  - one process, a plain mmengine Runner (what the original executor ran per GPU);
  ray    - the real executor entry (`python -m ray_app`): Ray start, Ray Train's
           TorchTrainer with one worker running the same Runner, stages to /out.
Reports COCO bbox mAP, wall and CPU time, the median time per iteration of each, the
per-iteration overhead of the wrapper and its fixed start-up cost. With --workers 2 it
also runs two Ray Train workers (data parallel) for throughput.

    .venv/bin/python bench/train_bench.py            # writes bench/results/train.json
"""

from __future__ import annotations

import argparse
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save  # noqa: E402

from ray_app.data.coco import to_coco  # noqa: E402
from ray_app.data.index import read_index  # noqa: E402
from ray_app.data.sample import make_dataset, write_task  # noqa: E402

ITER_TIME = re.compile(r"Epoch\(train\)\s+\[\d+\]\[\s*\d+/\d+\].*?\btime: ([0-9.]+)")


def cpu_seconds() -> float:
    """CPU time used by the whole machine (user + system, all cores), from /proc/stat.

    Ray workers are children of the raylet, not of the entry, so rusage would miss them;
    on a machine doing nothing else this counts every process of the run."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    busy = sum(fields) - fields[3] - fields[4]  # minus idle and iowait
    return busy / os.sysconf("SC_CLK_TCK")


def plain_runner(work: Path, data, config: dict) -> dict:
    """The same config as the executor builds, trained by a bare Runner in this process."""
    from mmengine.runner import Runner

    from ray_app.protocol.hyperparams import TrainingParams, load_template
    from ray_app.train.config import build_config, set_warmup

    params = TrainingParams.model_validate({**load_template("training"), "class_names": data.class_names, **config})
    work.mkdir(parents=True, exist_ok=True)
    to_coco(read_index(data.train_index, "training", True), data.class_names, "ark:raw", work / "train.json", work)
    to_coco(read_index(data.val_index, "validation", True), data.class_names, "ark:raw", work / "val.json", work)
    cfg = build_config(params, work / "train.json", work / "val.json", work / "runner")
    images = len(read_index(data.train_index, "training", True))
    set_warmup(cfg, math.ceil(images / params.samples_per_gpu) * params.max_epochs)
    cfg.model.use_syncbn = False
    cfg.default_hooks.logger.interval = 1
    start, cpu = time.perf_counter(), cpu_seconds()
    runner = Runner.from_cfg(cfg)
    runner.train()
    wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    times = list(runner.message_hub.get_scalar("train/time").data[0])
    mAP = float(runner.message_hub.get_scalar("val/coco/bbox_mAP").current())
    return {"wall_s": wall, "cpu_s": cpu, "iterations": len(times), "iter_s_median": statistics.median(times[5:]),
            "mAP": max(0.0, mAP)}


def executor(work: Path, data, config: dict, workers: int) -> dict:
    """The real entry; per-iteration times parsed from the Runner's log lines."""
    env_file = write_task(work, data, run_training=True,
                          config={**config, "cpu_num_workers": workers,
                                  "cfg_options": "default_hooks.logger.interval=1"})
    start, cpu = time.perf_counter(), cpu_seconds()
    proc = subprocess.run([sys.executable, "-m", "ray_app"], env={**os.environ, "YMIR_ENV_FILE": str(env_file)},
                          capture_output=True, text=True)
    wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    if proc.returncode != 0:
        sys.exit(proc.stderr[-3000:])
    times = [float(t) for t in ITER_TIME.findall(proc.stdout + proc.stderr)]
    result = yaml.safe_load((work / "out" / "models" / "result.yaml").read_text())
    return {"wall_s": wall, "cpu_s": cpu, "iterations": len(times),  # rank 0 logs each iteration
            "iter_s_median": statistics.median(times[5:]), "mAP": result["mAP"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="yolov5_n")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2, help="also run this many Ray Train workers (0: skip)")
    parser.add_argument("--repeats", type=int, default=3, help="alternated plain/Ray runs; medians are reported")
    args = parser.parse_args()
    config = dict(model_name=args.model, img_size=args.size, max_epochs=args.epochs, samples_per_gpu=8,
                  workers_per_gpu=0, val_interval=args.epochs, learning_rate=0.02, max_keep_checkpoints=1)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = make_dataset(work / "data", n_train=args.images, n_val=32, n_candidates=0, image_size=args.size)
        runs: dict[str, list[dict]] = {"plain Runner": [], "Ray Train, 1 worker": []}
        for repeat in range(args.repeats):  # alternated, so drifts of the machine hit both alike
            runs["plain Runner"].append(plain_runner(work / f"plain{repeat}", data, config))
            runs["Ray Train, 1 worker"].append(executor(work / f"ray{repeat}", data, config, 1))
        if args.workers > 1:
            runs[f"Ray Train, {args.workers} workers"] = [executor(work / "multi", data, config, args.workers)]
    rows = {name: {key: statistics.median(r[key] for r in results) for key in results[0]}
            for name, results in runs.items()}
    plain, ray1 = rows["plain Runner"], rows["Ray Train, 1 worker"]
    overhead = ray1["iter_s_median"] / plain["iter_s_median"] - 1
    fixed = ray1["wall_s"] - plain["wall_s"]
    print(f"\n{args.model}, {args.epochs} epochs, {args.images} images of {args.size}px, batch 8, CPU, "
          f"median of {args.repeats} alternated runs\n")
    print(f"{'run':24} {'mAP':>6} {'wall s':>7} {'CPU s':>7} {'s/iter':>7} {'iters':>6}")
    for name, row in rows.items():
        print(f"{name:24} {row['mAP']:6.3f} {row['wall_s']:7.1f} {row['cpu_s']:7.1f} {row['iter_s_median']:7.3f} "
              f"{int(row['iterations']):6d}")
    print(f"\nper-iteration overhead of Ray Train: {100 * overhead:+.1f}%   fixed start-up cost: {fixed:.1f} s")
    path = save("train", {"args": vars(args), "medians": rows, "runs": runs, "per_iteration_overhead": overhead,
                          "fixed_startup_s": fixed})
    print(f"full numbers: {path}")


if __name__ == "__main__":
    main()
