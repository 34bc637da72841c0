"""``bench/gpu_check.py``, the one GPU check, tested on the CPU as far as the CPU allows: every
step runs through the real entry and the real original loop, at a small size, and its figures
land in the results file. Its targets need a GPU: they are not checked here."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow

STEPS = ("train plain Runner fp32", "train entry fp32", "train entry AMP", "infer 24", "start-up timeline",
         "forward limit", "mining aldd + infer", "train entry AMP, NaN after a stage")


def test_gpu_check_runs_every_step_on_the_cpu(tmp_path):
    out = tmp_path / "gpu_cpu.json"
    # no deadline: the check's default (540 s, sized for a GPU lease) would skip the last steps
    # on a slow CPU machine, and the test is about every step running, not about time
    proc = subprocess.run([sys.executable, "bench/gpu_check.py", "--device", "cpu", "--out", str(out),
                           "--deadline-s", "1e9"], cwd=REPO, capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = json.loads(out.read_text())["steps"]
    for step in STEPS:
        assert step in steps and "skipped" not in steps[step], (step, steps.get(step))
    for run in ("train plain Runner fp32", "train entry fp32", "train entry AMP"):
        assert steps[run]["iterations"] == 8 and steps[run]["iter_s_median"] > 0
    # the entry's training start-up, step by step, in the order the steps happen
    timeline = steps["train entry fp32"]["timeline"]
    assert list(timeline)[0] == "driver asks Ray to start" and list(timeline)[-1] == "process ended", timeline
    assert list(timeline.values()) == sorted(timeline.values())
    assert {"Ray Train's controller is up", "first logged iterations"} <= set(timeline)
    assert set(steps["infer 24"]) == {"ray_app", "original"}
    assert all(row["steady_images_per_s"] > 0 for row in steps["infer 24"].values())
    assert {"Ray is up (ray.init returned)", "process ended"} <= set(steps["start-up timeline"])
    assert set(steps["start-up busy cores"]) == set(steps["start-up timeline"])
    # the model actor's own start, from its ready line
    assert list(steps["model actor's start"]) == ["process", "imports", "mmdet/mmyolo", "model", "onnxruntime"]
    assert steps["forward limit"]["images_per_s"] > 0
    assert steps["train entry AMP, NaN after a stage"]["met"], steps["train entry AMP, NaN after a stage"]
    summary = steps["summary"]
    assert summary["ray_train_overhead_per_iteration"] > 0 and summary["amp_speedup_per_iteration"] > 0
    assert "Ray Train per iteration" in proc.stdout and "ray_app" in proc.stdout
