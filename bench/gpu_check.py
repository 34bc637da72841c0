"""One GPU check: does the executor train and infer fast on one NVIDIA GPU? Through the entry.

    python bench/gpu_check.py                  # one NVIDIA GPU: writes bench/results/gpu.json
    python bench/gpu_check.py --device cpu     # the same steps, small, on the CPU (tests the command)

Steps, in this order (each result is written to the results file as soon as it is measured, so
a run cut short keeps what it measured; ``--deadline-s`` skips the steps that no longer fit):
1. **training**, ``--model`` on generated data: a plain mmengine Runner in fp32 (the original
   executor's loop, same config, same device), the entry in fp32 (``amp: false``) and the entry
   with AMP (``amp: true``). s/iteration is the median of the Runner's own timer in each
   (``ray_app.train.hooks.iteration_times``), data time beside it; the entry's start-up step by
   step (``bench/train_bench.py``'s ``TIMELINE``).
2. **inference**, a yolov8_n stage trained one epoch: the entry (infer) against the original loop
   (``init_detector`` + ``inference_detector`` one image at a time) at each ``--infer-images``,
   one whole process each; the entry's start-up step by step; the model's batched forward
   limit (``bench/infer_bench.py``'s ``FORWARD``); mining + infer in one pass (``--algorithm``).
3. **a NaN under AMP**: the entry with ``amp: true`` on a run that diverges after its first
   validation must end with 300201 and keep that stage (issue 14).
Targets on a GPU (issue 14): Ray Train's overhead <= 5 % per iteration; AMP >= 1.3x faster per
iteration than fp32; the inference steady rate >= 80 % of the batched forward; end to end not
slower than the original from 300 images (issue 16).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench.common import RESULTS, machine  # noqa: E402
from bench.infer_bench import compare, train_stage  # noqa: E402
from bench.scaling_bench import run_entry  # noqa: E402
from bench.train_bench import bench_config, executor, plain_runner  # noqa: E402
from ray_app.data.sample import make_dataset, write_task  # noqa: E402

#: the check's sizes on a GPU and, for testing the command, on the CPU
SIZES = {
    "cuda": dict(images=128, size=640, batch=32, epochs=4, workers=8, infer_images=[320, 2000], infer_size=256,
                 forward_s=10.0),
    "cpu": dict(images=16, size=64, batch=4, epochs=2, workers=0, infer_images=[24], infer_size=64, forward_s=2.0),
}


class Results:
    """The results file, rewritten after every step."""

    def __init__(self, path: Path, args: argparse.Namespace) -> None:
        self.path, self.data = path, {"machine": machine(), "args": vars(args), "steps": {}}
        self.start = time.monotonic()

    def keep(self, step: str, value: dict) -> None:
        self.data["steps"][step] = value
        self.data["elapsed_s"] = round(time.monotonic() - self.start, 1)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.data, indent=2, default=str) + "\n")
        print(f"[{self.data['elapsed_s']:6.1f} s] {step}: {json.dumps(value)[:400]}", flush=True)


def nan_after_a_stage(work: Path, data, config: dict) -> dict:
    """The entry on a run that diverges after its first validation (yolov5's scheduler raises
    the learning rate by ``lr_factor`` 1e12 along 2 epochs, as ``tests/test_training.py`` does
    on the CPU): with AMP on a GPU it must still end with 300201 and keep the first stage."""
    config = {**config, "model_name": "yolov5_n", "max_epochs": 2, "val_interval": 1,
              "cfg_options": "default_hooks.param_scheduler.lr_factor=1e12"}
    code, _, _ = run_entry(write_task(work, data, run_training=True, config=config))
    monitor = (work / "out" / "monitor.txt").read_text().splitlines()[0].split("\t")
    result = work / "out" / "models" / "result.yaml"
    stages = list(yaml.safe_load(result.read_text())["model_stages"]) if result.is_file() else []
    return {"returncode": code, "monitor": monitor[3:6], "stages_kept": stages,
            "met": code == 1 and monitor[4:5] == ["300201"] and stages == ["epoch_1"]}


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=list(SIZES), default="cuda")
    parser.add_argument("--model", default="yolov8_n")
    parser.add_argument("--out", type=Path, default=None, help="results file (default bench/results/gpu.json; "
                                                              "gpu_cpu.json with --device cpu)")
    parser.add_argument("--deadline-s", type=float, default=540, help="skip the steps that would start after this")
    parser.add_argument("--algorithm", default="aldd")
    for key, value in SIZES["cuda"].items():
        parser.add_argument(f"--{key.replace('_', '-')}", type=type(value) if not isinstance(value, list) else int,
                            nargs="+" if isinstance(value, list) else None, default=None,
                            help=f"default {value} on cuda, {SIZES['cpu'][key]} on cpu")
    args = parser.parse_args()
    for key, value in SIZES[args.device].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    gpu = args.device == "cuda"
    if gpu:
        import torch

        if not torch.cuda.is_available():
            sys.exit("gpu_check: no CUDA device is visible (use --device cpu to test the command)")
    results = Results(args.out or RESULTS / ("gpu.json" if gpu else "gpu_cpu.json"), args)

    def fits(step: str) -> bool:
        if time.monotonic() - results.start < args.deadline_s:
            return True
        results.keep(step, {"skipped": f"started after --deadline-s {args.deadline_s:g}"})
        return False

    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        work = Path(tmp)
        data = make_dataset(work / "data", n_train=args.images, n_val=16, n_candidates=0, image_size=args.size)
        config = {**bench_config(args.model, args.size, args.epochs), "samples_per_gpu": args.batch,
                  "workers_per_gpu": args.workers}
        device = {"gpu_id": "0"} if gpu else {}
        train = {}
        if fits("train plain Runner fp32"):
            train["plain"] = plain_runner(work / "plain", data, {**config, "amp": False}, 1, use_gpu=gpu)
            results.keep("train plain Runner fp32", train["plain"])
        for amp in (False, True):
            name = f"train entry {'AMP' if amp else 'fp32'}"
            if fits(name):
                train[name] = executor(work / name.replace(" ", "_"), data, {**config, **device, "amp": amp}, 1, 1)
                results.keep(name, train[name])

        if fits("inference stage"):
            stage = train_stage(work / "infer", max(args.infer_images), args.infer_size, gpu)
            results.keep("inference stage", {"model": "yolov8_n", "img_size": args.infer_size})
            for count in args.infer_images:
                if fits(f"infer {count}"):
                    results.keep(f"infer {count}", compare(stage, count, rounds=1)["median"])
                if count != args.infer_images[0]:
                    continue
                if fits("start-up timeline"):
                    timeline = stage.timeline(count)
                    results.keep("start-up timeline", {step: at for at, step in timeline.steps})
                    results.keep("start-up busy cores", {step: busy for (_, step), busy in
                                                         zip(timeline.steps, timeline.busy_cores)})
                    results.keep("model actor's start", timeline.actor)
                if fits("forward limit"):
                    results.keep("forward limit", stage.forward_limit(args.forward_s))
                if fits(f"mining {args.algorithm} + infer"):
                    results.keep(f"mining {args.algorithm} + infer",
                                 stage.ours("mining", count, also_infer=True, mining_algorithm=args.algorithm))

        if fits("train entry AMP, NaN after a stage"):  # last: a check of behaviour, not a figure
            results.keep("train entry AMP, NaN after a stage",
                         nan_after_a_stage(work / "nan", data, {**config, **device, "amp": True}))

    steps = results.data["steps"]
    plain, fp32, amp = (steps.get(k, {}) for k in ("train plain Runner fp32", "train entry fp32", "train entry AMP"))
    forward = steps.get("forward limit", {}).get("images_per_s")
    summary = {
        "ray_train_overhead_per_iteration": ratio(fp32.get("iter_s_median"), plain.get("iter_s_median")),
        "amp_speedup_per_iteration": ratio(fp32.get("iter_s_median"), amp.get("iter_s_median")),
    }
    print(f"\n{args.model} training, {args.images} images of {args.size} px, batch {args.batch}, "
          f"{args.epochs} epochs, {args.workers} loader workers, on {args.device}:")
    print(f"{'run':26}{'s/iter':>9}{'data s':>9}{'wall s':>9}{'mAP':>7}")
    for name, row in (("plain Runner fp32", plain), ("entry fp32", fp32), ("entry AMP", amp)):
        if row.get("iter_s_median"):
            print(f"{name:26}{row['iter_s_median']:9.4f}{row.get('data_s_median') or 0:9.4f}{row['wall_s']:9.1f}"
                  f"{row['mAP']:7.3f}")
    print(f"Ray Train per iteration: {summary['ray_train_overhead_per_iteration']} x the plain Runner "
          f"(target <= 1.05); AMP: {summary['amp_speedup_per_iteration']} x faster than fp32 (target >= 1.3)")
    if fp32.get("timeline"):
        print("the entry's fp32 training, step by step (s from its start): "
              + "; ".join(f"{at:.1f} {step}" for step, at in fp32["timeline"].items()))
    print(f"\ninference, yolov8_n at {args.infer_size} px, batch 8, on {args.device}:")
    print(f"{'images':>7} {'path':10}{'start-up s':>11}{'steady img/s':>14}{'end-to-end img/s':>18}")
    for count in args.infer_images:
        median = steps.get(f"infer {count}", {})
        for name, row in median.items():
            print(f"{count:>7} {name:10}{row['startup_s']:>11.1f}{row['steady_images_per_s']:>14.2f}"
                  f"{row['end_to_end_images_per_s']:>18.2f}")
        if median:
            summary[f"end_to_end_vs_original_{count}"] = ratio(median["ray_app"]["end_to_end_images_per_s"],
                                                                median["original"]["end_to_end_images_per_s"])
            summary[f"steady_of_forward_limit_{count}"] = ratio(median["ray_app"]["steady_images_per_s"], forward)
    mining = steps.get(f"mining {args.algorithm} + infer", {})
    if mining.get("steady_images_per_s"):
        print(f"{'':>7} {'mining+inf':10}{mining['startup_s']:>11.1f}{mining['steady_images_per_s']:>14.2f}"
              f"{mining['end_to_end_images_per_s']:>18.2f}")
    nan = steps.get("train entry AMP, NaN after a stage", {})
    if "met" in nan:
        summary["amp_nan_ends_300201_with_stage_kept"] = nan["met"]
    print(f"forward limit: {forward} images/s; summary: {json.dumps(summary)}")
    results.keep("summary", summary)
    print(f"results: {results.path}")


if __name__ == "__main__":
    main()
