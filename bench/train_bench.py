"""Training benchmark: does it learn, and what does the Ray Train wrapper cost?

Trains yolov5_n (or --model) on the generated shapes set for a fixed number of epochs,
twice on the same data and config:
  plain  - one process, a plain mmengine Runner (what the original executor ran per GPU);
  ray    - the real executor entry (`python -m ray_app`): Ray start, Ray Train's
           TorchTrainer with one worker running the same Runner, stages to /out.
The plain Runner is timed twice: inside this process, from ``Runner.from_cfg`` (its imports
and config already done), and as a whole process of its own (``python bench/train_bench.py
--plain-process``: imports, config, Runner, as the original executor's ``tools/train.py`` runs),
the fair baseline for the executor's whole process.
Reports COCO bbox mAP, wall and CPU time, the median time per iteration of each, the
per-iteration overhead of the wrapper (medians, and each alternated pair: this machine's speed
drifts by ±10 % between runs) and its fixed cost (the wall time outside the iterations: Ray's
start, worker set-up, validation and saving, less the plain Runner's). Both report the median of
the Runner's own per-iteration timer (``ray_app.train.hooks.iteration_times``), so the
logger interval (``--log-interval``, the executor's 10 by default) changes no statistic. With --workers 2 it
also runs two Ray Train workers (data parallel) for throughput.

    .venv/bin/python bench/train_bench.py            # writes bench/results/train.json
"""

from __future__ import annotations

import argparse
import json
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
from scaling_bench import entry_timeline  # noqa: E402

from ray_app.data.coco import to_coco  # noqa: E402
from ray_app.data.index import read_index  # noqa: E402
from ray_app.data.sample import make_dataset, write_task  # noqa: E402

#: the line the executor's hook prints at the end of training (``hooks.iteration_times``)
SUMMARY = re.compile(r"training: (\d+) iterations, median ([0-9.]+) s per iteration")
#: the data-loading time in the Runner's log lines (the mean over the logger's interval)
DATA_TIME = re.compile(r"data_time: ([0-9.]+)")
#: the entry's training run, step by step: (a line's marker, the step it ends), in the order they
#: happen; ``executor`` records the seconds from the process's start to each step's first line
TIMELINE = (("starting a local Ray", "driver asks Ray to start"),
            ("INFO ray_app.train.task: training ", "Ray is up, the config is built"),
            ("Attempting to start training worker group", "Ray Train's controller is up"),
            ("Setting up process group", "the worker's process is up (torch.distributed next)"),
            ("Ray Train worker on node", "the worker's adapter runs (mmengine's Runner next)"),
            ("Epoch(train)", "first logged iterations"),
            (" iterations, median ", "training done (the iteration summary)"),
            ("task done", "stages written, task done"))


def cpu_seconds() -> float:
    """CPU time used by the whole machine (user + system, all cores), from /proc/stat.

    Ray workers are children of the raylet, not of the entry, so rusage would miss them;
    on a machine doing nothing else this counts every process of the run."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    busy = sum(fields) - fields[3] - fields[4]  # minus idle and iowait
    return busy / os.sysconf("SC_CLK_TCK")


def bench_config(model: str = "yolov5_n", size: int = 128, epochs: int = 20) -> dict:
    """The training hyperparameters both paths train with: batch 8, no dataloader workers,
    one validation at the end."""
    return dict(model_name=model, img_size=size, max_epochs=epochs, samples_per_gpu=8, workers_per_gpu=0,
                val_interval=epochs, learning_rate=0.02, max_keep_checkpoints=1)


def plain_runner(work: Path, data, config: dict, log_interval: int, use_gpu: bool = False) -> dict:
    """The same config as the executor builds, trained by a bare Runner in this process (on
    the GPU with ``use_gpu``: mmengine takes cuda:0, and ``config['amp']`` decides AMP)."""
    from mmengine.runner import Runner

    from ray_app.protocol.hyperparams import TrainingParams, load_template
    from ray_app.train.config import build_config
    from ray_app.train.hooks import iteration_times

    params = TrainingParams.model_validate({**load_template("training"), "class_names": data.class_names, **config})
    work.mkdir(parents=True, exist_ok=True)
    to_coco(read_index(data.train_index, "training", True), data.class_names, "ark:raw", work / "train.json", work)
    to_coco(read_index(data.val_index, "validation", True), data.class_names, "ark:raw", work / "val.json", work)
    images = len(read_index(data.train_index, "training", True))
    cfg = build_config(params, work / "train.json", work / "val.json", work / "runner",
                       math.ceil(images / params.samples_per_gpu), use_gpu=use_gpu)
    cfg.model.use_syncbn = False
    cfg.default_hooks.logger.interval = log_interval
    start, cpu = time.perf_counter(), cpu_seconds()
    runner = Runner.from_cfg(cfg)
    runner.train()
    wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    iterations, iter_s = iteration_times(runner)  # the statistic the executor logs
    mAP = float(runner.message_hub.get_scalar("val/coco/bbox_mAP").current())
    data_s = statistics.median(list(runner.message_hub.get_scalar("train/data_time").data[0])[5:] or [0.0])
    return {"wall_s": wall, "cpu_s": cpu, "iterations": iterations, "iter_s_median": iter_s,
            "data_s_median": data_s, "mAP": max(0.0, mAP)}


def plain_process(work: Path, data, config: dict, log_interval: int) -> dict:
    """``plain_runner`` in a fresh Python process; ``wall_s`` is the whole process's."""
    request = {"work": str(work), "train_index": str(data.train_index), "val_index": str(data.val_index),
               "class_names": list(data.class_names), "config": config, "log_interval": log_interval}
    start, cpu = time.perf_counter(), cpu_seconds()
    proc = subprocess.run([sys.executable, __file__, "--plain-process", json.dumps(request)], capture_output=True,
                          text=True)
    wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    if proc.returncode != 0:
        sys.exit(proc.stderr[-3000:])
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "wall_s": wall, "cpu_s": cpu}


def executor(work: Path, data, config: dict, workers: int, log_interval: int) -> dict:
    """The real entry; the median iteration time from rank 0's summary line, and its
    ``timeline``: seconds from the process's start to the first line of each ``TIMELINE`` step,
    as each line reaches this process (the log's own timestamps have one-second resolution)."""
    env_file = write_task(work, data, run_training=True,
                          config={**config, "cpu_num_workers": workers,
                                  "cfg_options": f"default_hooks.logger.interval={log_interval}"})
    cpu = cpu_seconds()
    code, log, wall, timeline = entry_timeline(env_file, TIMELINE)
    cpu = cpu_seconds() - cpu
    if code != 0:
        sys.exit(log[-3000:])
    iterations, iter_s = SUMMARY.search(log).groups()
    data_times = [float(t) for t in DATA_TIME.findall(log)]
    result = yaml.safe_load((work / "out" / "models" / "result.yaml").read_text())
    return {"wall_s": wall, "cpu_s": cpu, "iterations": int(iterations), "iter_s_median": float(iter_s),
            "data_s_median": statistics.median(data_times) if data_times else None, "mAP": result["mAP"],
            "timeline": {**dict(sorted(timeline.items(), key=lambda kv: kv[1])), "process ended": round(wall, 2)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="yolov5_n")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2, help="also run this many Ray Train workers (0: skip)")
    parser.add_argument("--repeats", type=int, default=5, help="alternated plain/Ray runs; medians are reported")
    parser.add_argument("--log-interval", type=int, default=10,
                        help="the Runner's logger interval in both (10: the executor's default)")
    parser.add_argument("--plain-process", metavar="JSON", help=argparse.SUPPRESS)  # plain_process's child
    args = parser.parse_args()
    if args.plain_process:
        from types import SimpleNamespace

        request = json.loads(args.plain_process)
        data = SimpleNamespace(train_index=Path(request["train_index"]), val_index=Path(request["val_index"]),
                               class_names=request["class_names"])
        print(json.dumps(plain_runner(Path(request["work"]), data, request["config"], request["log_interval"])))
        return
    config = bench_config(args.model, args.size, args.epochs)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = make_dataset(work / "data", n_train=args.images, n_val=32, n_candidates=0, image_size=args.size)
        runs: dict[str, list[dict]] = {"plain Runner": [], "plain Runner, own process": [], "Ray Train, 1 worker": []}
        for repeat in range(args.repeats):  # alternated, so drifts of the machine hit both alike
            runs["plain Runner"].append(plain_runner(work / f"plain{repeat}", data, config, args.log_interval))
            runs["plain Runner, own process"].append(plain_process(work / f"process{repeat}", data, config,
                                                                   args.log_interval))
            runs["Ray Train, 1 worker"].append(executor(work / f"ray{repeat}", data, config, 1, args.log_interval))
        if args.workers > 1:
            runs[f"Ray Train, {args.workers} workers"] = [executor(work / "multi", data, config, args.workers,
                                                                   args.log_interval)]
    rows = {name: {key: statistics.median(r[key] for r in results) for key, value in results[0].items()
                   if isinstance(value, (int, float))} for name, results in runs.items()}
    for name, results in runs.items():  # the entry's start-up, step by step: each step's median
        if "timeline" in results[0]:
            rows[name]["timeline"] = {step: statistics.median(r["timeline"][step] for r in results
                                                              if step in r["timeline"])
                                      for step in results[0]["timeline"]}
    plain, ray1 = rows["plain Runner"], rows["Ray Train, 1 worker"]
    overhead = ray1["iter_s_median"] / plain["iter_s_median"] - 1
    pairs = [r["iter_s_median"] / p["iter_s_median"] - 1
             for p, r in zip(runs["plain Runner"], runs["Ray Train, 1 worker"])]
    # the wall time outside the training iterations (start, validation, saving), Ray's less the plain Runner's
    def outside(row: dict) -> float:
        return row["wall_s"] - row["iterations"] * row["iter_s_median"]

    fixed = outside(ray1) - outside(plain)
    fixed_process = outside(ray1) - outside(rows["plain Runner, own process"])
    print(f"\n{args.model}, {args.epochs} epochs, {args.images} images of {args.size}px, batch 8, CPU, "
          f"median of {args.repeats} alternated runs\n")
    print(f"{'run':24} {'mAP':>6} {'wall s':>7} {'CPU s':>7} {'s/iter':>7} {'iters':>6}")
    for name, row in rows.items():
        print(f"{name:24} {row['mAP']:6.3f} {row['wall_s']:7.1f} {row['cpu_s']:7.1f} {row['iter_s_median']:7.3f} "
              f"{int(row['iterations']):6d}")
    print(f"\nper-iteration overhead of Ray Train: {100 * overhead:+.1f}% (each alternated pair: "
          f"{', '.join(f'{100 * p:+.0f}%' for p in pairs)})")
    print(f"fixed cost (wall outside the iterations) over the plain Runner: {fixed:.1f} s in this process, "
          f"{fixed_process:.1f} s over its own process")
    print("\nthe entry (Ray Train, 1 worker), step by step, s from the process's start (medians):")
    for step, at in ray1["timeline"].items():
        print(f"  {at:7.2f}  {step}")
    path = save("train", {"args": vars(args), "medians": rows, "runs": runs, "per_iteration_overhead": overhead,
                          "per_iteration_overhead_pairs": pairs, "fixed_startup_s": fixed,
                          "fixed_startup_over_plain_process_s": fixed_process})
    print(f"full numbers: {path}")


if __name__ == "__main__":
    main()
