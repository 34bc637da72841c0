"""Inference and mining throughput: the executor's Ray Data path against the original design
and against the model's own batched forward pass.

- **ray_app**: the executor entry (``python -m ray_app``, infer only), local Ray, default
  ``cpu_num_workers: 1``: read tasks -> one CPU model actor that decodes its own images and
  runs one batch per CPU side by side (``--gpu``: a preprocessing pool and a GPU actor).
- **original**: what the original mmyolo executor does: one process, ``init_detector`` then
  ``inference_detector`` on one image at a time (decode, pipeline, forward, NMS in turn).
- **forward limit**: the model's ``_forward`` (backbone, neck, head; no NMS, no I/O) on random
  pre-made tensors of the same batch size, in one process, the best of four layouts: one
  stream of batches on every torch thread, or one stream per core on one thread each, with
  tensors in the default (NCHW) or, on the CPU, channels-last order, or (on the CPU) one
  stream per core through ONNX Runtime on the graph the CPU model actors export
  (``cpu_runtime: onnxruntime``, their default since 2026-11-27; before that the limit was
  torch's alone). The model has its
  BatchNorms folded into the convolutions and runs channels-last on the CPU, as the executor
  runs it (the original loop runs it unfolded and NCHW, as the original executor did).

Same stage (yolov8_n trained one epoch on generated data), same images, same machine;
ray_app and original runs alternate; medians are reported. "steady" is from the first result
to the last (the entry logs it); "start-up" is the time to the first result; "end to end" is
the wall time of the whole process over the image count. Each ``--images`` count is measured
separately (the candidates are the first N of one generated set). Mining: every algorithm
through the entry (mining only), one run each, on the first count.

    .venv/bin/python bench/infer_bench.py [--images 320 2000] [--size 256] [--rounds 3] [--gpu]
    .venv/bin/python bench/infer_bench.py --images 320 --timeline [--rounds 3]   # the start-up, step by step (startup_timeline.json)
    .venv/bin/python bench/infer_bench.py --runtime-ab --algorithms aldd   # cpu_runtime torch vs onnxruntime

Results go to bench/results/infer.json (infer_gpu.json with --gpu).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import BusyCores, save  # noqa: E402
from bench.scaling_bench import entry_timeline, run_entry, startup_s, steady_rate, train_model  # noqa: E402
from ray_app.data.sample import make_dataset, write_task  # noqa: E402
from ray_app.infer.actors import start_up  # noqa: E402
from ray_app.mining import ALGORITHMS  # noqa: E402

BATCH = 8
#: forward passes per image for each mining algorithm: the image, plus the algorithm's extra passes
PASSES = {name: 1 + len(algorithm.augmentations) for name, algorithm in ALGORITHMS.items()}

ORIGINAL = r'''
import sys, time, json
t0 = time.monotonic()
from mmdet.apis import inference_detector, init_detector
from mmyolo.utils import register_all_modules
register_all_modules()
config, weights, index, device = sys.argv[1:5]
model = init_detector(config, weights, device=device)
images = open(index).read().split()
t1 = time.monotonic()
for path in images:
    inference_detector(model, path)
t2 = time.monotonic()
print(json.dumps({"load_s": t1 - t0, "loop_s": t2 - t1}))
'''

FORWARD = r'''
import sys, time, json, threading, torch
from mmdet.apis import init_detector
from mmyolo.utils import register_all_modules
register_all_modules()
config, weights, size, batch, device = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
seconds = float(sys.argv[6]) if len(sys.argv) > 6 else 15.0
from mmcv.cnn import fuse_conv_bn
model = fuse_conv_bn(init_detector(config, weights, device=device).eval())  # as the executor runs it
cores = torch.get_num_threads()

def rate(streams, layout=torch.contiguous_format, forward=None):
    forward = forward or model._forward
    model.to(memory_format=layout)
    x = torch.rand(batch, 3, size, size, device=device).contiguous(memory_format=layout)
    counts = [0] * streams
    def stream(k):
        with torch.no_grad():
            start = time.monotonic()
            while time.monotonic() - start < seconds:
                forward(x)
                if device != "cpu":
                    torch.cuda.synchronize()
                counts[k] += batch
    with torch.no_grad():
        for _ in range(3):
            forward(x)
    start = time.monotonic()
    threads = [threading.Thread(target=stream, args=(k,)) for k in range(streams)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    return sum(counts) / (time.monotonic() - start)

result = {"one_stream_all_threads": rate(1)}
if device == "cpu" and cores > 1:
    torch.set_num_threads(1)
    result["one_stream_per_core"] = rate(cores)
    result["one_stream_per_core_channels_last"] = rate(cores, torch.channels_last)  # cpu_runtime: torch
    # cpu_runtime: onnxruntime (the default): the actor's own graph, one ONNX Runtime thread per stream
    from ray_app.infer.runtimes import OnnxNetwork
    model.to(memory_format=torch.contiguous_format)
    network = OnnxNetwork(model, size)
    result["one_stream_per_core_onnxruntime"] = rate(cores, forward=lambda x: network(x, False))
result["images_per_s"] = max(result.values())
print(json.dumps(result))
'''


def python_json(code: str, *args: str) -> dict:
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "wall_s": time.monotonic() - start}


def crossover(ours: dict, original: dict, count: int) -> float | None:
    """Candidates from which ray_app's whole task is shorter than the original's (``None``:
    never). Each process's fixed cost is its wall time less ``count`` images at its steady
    rate (imports, model loading, Ray's start and stop)."""
    per_image = 1 / original["steady_images_per_s"] - 1 / ours["steady_images_per_s"]
    fixed = [run["wall_s"] - count / run["steady_images_per_s"] for run in (ours, original)]
    return None if per_image <= 0 else round(max(0.0, fixed[0] - fixed[1]) / per_image)


#: the entry's log lines that mark its start-up (``--timeline``), and what each one means;
#: ``{n}`` is the image count. Sorted by when they appear: the order differs between versions.
TIMELINE = (("starting a local Ray", "driver asks Ray to start"),
            ("INFO ray_app.infer.model: model: ", "driver has the model stage (torch, mmengine imported)"),
            ("local Ray up in ", "Ray is up (ray.init returned)"),
            ("Starting execution of Dataset", "the pipeline starts"),
            ("preprocessing actor ready", "first preprocessing actor ready (GPU layout)"),
            ("model actor ready", "model actor ready (its process, imports, model)"),
            (": first results after ", "first results at the driver"),
            ("task done", "all images done, outputs written"))

#: the model actor's ready line: its start-up, step by step (``actors.start_up``: "process 1.4 s, imports 1.3 s, mmdet/mmyolo 0.9 s, ...")
ACTOR_READY = re.compile(r"model actor ready on node \w+ \([^)]*\): (.*)")
ACTOR_STEP = re.compile(r"([^,]+) ([\d.]+) s")


def _since(steps: list[tuple[float, str]]) -> list[float]:
    """Each step's start: the time of the step before it (0 for the first)."""
    return [0.0] + [at for at, _ in steps[:-1]]


@dataclasses.dataclass
class Timeline:
    """An infer task's start-up, step by step (``Stage.timeline``)."""

    #: (seconds from the process's start, step), in the order they came, the process's end last
    steps: list[tuple[float, str]]
    #: per step: the machine's busy cores (of ``os.cpu_count()``) from the step before to this one
    busy_cores: list[float | None]
    #: the model actor's own start-up from its ready line: step -> seconds
    actor: dict[str, float]

    @staticmethod
    def median(runs: list[Timeline]) -> Timeline:
        """Each step's median over ``runs`` (the steps the first run saw, in its order)."""
        def med(values):
            values = [v for v in values if v is not None]
            return round(statistics.median(values), 2) if values else None

        steps = [step for _, step in runs[0].steps]
        at = [{step: (t, busy) for (t, step), busy in zip(run.steps, run.busy_cores)} for run in runs]
        return Timeline([(med(a[step][0] for a in at if step in a), step) for step in steps],
                        [med(a[step][1] for a in at if step in a) for step in steps],
                        {k: med(run.actor.get(k) for run in runs) for k in runs[0].actor})

    def table(self) -> str:
        rows = [f"{at:7.2f} (+{at - before:5.2f})  {f'{busy:.2f}' if busy is not None else '-':>5}  {step}"
                for (at, step), before, busy in zip(self.steps, _since(self.steps), self.busy_cores)]
        actor = start_up(list(self.actor.items()))
        return "\n".join([f"{'s':>7} {'(+step)':>8}  {'cores':>5}  step (cores: busy, of {os.cpu_count()})", *rows,
                          f"the model actor's start: {actor or 'not in its ready line'}"])


@dataclasses.dataclass
class Stage:
    """A trained yolov8_n stage and generated candidates to run it on, for every measurement."""

    work: Path
    data: object  # SampleData
    models: Path
    best: str
    files: list[str]
    size: int  # the model's input
    gpu: bool

    @property
    def device(self) -> str:
        return "cuda:0" if self.gpu else "cpu"

    def file(self, suffix: str) -> str:
        return str(self.models / self.best / next(f for f in self.files if f.endswith(suffix)))

    def subset(self, count: int):
        """The data with only the first ``count`` candidates."""
        index = self.work / f"candidates-{count}.tsv"
        index.write_text("\n".join(self.data.candidate_index.read_text().splitlines()[:count]) + "\n")
        return dataclasses.replace(self.data, candidate_index=index)

    def task(self, tag: str, count: int, also_infer: bool = False, **extra) -> Path:
        """An infer task over ``count`` candidates; a mining one when ``mining_algorithm`` is
        given (with infer in the same pass when ``also_infer``)."""
        config = dict(model_params_path=[f"{self.best}/{f}" for f in self.files], img_size=self.size,
                      samples_per_gpu=BATCH, cpu_num_workers=1, gpu_id="0" if self.gpu else "", **extra)
        mining = "mining_algorithm" in extra
        return write_task(self.work / tag, self.subset(count), run_mining=mining, run_infer=not mining or also_infer,
                          models_dir=self.models, config=config)

    def ours(self, tag: str, count: int, also_infer: bool = False, **extra) -> dict:
        """The entry, one whole process."""
        code, log, wall = run_entry(self.task(tag, count, also_infer, **extra))
        assert code == 0, log[-3000:]
        return {"steady_images_per_s": round(steady_rate(log), 2), "startup_s": round(startup_s(log), 2),
                "end_to_end_images_per_s": round(count / wall, 2), "wall_s": round(wall, 1)}

    def original(self, count: int) -> dict:
        """The original executor's loop, one whole process."""
        r = python_json(ORIGINAL, self.file("_config.py"), self.file(".pth"),
                        str(self.subset(count).candidate_index), self.device)
        return {"steady_images_per_s": round(count / r["loop_s"], 2), "startup_s": round(r["load_s"], 2),
                "end_to_end_images_per_s": round(count / r["wall_s"], 2), "wall_s": round(r["wall_s"], 1)}

    def forward_limit(self, seconds: float = 15) -> dict:
        """The model's batched forward rate (``FORWARD``), each layout run for ``seconds``."""
        return python_json(FORWARD, self.file("_config.py"), self.file(".pth"), str(self.size), str(BATCH),
                           self.device, str(seconds))

    def timeline(self, count: int) -> Timeline:
        """The entry's start-up, step by step: seconds from the process's start to each
        ``TIMELINE`` line, as each line reaches this process (the log's own timestamps have
        one-second resolution), then the process's end; how busy the machine was in each step;
        and the model actor's own steps from its ready line."""
        with BusyCores() as busy:
            code, log, wall, seen = entry_timeline(self.task(f"timeline-{count}", count),
                                                   tuple((marker.format(n=count), step) for marker, step in TIMELINE))
        assert code == 0, log[-3000:]
        steps = sorted((at, step) for step, at in seen.items()) + [(round(wall, 2), "process ended")]
        ready = ACTOR_READY.search(log)
        actor = {step.strip(): float(s) for step, s in ACTOR_STEP.findall(ready.group(1))} if ready else {}
        return Timeline(steps, [busy.between(before, at) for (at, _), before in zip(steps, _since(steps))], actor)


def train_stage(work: Path, images: int, size: int, gpu: bool, image_size: int | None = None) -> Stage:
    """yolov8_n trained one epoch at input ``size`` on generated data, and ``images`` generated
    candidates of ``image_size`` px (default: ``size``)."""
    data = make_dataset(work / "data", n_train=32, n_val=8, n_candidates=images, image_size=image_size or size,
                        seed=11)
    models, best, files = train_model(work, data, size, gpu)
    return Stage(work, data, models, best, files, size, gpu)


def compare(stage: Stage, count: int, rounds: int) -> dict:
    """ray_app against the original at ``count`` images, alternated ``rounds`` times; medians."""
    runs: dict[str, list[dict]] = {"ray_app": [], "original": []}
    for round_ in range(rounds):
        order = ("ray_app", "original") if round_ % 2 == 0 else ("original", "ray_app")
        for name in order:
            runs[name].append(stage.ours(f"infer-{count}-{round_}", count) if name == "ray_app"
                              else stage.original(count))
            print(count, name, runs[name][-1], flush=True)
    median = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in runs.items()}
    return {"rounds": runs, "median": median}


def runtime_ab(stage: Stage, args: argparse.Namespace) -> None:
    """The entry with ``cpu_runtime: torch`` against ``onnxruntime`` (``--runtime-ab``): infer
    at each ``--images`` count, then mining with ``--algorithms``'s first score, the two
    runtimes alternated ``--rounds`` times; medians to ``runtime_ab.json``."""
    tasks = [(f"infer {count}", count, {}) for count in args.images]
    if args.algorithms:
        tasks.append((f"mining {args.algorithms[0]} {args.images[0]}", args.images[0],
                      {"mining_algorithm": args.algorithms[0]}))
    results = {}
    for label, count, extra in tasks:
        runs: dict[str, list[dict]] = {"torch": [], "onnxruntime": []}
        for round_ in range(args.rounds):
            for runtime in (("torch", "onnxruntime") if round_ % 2 == 0 else ("onnxruntime", "torch")):
                runs[runtime].append(stage.ours(f"ab-{label.replace(' ', '-')}-{round_}-{runtime}", count,
                                                cpu_runtime=runtime, **extra))
                print(label, runtime, runs[runtime][-1], flush=True)
        median = {name: {k: statistics.median(r[k] for r in rows) for k in rows[0]} for name, rows in runs.items()}
        results[label] = {"median": median, "runs": runs}
    print(f"\n{'task':24}{'runtime':>12}{'start-up s':>11}{'steady img/s':>14}{'end-to-end img/s':>18}")
    for label, result in results.items():
        for name, row in result["median"].items():
            print(f"{label:24}{name:>12}{row['startup_s']:>11.1f}{row['steady_images_per_s']:>14.2f}"
                  f"{row['end_to_end_images_per_s']:>18.2f}")
    print(save("runtime_ab", {"images": args.images, "image_size": args.size, "img_size": args.input or args.size,
                              "batch": BATCH, "model": "yolov8_n", "rounds": args.rounds, "results": results}))


def mining_variants(algorithms: list[str], diversity: float) -> dict[str, dict]:
    """Name -> the mining task's config: each algorithm, and entropy at ``diversity`` when > 0."""
    variants = {name: {"mining_algorithm": name} for name in algorithms}
    if diversity > 0:
        variants[f"entropy+diversity {diversity:g}"] = {"mining_algorithm": "entropy", "diversity": diversity}
    return variants


def mining_rates(stage: Stage, args: argparse.Namespace) -> None:
    """Each mining score through the entry (mining only) on the first ``--images`` count,
    ``--rounds`` runs each with the scores alternated; the medians to ``mining.json``."""
    variants = mining_variants(args.algorithms, args.diversity)
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    for round_ in range(args.rounds):
        for name, config in variants.items():
            runs[name].append(stage.ours(f"mining-{len(runs[name])}-{name.split()[0]}", args.images[0], **config))
            print(round_, name, runs[name][-1], flush=True)
    medians = {name: {key: statistics.median(r[key] for r in rows) for key in rows[0]} for name, rows in runs.items()}
    for name, row in medians.items():
        print(f"mining {name:24} {row['steady_images_per_s']:>8.2f} img/s steady, wall {row['wall_s']:.1f} s")
    print(save("mining_gpu" if args.gpu else "mining", {
        "images": args.images[0], "image_size": args.size, "img_size": args.input or args.size, "batch": BATCH,
        "model": "yolov8_n", "rounds": args.rounds, "passes": PASSES, "median": medians, "runs": runs}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, nargs="+", default=[320, 2000])
    parser.add_argument("--size", type=int, default=256, help="the generated images' size (px)")
    parser.add_argument("--input", type=int, default=0, help="the model's input size (default: --size)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--algorithms", nargs="*", default=list(PASSES), choices=list(PASSES),
                        help="mining algorithms to measure (default: all; none: skip mining)")
    parser.add_argument("--mining-only", action="store_true",
                        help="only the mining rates: every --algorithms score (and entropy with --diversity), "
                             "--rounds runs each, alternated, medians to mining.json")
    parser.add_argument("--diversity", type=float, default=0.5,
                        help="with --mining-only: also entropy at this diversity (0: not)")
    parser.add_argument("--gpu", action="store_true", help="ray_app with gpu_id 0, the others on cuda:0")
    parser.add_argument("--timeline", action="store_true",
                        help="only print the entry's start-up, step by step, at the first --images count")
    parser.add_argument("--runtime-ab", action="store_true",
                        help="only the entry with cpu_runtime torch against onnxruntime, alternated (runtime_ab.json)")
    args = parser.parse_args()

    device = "cuda:0" if args.gpu else "cpu"
    with tempfile.TemporaryDirectory(prefix="infer-bench-") as tmp:
        stage = train_stage(Path(tmp), max(args.images), args.input or args.size, args.gpu, args.size)
        if args.timeline:
            runs = []
            for round_ in range(args.rounds):
                runs.append(stage.timeline(args.images[0]))
                print(f"\nthe entry's start-up, {args.images[0]} images, run {round_ + 1} of {args.rounds} "
                      "(seconds from the process's start):")
                print(runs[-1].table(), flush=True)
            median = Timeline.median(runs)
            if len(runs) > 1:
                print(f"\nmedians of {len(runs)}:")
                print(median.table())
            print(save("startup_timeline", {"images": args.images[0], "size": args.size, "input": args.input or args.size,
                                            "median": dataclasses.asdict(median),
                                            "runs": [dataclasses.asdict(run) for run in runs]}))
            return
        if args.mining_only:
            return mining_rates(stage, args)
        if args.runtime_ab:
            return runtime_ab(stage, args)
        per_count = {count: compare(stage, count, args.rounds) for count in args.images}
        forward = stage.forward_limit()
        mining = {}
        for algorithm in args.algorithms:
            mining[algorithm] = {**stage.ours(f"mining-{algorithm}", args.images[0], mining_algorithm=algorithm),
                                 "forward_passes_per_image": PASSES[algorithm]}
            print("mining", algorithm, mining[algorithm], flush=True)

    limit = round(forward["images_per_s"], 2)
    print(f"\n{'images':>7} {'':10}{'start-up s':>11}{'steady img/s':>14}{'end-to-end img/s':>18}")
    for count, result in per_count.items():
        median = result["median"]
        for name, row in median.items():
            print(f"{count:>7} {name:10}{row['startup_s']:>11.1f}{row['steady_images_per_s']:>14.2f}"
                  f"{row['end_to_end_images_per_s']:>18.2f}")
        ratio = median["ray_app"]["end_to_end_images_per_s"] / median["original"]["end_to_end_images_per_s"]
        steady_ratio = median["ray_app"]["steady_images_per_s"] / median["original"]["steady_images_per_s"]
        result.update(ratio_end_to_end=round(ratio, 3), ratio_steady=round(steady_ratio, 3),
                      steady_of_forward_limit=round(median["ray_app"]["steady_images_per_s"] / limit, 3))
        print(f"{count:>7} ray_app / original: end to end {ratio:.2f}x, steady {steady_ratio:.2f}x; "
              f"steady / forward limit {result['steady_of_forward_limit']:.0%}")
    first = per_count[args.images[0]]["median"]
    even = crossover(first["ray_app"], first["original"], args.images[0])
    layouts = ", ".join(f"{k} {v:.1f}" for k, v in forward.items() if k not in ("images_per_s", "wall_s"))
    print(f"forward limit {limit:.2f} img/s ({layouts}); ray_app's task is the shorter from about {even} candidates")
    for algorithm, row in mining.items():
        print(f"mining {algorithm:8} {row['steady_images_per_s']:>8.2f} img/s steady "
              f"({row['forward_passes_per_image']} forward pass(es) per image)")
    name = "infer_gpu" if args.gpu else "infer"
    path = save(name if not args.input else f"{name}_{args.size}px_input{args.input}",
                {"images": args.images, "image_size": args.size, "img_size": args.input or args.size, "batch": BATCH, "model": "yolov8_n",
                 "device": device, "cpu_threads": os.cpu_count(), "per_count": per_count,
                 "forward_limit": forward, "forward_limit_images_per_s": limit,
                 "break_even_candidates": even, "mining": mining})
    print(f"full results: {path}")


if __name__ == "__main__":
    main()
