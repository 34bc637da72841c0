"""`make demo`: train, then mine + infer with the trained best stage, on a generated sample,
with a local Ray -- the way the YMIR platform would chain the three tasks."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from ray_app.data.sample import make_dataset, write_task


def run(env_file: Path, what: str) -> None:
    print(f"\n=== {what}: python -m ray_app (YMIR_ENV_FILE={env_file})", flush=True)
    proc = subprocess.run([sys.executable, "-m", "ray_app"], env={**os.environ, "YMIR_ENV_FILE": str(env_file)})
    monitor = (env_file.parent.parent / "out" / "monitor.txt").read_text().splitlines()[0].split("\t")
    if proc.returncode != 0:
        sys.exit(f"{what} failed: monitor.txt says {monitor[3:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work", default="work/demo", help="folder for the sample and the task workspaces")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--model", default="yolov8_n")
    args = parser.parse_args()
    work = Path(args.work).resolve()
    shutil.rmtree(work, ignore_errors=True)
    data = make_dataset(work / "data", n_train=48, n_val=16, n_candidates=32, image_size=128)
    workers = min(2, os.cpu_count() or 1)

    train_env = write_task(work / "training", data, run_training=True, config=dict(
        model_name=args.model, img_size=128, max_epochs=args.epochs, samples_per_gpu=4, workers_per_gpu=0,
        cpu_num_workers=workers, val_interval=5, learning_rate=0.01))
    run(train_env, "training")
    models = work / "training" / "out" / "models"
    result = yaml.safe_load((models / "result.yaml").read_text())
    best = result["best_stage_name"]

    # The platform hands the chosen stage on as STAGE/FILE under the next task's models_dir.
    files = [f"{best}/{f}" for f in result["model_stages"][best]["files"]]
    mine_env = write_task(work / "mining-infer", data, run_mining=True, run_infer=True, models_dir=models,
                          config=dict(model_params_path=files, img_size=128, samples_per_gpu=8,
                                      cpu_num_workers=1, mining_algorithm="entropy"))
    run(mine_env, "mining + infer")

    out = work / "mining-infer" / "out"
    ranked = [line.split("\t") for line in (out / "result.tsv").read_text().splitlines()]
    detections = json.loads((out / "infer-result.json").read_text())["detection"]
    boxes = sorted(len(v["boxes"]) for v in detections.values())
    print("\n=== summary")
    print(f"training:  {models / 'result.yaml'}  best stage {best}, COCO bbox mAP {result['mAP']:.3f}")
    print(f"mining:    {out / 'result.tsv'}  top 5 of {len(ranked)}:")
    for path, score in ranked[:5]:
        print(f"             {float(score):8.4f}  {Path(path).name}")
    print(f"infer:     {out / 'infer-result.json'}  {sum(boxes)} boxes on {len(boxes)} images "
          f"(min {boxes[0]}, median {boxes[len(boxes) // 2]}, max {boxes[-1]} per image)")


if __name__ == "__main__":
    main()
