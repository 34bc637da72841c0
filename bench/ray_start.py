"""How long a local Ray takes to start, as the entry starts it, and where ``ray.init`` waits.

Each run is a fresh process that starts a local Ray with the entry's own
``ray_session.start_or_join`` (``ray.init(address="local")``, no dashboard, API server or
autoscaler monitor, a token kept in the environment), then shuts Ray down. From Ray's own logs
of that session it reads when the GCS started, when the raylet started its agents and when the
raylet registered (once its dashboard agent, a Python process, answers). ``--full`` alternates
runs with Ray started as ``ray.init`` starts it, without ``ray_session.lean_local_start``: with
its API server (a Python process started even without a dashboard, whose address ``ray.init``
waits for before it starts the raylet) and autoscaler monitor, and asking the GCS for the
registered raylet once a second. ``--env NAME=VALUE`` alternates runs with and without a
setting. Medians and every run go to bench/results/ray_start.json.

    .venv/bin/python bench/ray_start.py [--runs 4] [--full] [--env RAY_enable_metrics_collection=0]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import save  # noqa: E402

#: the child: a local Ray started as the entry starts it; prints how long that took and Ray's session dir
CHILD = r'''
import contextlib, json, os, time, ray
from ray_app import ray_session
from ray_app.ray_session import start_or_join
if os.environ.get("BENCH_RAY_IN_FULL"):  # --full: Ray's own start, as ray.init does it
    ray_session.lean_local_start = lambda: contextlib.nullcontext(())
start = time.monotonic()
start_or_join("", [])
took = time.monotonic() - start
session = ray._private.worker._global_node.get_session_dir_path()
ray.shutdown()
print(json.dumps({"ray_init_s": took, "session": session}))
'''

REPO = Path(__file__).resolve().parents[1]

#: Ray's log lines that mark its start: (file under the session's logs/, a glob; text in the line; step)
MARKS = (("gcs_server.out", "", "GCS started"),
         ("raylet.out", "Monitor agent process with name dashboard_agent", "raylet starts its agents"),
         ("raylet.out", "Raylet of id", "raylet registered"),
         ("python-core-driver-*.log", "", "driver connected"))
STAMP = re.compile(r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})")


def run(extra_env: dict[str, str]) -> dict:
    env = {**os.environ, **extra_env, "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, cwd=REPO, capture_output=True, text=True,
                         check=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    logs = Path(result.pop("session")) / "logs"
    at = {}
    for pattern, text, step in MARKS:
        for line in next(logs.glob(pattern)).read_text(errors="replace").splitlines():
            if text in line and (found := STAMP.search(line)):
                at[step] = datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
                break
    gcs = at.get("GCS started")
    return {"ray_init_s": round(result["ray_init_s"], 2),
            **{f"{step} (s after the GCS)": round(t - gcs, 2) for step, t in at.items() if gcs and step != "GCS started"}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=4, help="runs of each variant, alternated")
    parser.add_argument("--env", default="", help="NAME=VALUE: a variant with this setting, alternated with none")
    parser.add_argument("--full", action="store_true",
                        help="a variant with Ray started as ray.init starts it (API server, autoscaler monitor)")
    args = parser.parse_args()
    variants = {"as the entry": {}}
    if args.full:
        variants["in full"] = {"BENCH_RAY_IN_FULL": "1"}
    if args.env:
        name, _, value = args.env.partition("=")
        variants[args.env] = {name: value}
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    for r in range(args.runs):
        for name in (list(variants) if r % 2 == 0 else list(variants)[::-1]):
            runs[name].append(run(variants[name]))
            print(name, runs[name][-1], flush=True)
    medians = {name: {k: statistics.median(row[k] for row in rows if k in row) for k in rows[0]}
               for name, rows in runs.items()}
    for name, row in medians.items():
        print(f"{name:40} " + ", ".join(f"{k} {v:.2f}" for k, v in row.items()))
    print(save("ray_start", {"args": vars(args), "median": medians, "runs": runs}))


if __name__ == "__main__":
    main()
