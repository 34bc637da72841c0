"""Inference and mining throughput: the executor's Ray Data path against the original design
and against the model's own batched forward pass.

- **ray_app**: the executor entry (``python -m ray_app``, infer only), local Ray, default
  ``cpu_num_workers: 1``: read -> preprocess actor -> model actor, batched.
- **original**: what the original mmyolo executor does: one process, ``init_detector`` then
  ``inference_detector`` on one image at a time (decode, pipeline, forward, NMS in turn).
- **forward limit**: the model's ``_forward`` (backbone, neck, head; no NMS, no I/O) on random
  pre-made tensors of the same batch size, in one process with every core.

Same stage (yolov8_n trained one epoch on generated data), same images, same machine;
ray_app and original runs alternate; medians are reported. "steady" excludes start-up (Ray,
model loading); "end to end" is the wall time of the whole process over the image count.
Mining: every algorithm through the entry (mining only), one run each.

    .venv/bin/python bench/infer_bench.py [--images 320] [--size 256] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import save  # noqa: E402
from bench.scaling_bench import run_entry, steady_rate  # noqa: E402
from ray_app.data.sample import make_dataset, write_task  # noqa: E402

BATCH = 8
#: forward passes per image for each mining algorithm (CALD: the image, flipped, brighter)
PASSES = {"random": 1, "entropy": 1, "aldd": 1, "cald": 3}

ORIGINAL = r'''
import sys, time, json
t0 = time.monotonic()
from mmdet.apis import inference_detector, init_detector
from mmyolo.utils import register_all_modules
register_all_modules()
config, weights, index = sys.argv[1:4]
model = init_detector(config, weights, device="cpu")
images = open(index).read().split()
t1 = time.monotonic()
for path in images:
    inference_detector(model, path)
t2 = time.monotonic()
print(json.dumps({"load_s": t1 - t0, "loop_s": t2 - t1}))
'''

FORWARD = r'''
import sys, time, json, torch
from mmdet.apis import init_detector
from mmyolo.utils import register_all_modules
register_all_modules()
config, weights, size, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
model = init_detector(config, weights, device="cpu").eval()
x = torch.rand(batch, 3, size, size)
with torch.no_grad():
    for _ in range(3):
        model._forward(x)
    n, start = 0, time.monotonic()
    while time.monotonic() - start < 20:
        model._forward(x)
        n += batch
print(json.dumps({"images_per_s": n / (time.monotonic() - start)}))
'''


def python_json(code: str, *args: str) -> dict:
    import json

    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "wall_s": time.monotonic() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=320)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    import yaml

    with tempfile.TemporaryDirectory(prefix="infer-bench-") as tmp:
        work = Path(tmp)
        data = make_dataset(work / "data", n_train=32, n_val=8, n_candidates=args.images, image_size=args.size,
                            seed=11)
        config = dict(model_name="yolov8_n", img_size=args.size, max_epochs=1, val_interval=1, samples_per_gpu=4,
                      workers_per_gpu=0, cpu_num_workers=1, max_keep_checkpoints=1)
        code, log, _ = run_entry(write_task(work / "train", data, run_training=True, config=config))
        assert code == 0, log[-3000:]
        models = work / "train" / "out" / "models"
        best = yaml.safe_load((models / "result.yaml").read_text())["best_stage_name"]
        files = yaml.safe_load((models / "result.yaml").read_text())["model_stages"][best]["files"]
        weights = str(models / best / next(f for f in files if f.endswith(".pth")))
        cfg_file = str(models / best / next(f for f in files if f.endswith("_config.py")))

        def ours(tag: str, **extra) -> dict:
            task = dict(model_params_path=[f"{best}/{f}" for f in files], img_size=args.size,
                        samples_per_gpu=BATCH, cpu_num_workers=1, **extra)
            mining = "mining_algorithm" in extra
            env_file = write_task(work / tag, data, run_mining=mining, run_infer=not mining, models_dir=models,
                                  config=task)
            code, log, wall = run_entry(env_file)
            assert code == 0, log[-3000:]
            return {"steady_images_per_s": round(steady_rate(log), 2),
                    "end_to_end_images_per_s": round(args.images / wall, 2), "wall_s": round(wall, 1)}

        def original() -> dict:
            r = python_json(ORIGINAL, cfg_file, weights, str(data.candidate_index))
            return {"steady_images_per_s": round(args.images / r["loop_s"], 2),
                    "end_to_end_images_per_s": round(args.images / r["wall_s"], 2), "wall_s": round(r["wall_s"], 1)}

        runs: dict[str, list[dict]] = {"ray_app": [], "original": []}
        for round_ in range(args.rounds):
            order = ("ray_app", "original") if round_ % 2 == 0 else ("original", "ray_app")
            for name in order:
                runs[name].append(ours(f"infer-{round_}") if name == "ray_app" else original())
                print(name, runs[name][-1], flush=True)
        forward = python_json(FORWARD, cfg_file, weights, str(args.size), str(BATCH))
        mining = {}
        for algorithm in PASSES:
            mining[algorithm] = {**ours(f"mining-{algorithm}", mining_algorithm=algorithm),
                                 "forward_passes_per_image": PASSES[algorithm]}
            print("mining", algorithm, mining[algorithm], flush=True)

    median = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in runs.items()}
    limit = round(forward["images_per_s"], 2)
    ratio = median["ray_app"]["end_to_end_images_per_s"] / median["original"]["end_to_end_images_per_s"]
    steady_ratio = median["ray_app"]["steady_images_per_s"] / median["original"]["steady_images_per_s"]
    print(f"\n{'':14}{'steady img/s':>14}{'end-to-end img/s':>18}")
    for name, row in median.items():
        print(f"{name:14}{row['steady_images_per_s']:>14.2f}{row['end_to_end_images_per_s']:>18.2f}")
    print(f"{'forward limit':14}{limit:>14.2f}")
    print(f"ray_app / original: steady {steady_ratio:.2f}x, end to end {ratio:.2f}x; "
          f"steady / forward limit {median['ray_app']['steady_images_per_s'] / limit:.0%}")
    for algorithm, row in mining.items():
        print(f"mining {algorithm:8} {row['steady_images_per_s']:>8.2f} img/s steady "
              f"({row['forward_passes_per_image']} forward pass(es) per image)")
    path = save("infer", {"images": args.images, "img_size": args.size, "batch": BATCH, "model": "yolov8_n",
                          "cpu_threads": os.cpu_count(), "rounds": runs, "median": median,
                          "forward_limit_images_per_s": limit, "ratio_end_to_end": round(ratio, 3),
                          "ratio_steady": round(steady_ratio, 3), "mining": mining})
    print(f"full results: {path}")


if __name__ == "__main__":
    main()
