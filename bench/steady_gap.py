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

And where the machine's CPU went during the entry's steady phase (``--cpu``): every process's
CPU time (``/proc/<pid>/stat``) read when the entry logs its first results and again when it logs its summary, grouped by
what each process is (the driver, the model actor, raylet, GCS, Ray's other workers), against
the window's wall time times the cores.

    .venv/bin/python bench/steady_gap.py [--images 2000] [--size 256 --input 160] [--rounds 3]   # steady_gap.json
    .venv/bin/python bench/steady_gap.py --cpu [--perf /tmp/steady.perf] ...   # bench/results/steady_cpu.json

``--perf`` also samples the whole machine with ``perf record -a`` (Linux perf, as root or with
``perf_event_paranoid`` low enough) over the first round's steady phase and keeps its split by
thread name and library: how much of the machine ONNX Runtime's kernels had, and what else did.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import save  # noqa: E402
from bench.scaling_bench import REPO, SUMMARY, entry_env, steady_rate  # noqa: E402
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
detector = Detector(bundle, "cpu", params.cpu_runtime)  # the runtime the entry's actors use
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


TICK = os.sysconf("SC_CLK_TCK")


def _cpu_s(stat: Path) -> float:
    """utime + stime of one ``/proc/.../stat``, in seconds (0 when it is gone)."""
    try:
        fields = stat.read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def _what(pid: int) -> str:
    """What a process is, from its command line (Ray sets a worker's to ``ray::<actor or task>``)."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
    if "-m ray_app" in cmd:
        return "driver"
    if "DetectorActor" in cmd or "MapWorker" in cmd:  # the only map actor of a CPU task on a local Ray
        return "model actor"
    for name in ("raylet", "gcs_server", "log_monitor", "dashboard", "runtime_env"):
        if name in cmd:
            return name
    if cmd.startswith("ray::"):
        return "ray::" + cmd[5:].split("(")[0].split()[0].split(".")[0]  # an actor's title names its running method
    return ""


def cpu_snapshot() -> dict:
    """CPU seconds so far of every process that is the entry's (by ``_what``)."""
    procs = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (what := _what(int(entry.name))):
            procs[entry.name] = (what, _cpu_s(entry / "stat"))
    return {"at": time.monotonic(), "procs": procs}


def entry_cpu(stage, count: int, perf: str = "") -> dict:
    """The entry (infer over ``count`` candidates) with the CPU of its steady phase, by process:
    CPU seconds and the share of (window x cores)."""
    proc = subprocess.Popen([sys.executable, "-m", "ray_app"], env=entry_env(stage.task("gap-cpu", count)), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, first, last = [], None, None
    for line in proc.stdout:
        lines.append(line)
        if first is None and ": first results after " in line:
            first = cpu_snapshot()
            if perf:
                recorder = subprocess.Popen(["perf", "record", "-F", "997", "-a", "-o", perf, "-q"],
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        elif last is None and first is not None and SUMMARY.search(line):
            last = cpu_snapshot()
            if perf:
                recorder.send_signal(signal.SIGINT)
                recorder.wait()
    assert proc.wait() == 0 and first and last, "".join(lines)[-3000:]
    window = last["at"] - first["at"]
    cores = os.cpu_count()
    procs: dict[str, float] = {}
    for pid, (what, cpu) in last["procs"].items():
        procs[what] = procs.get(what, 0.0) + cpu - first["procs"].get(pid, (what, 0.0))[1]
    procs = {k: round(v, 2) for k, v in sorted(procs.items(), key=lambda kv: -kv[1])}
    used = sum(procs.values())
    return {"window_s": round(window, 2), "cores": cores, "cpu_s": procs,
            "used_of_cores": round(used / (window * cores), 3), "idle_s": round(window * cores - used, 2),
            "steady_images_per_s": steady_rate("".join(lines))}


def perf_shares(data: str, top: int = 20) -> list[tuple[float, str, str]]:
    """``perf report``'s split of the machine's CPU samples by thread name and library, the
    ``top`` largest (every thread of a Ray actor has the actor's name; ``swapper`` is idle)."""
    report = subprocess.run(["perf", "report", "-i", data, "--sort", "comm,dso", "--stdio"], capture_output=True,
                            text=True).stdout
    rows = []
    for line in report.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0].endswith("%") and not line.startswith("#"):
            rows.append((float(parts[0][:-1]), " ".join(parts[1:-1]), parts[-1]))
    return rows[:top]


def actor_work(stage, count: int) -> float:
    """Images/s of the actor's work, no Ray, over the first ``count`` candidates of the entry's task."""
    env_file = stage.task("gap-work", count)
    proc = subprocess.run([sys.executable, "-c", CHILD, str(env_file), str(BATCH)], capture_output=True,
                          text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])["images_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=256, help="the candidates' size")
    parser.add_argument("--input", type=int, default=0, help="the model's input size (default: --size)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--forward-s", type=float, default=8, help="seconds of each layout of the forward limit")
    parser.add_argument("--cpu", action="store_true", help="only where the CPU went during the entry's steady phase")
    parser.add_argument("--perf", default="", help="with --cpu: a file for `perf record -a` over the first round's steady phase")
    args = parser.parse_args()
    if args.cpu:
        with tempfile.TemporaryDirectory(prefix="steady-gap-") as tmp:
            stage = train_stage(Path(tmp), args.images, args.input or args.size, False, image_size=args.size)
            rounds = [entry_cpu(stage, args.images, args.perf if k == 0 else "") for k in range(args.rounds)]
        for r in rounds:
            print(json.dumps(r))
        shares = perf_shares(args.perf) if args.perf else []
        for share, comm, dso in shares:
            print(f"{share:6.2f} %  {comm:18} {dso}")
        print(save("steady_cpu", {"images": args.images, "image_size": args.size, "input": args.input or args.size,
                                  "batch": BATCH, "model": "yolov8_n", "rounds": rounds,
                                  "perf_first_round_by_thread_name_and_library": shares}))
        return
    runs: dict[str, list[float]] = {"forward": [], "actor's work, no Ray": [], "entry steady": []}
    with tempfile.TemporaryDirectory(prefix="steady-gap-") as tmp:
        stage = train_stage(Path(tmp), args.images, args.input or args.size, False, image_size=args.size)
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
    print(save("steady_gap", {"images": args.images, "image_size": args.size, "input": args.input or args.size,
                              "batch": BATCH, "model": "yolov8_n",
                              "rounds": args.rounds, "median": medians, "runs": runs,
                              "of_forward": {k: round(v / forward, 3) for k, v in medians.items()},
                              "entry_of_no_ray": round(share, 3)}))


if __name__ == "__main__":
    main()
