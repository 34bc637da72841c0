"""Where the CPU steady rate stands between the network alone and the executor: how much of
the gap to the forward limit is the actor's own work per batch, and how much is Ray.

Three rates on the same stage (yolov8_n, one epoch, bench/infer_bench.py's) and images, each
round measuring all three within the same minute (this machine's speed drifts by ±10 %
between runs), medians of ``--rounds``:

- **forward**: bench/infer_bench.py's forward limit (``Stage.forward_limit``: the network
  alone on pre-made batches, BatchNorms folded, its best layout), each layout for ``--forward-s``;
- **actor's work, no Ray**: two threads in one process doing what each thread of a CPU
  model actor does per batch, with the executor's own code (``images.with_bytes``,
  ``Preprocess.samples``, ``Detector.forward``, the result rows), on the candidates;
- **entry steady**: the executor's entry (infer, one CPU model actor), its logged steady rate.

    .venv/bin/python bench/steady_gap.py [--images 2000] [--rounds 3]   # bench/results/steady_gap.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import save  # noqa: E402
from bench.infer_bench import BATCH, train_stage  # noqa: E402

#: the child process: the actor's work over the entry task's candidates, two threads, one JSON line out
CHILD = r'''
import json, sys, threading, time
import numpy as np, torch
from ray_app.infer.actors import Preprocess, detection_row
from ray_app.infer.images import with_bytes
from ray_app.infer.model import Detector, inference_pipeline, load_stage
from ray_app.infer.task import read_candidates
from ray_app.protocol.env import load_env
from ray_app.protocol.hyperparams import inference_params

env_file, batch = sys.argv[1], int(sys.argv[2])
torch.set_num_threads(1)  # as each thread of a CPU model actor
env = load_env(env_file)  # the entry's own task: its hyperparameters, model stage and candidates
params = inference_params(env)
bundle = load_stage(params, env.input.models_dir)
size = bundle.input_size
preprocess = Preprocess(inference_pipeline(bundle.cfg), size)
detector = Detector(bundle, "cpu")
paths = read_candidates(env)
batches = [paths[i:i + batch] for i in range(0, len(paths), batch)]

def one(chunk):
    data = with_bytes({"path": np.array(chunk, dtype=object)})
    samples = preprocess.samples(data["data"], list(data["error"]))
    [detection_row(*detections) for detections in detector.forward(samples).detections]  # the result rows

for chunk in batches[:3]:
    one(chunk)
todo, lock = list(batches), threading.Lock()
def worker():
    while True:
        with lock:
            if not todo:
                return
            chunk = todo.pop()
        one(chunk)
start = time.monotonic()
threads = [threading.Thread(target=worker) for _ in range(2)]
[t.start() for t in threads]
[t.join() for t in threads]
print(json.dumps({"images_per_s": len(paths) / (time.monotonic() - start)}))
'''


def actor_work(stage, count: int) -> float:
    """Images/s of the actor's work, no Ray, over the first ``count`` candidates of the entry's task."""
    env_file = stage.task("gap-work", count)
    proc = subprocess.run([sys.executable, "-c", CHILD, str(env_file), str(BATCH)], capture_output=True,
                          text=True, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])["images_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--forward-s", type=float, default=8, help="seconds of each layout of the forward limit")
    args = parser.parse_args()
    runs: dict[str, list[float]] = {"forward": [], "actor's work, no Ray": [], "entry steady": []}
    with tempfile.TemporaryDirectory(prefix="steady-gap-") as tmp:
        stage = train_stage(Path(tmp), args.images, args.size, False)
        for round_ in range(args.rounds):
            runs["entry steady"].append(stage.ours(f"gap-entry-{round_}", args.images)["steady_images_per_s"])
            runs["actor's work, no Ray"].append(actor_work(stage, args.images))
            runs["forward"].append(stage.forward_limit(args.forward_s)["images_per_s"])
            print(round_, {name: round(rates[-1], 1) for name, rates in runs.items()}, flush=True)
    medians = {name: round(statistics.median(rates), 1) for name, rates in runs.items()}
    forward = medians["forward"]
    print(f"\n{args.images} images of {args.size} px, yolov8_n, batches of {BATCH}, median of {args.rounds} rounds")
    for name, rate in medians.items():
        print(f"  {name:22} {rate:8.1f} images/s  {100 * rate / forward:5.1f} % of the forward limit")
    share = medians["entry steady"] / medians["actor's work, no Ray"]
    print(f"  the entry reaches {100 * share:.1f} % of the same work without Ray")
    print(save("steady_gap", {"images": args.images, "image_size": args.size, "batch": BATCH, "model": "yolov8_n",
                              "rounds": args.rounds, "median": medians, "runs": runs,
                              "of_forward": {k: round(v / forward, 3) for k, v in medians.items()},
                              "entry_of_no_ray": round(share, 3)}))


if __name__ == "__main__":
    main()
