"""Where Ray Train's per-iteration overhead comes from on a small machine.

Trains the plain mmengine Runner of ``train_bench.py`` (no Ray in its process) twice,
alternated: alone, and beside an idle local Ray running a one-worker ``TorchTrainer`` whose
worker only sleeps (the same Ray processes a training task has: GCS, raylet, the Train
controller and its helper actors). For each run it reports the Runner's median time per
iteration and, from ``/proc/self/task/*/schedstat``, how often the Runner's threads were
switched out and how long they waited for a CPU. Every Ray worker process wakes every 10 ms
(the core worker's signal check) and each wake-up on a busy core preempts a torch thread; if
the Runner beside an idle Ray is as slow as inside Ray Train, the overhead belongs to sharing
the cores with Ray's processes, not to the wrapper.

    .venv/bin/python bench/train_contention.py     # writes bench/results/train_contention.json
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save  # noqa: E402
from train_bench import bench_config, plain_runner  # noqa: E402

from ray_app.data.sample import make_dataset  # noqa: E402

#: a local Ray with a one-worker TorchTrainer that sleeps; touches READY once the worker runs
IDLE_RAY = """
import sys, time
from pathlib import Path
import ray
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
ready, storage = sys.argv[1], sys.argv[2]
ray.init(address="local", num_cpus=2, include_dashboard=True, log_to_driver=False)
def sleep(_):
    Path(ready).touch()
    time.sleep(3600)
TorchTrainer(sleep, scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 2}),
             run_config=RunConfig(storage_path=storage)).fit()
"""


def thread_stats() -> dict[str, tuple[int, int, int]]:
    """(ns on a CPU, ns waiting for one, times scheduled) of each thread of this process."""
    stats = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            run, wait, slices = map(int, (task / "schedstat").read_text().split())
        except OSError:
            continue
        stats[task.name] = (run, wait, slices)
    return stats


def timed_run(work: Path, data, config: dict) -> dict:
    """The plain Runner, with its threads' scheduling over the whole run."""
    before, start = thread_stats(), time.perf_counter()
    result = plain_runner(work, data, config, log_interval=10)
    after, wall = thread_stats(), time.perf_counter() - start
    delta = [tuple(a - b for a, b in zip(after[t], before.get(t, (0, 0, 0)))) for t in after]
    return {"iter_s_median": result["iter_s_median"], "wall_s": wall,
            "switches_per_s": sum(d[2] for d in delta) / wall,
            "cpu_wait_share": sum(d[1] for d in delta) / max(sum(d[0] + d[1] for d in delta), 1)}


def beside_idle_ray(work: Path, data, config: dict) -> dict:
    """``timed_run`` while a local Ray with an idle TorchTrainer runs in another process."""
    ready = work / "READY"
    ray_proc = subprocess.Popen([sys.executable, "-c", IDLE_RAY, str(ready), str(work / "ray")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            if time.monotonic() > deadline or ray_proc.poll() is not None:
                sys.exit("the idle Ray did not start")
            time.sleep(0.5)
        time.sleep(3)  # let the controller settle into its steady polling
        return timed_run(work / "runner", data, config)
    finally:
        ray_proc.send_signal(signal.SIGINT)  # the driver shuts its Ray down on the way out
        try:
            ray_proc.wait(timeout=60)
        finally:
            try:  # and anything of it left: its own process group, no other Ray on the machine
                os.killpg(ray_proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    config = bench_config()
    runs: dict[str, list[dict]] = {"alone": [], "beside an idle Ray": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = make_dataset(work / "data", n_train=64, n_val=32, n_candidates=0, image_size=128)
        for repeat in range(args.repeats):  # alternated
            runs["alone"].append(timed_run(work / f"alone{repeat}", data, config))
            runs["beside an idle Ray"].append(beside_idle_ray(work / f"ray{repeat}", data, config))
    rows = {name: {key: statistics.median(r[key] for r in results) for key in results[0]}
            for name, results in runs.items()}
    print(f"\nplain Runner (yolov5_n, 160 iterations), median of {args.repeats} alternated runs\n")
    print(f"{'':20} {'s/iter':>7} {'switches/s':>11} {'waiting for a CPU':>18}")
    for name, row in rows.items():
        print(f"{name:20} {row['iter_s_median']:7.3f} {row['switches_per_s']:11.0f} "
              f"{100 * row['cpu_wait_share']:17.1f}%")
    slower = rows["beside an idle Ray"]["iter_s_median"] / rows["alone"]["iter_s_median"] - 1
    print(f"\nbeside an idle Ray: {100 * slower:+.1f}% per iteration")
    path = save("train_contention", {"medians": rows, "runs": runs, "slower_beside_ray": slower})
    print(f"full numbers: {path}")


if __name__ == "__main__":
    main()
