"""Inference + mining throughput on one Ray node and on two (``ray.cluster_utils.Cluster``).

Both configurations join a cluster through ``ray_address``, as an operator's task would:
one node with 2 CPUs and 1 model actor, then two nodes with 2 CPUs each and 1 model actor
per node. The executor entry runs as YMIR runs it; the rate is read from its progress lines
(steady state: from the first result to the last, so model loading is not counted) and the
wall time of the whole task is kept beside it. Runs alternate; the median is reported.

On a machine with 2 physical cores the two "nodes" share the same cores, so this measures
what distribution costs, not what more hardware gains; docs/scaling.md projects to N GPUs.

    .venv/bin/python bench/scaling_bench.py [--images 300] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from ray.cluster_utils import Cluster

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import save  # noqa: E402
from ray_app.data.sample import make_dataset, write_task  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SIZE = 128
SUMMARY = re.compile(r"first result after ([\d.]+) s, then ([\d.]+) images/s")


def entry_env(env_file: Path) -> dict[str, str]:
    """The entry's environment: this one with the env file, a local Ray (no RAY_ADDRESS)."""
    env = {**os.environ, "YMIR_ENV_FILE": str(env_file), "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    return env


def run_entry(env_file: Path) -> tuple[int, str, float]:
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "ray_app"], env=entry_env(env_file), cwd=REPO, capture_output=True,
                          text=True)
    return proc.returncode, proc.stdout + proc.stderr, time.monotonic() - start


def entry_timeline(env_file: Path, markers: tuple[tuple[str, str], ...]) -> tuple[int, str, float, dict[str, float]]:
    """``run_entry`` that also times the entry step by step: for each ``(marker, step)`` the
    seconds from the process's start to the first line holding ``marker``, as each line reaches
    this process (the log's own timestamps have one-second resolution)."""
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "ray_app"], env=entry_env(env_file), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, seen = [], {}
    for line in proc.stdout:
        lines.append(line)
        for marker, step in markers:
            if step not in seen and marker in line:
                seen[step] = round(time.monotonic() - start, 2)
    code = proc.wait()
    return code, "".join(lines), time.monotonic() - start, seen


def steady_rate(log: str) -> float:
    """Images per second from the driver's first result to its last, as the entry logs it
    (``... first result after S s, then R images/s``), so start-up is not counted."""
    return float(SUMMARY.search(log).group(2))


def startup_s(log: str) -> float:
    """Seconds from the start of the pipeline (Ray start included) to the first result."""
    return float(SUMMARY.search(log).group(1))


def train_model(work: Path, data, size: int = SIZE, gpu: bool = False) -> tuple[Path, str, list[str]]:
    """yolov8_n trained one epoch at input ``size`` on ``data`` through the entry (the stage
    every inference benchmark uses): the models folder, the best stage and its files."""
    config = dict(model_name="yolov8_n", img_size=size, max_epochs=1, val_interval=1, samples_per_gpu=4,
                  workers_per_gpu=0, cpu_num_workers=1, max_keep_checkpoints=1, gpu_id="0" if gpu else "")
    code, log, _ = run_entry(write_task(work / "train", data, run_training=True, config=config))
    assert code == 0, log[-3000:]
    models = work / "train" / "out" / "models"
    result = yaml.safe_load((models / "result.yaml").read_text())
    best = result["best_stage_name"]
    return models, best, result["model_stages"][best]["files"]


def measure(work: Path, data, models: Path, files: list[str], nodes: int, tag: str) -> dict:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    for _ in range(nodes - 1):
        cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    try:
        config = dict(model_params_path=files, img_size=SIZE, samples_per_gpu=8, cpu_num_workers=nodes,
                      mining_algorithm="entropy", ray_address=cluster.address)
        env_file = write_task(work / tag, data, run_mining=True, run_infer=True, models_dir=models, config=config)
        code, log, wall = run_entry(env_file)
    finally:
        cluster.shutdown()
    assert code == 0, log[-3000:]
    worked = re.search(r"model actors ran on (\d+) node", log)
    return {"nodes": nodes, "steady_images_per_s": round(steady_rate(log), 2), "wall_s": round(wall, 1),
            "nodes_that_worked": int(worked.group(1))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="scaling-bench-") as tmp:
        work = Path(tmp)
        data = make_dataset(work / "data", n_train=32, n_val=8, n_candidates=args.images, image_size=SIZE, seed=5)
        models, best, stage_files = train_model(work, data)
        files = [f"{best}/{f}" for f in stage_files]
        runs: dict[int, list[dict]] = {1: [], 2: []}
        for round_ in range(args.rounds):
            for nodes in (1, 2) if round_ % 2 == 0 else (2, 1):
                runs[nodes].append(measure(work, data, models, files, nodes, f"r{round_}-n{nodes}"))
                print(runs[nodes][-1], flush=True)
        image_bytes = [Path(p).stat().st_size for p in data.candidate_index.read_text().split()]
    summary = {n: {"steady_images_per_s": statistics.median(r["steady_images_per_s"] for r in rs),
                   "wall_s": statistics.median(r["wall_s"] for r in rs)} for n, rs in runs.items()}
    network = {"mean_image_file_bytes": round(statistics.mean(image_bytes)),
               "preprocessed_input_bytes": 3 * SIZE * SIZE}
    print(f"\n{'nodes':>5} {'images/s (steady)':>18} {'task wall s':>12}")
    for n, row in summary.items():
        print(f"{n:>5} {row['steady_images_per_s']:>18.2f} {row['wall_s']:>12.1f}")
    print(f"per image over the network: file {network['mean_image_file_bytes']} B, "
          f"preprocessed input {network['preprocessed_input_bytes']} B")
    path = save("scaling", {"images": args.images, "img_size": SIZE, "model": "yolov8_n", "rounds": runs,
                            "median": summary, "network_per_image": network})
    print(f"full results: {path}")


if __name__ == "__main__":
    main()
