"""SIGTERM (what ``docker stop`` and YMIR's "stop task" send) at several points of a run:
whatever /out holds afterwards is complete and valid, or absent, and monitor.txt says error."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from conftest import REPO, TRAIN_CONFIG, best_stage_files
from ray_app.data.sample import write_task

pytestmark = pytest.mark.slow


def run_and_terminate(env_file: Path, out: Path, when: Callable[[Path, str], bool], log: Path) -> int:
    """Start the entry, send SIGTERM once ``when(out, log_text)`` holds; its exit code."""
    env = {**os.environ, "YMIR_ENV_FILE": str(env_file), "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    with open(log, "w") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "ray_app"], env=env, cwd=REPO, stdout=sink,
                                stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while not when(out, log.read_text()):
            assert proc.poll() is None, f"the run ended before the kill point:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        return proc.wait(timeout=120)


def check_outputs(out: Path) -> None:
    """Every file the platform reads is absent or whole; no temporary file is left behind."""
    fields = (out / "monitor.txt").read_text().splitlines()[0].split("\t")
    assert fields[3] == "4", fields  # state: error
    result_file = out / "models" / "result.yaml"
    if result_file.exists():
        result = yaml.safe_load(result_file.read_text())
        assert result["best_stage_name"] in result["model_stages"]
        for name, stage in result["model_stages"].items():  # every stage listed is complete
            assert all((out / "models" / name / f).stat().st_size > 0 for f in stage["files"]), name
    if (out / "infer-result.json").exists():
        json.loads((out / "infer-result.json").read_text())
    if (out / "result.tsv").exists():
        assert all(len(line.split("\t")) == 2 for line in (out / "result.tsv").read_text().splitlines())
    leftovers = [p for p in out.rglob("*.tmp") if "ray_app" not in p.parts]
    assert not leftovers, leftovers


def stage_published(out: Path, log: str) -> bool:
    return (out / "models" / "result.yaml").exists()


def converting(out: Path, log: str) -> bool:
    return "training" in log or (out / "monitor.txt").exists()


@pytest.mark.parametrize("point", [converting, stage_published], ids=["at-start", "after-a-stage"])
def test_sigterm_during_training(tmp_path, sample, point):
    config = {**TRAIN_CONFIG, "model_name": "yolov5_n", "max_epochs": 30, "val_interval": 1, "cpu_num_workers": 1}
    env_file = write_task(tmp_path, sample, run_training=True, config=config)
    code = run_and_terminate(env_file, tmp_path / "out", point, tmp_path / "log.txt")
    assert code != 0
    check_outputs(tmp_path / "out")
    if point is stage_published:  # the good work is kept
        assert yaml.safe_load((tmp_path / "out" / "models" / "result.yaml").read_text())["model_stages"]


def mining_under_way(out: Path, log: str) -> bool:
    monitor = out / "monitor.txt"
    return monitor.exists() and float(monitor.read_text().split("\t")[2]) > 0


def test_sigterm_during_mining_and_infer(tmp_path, sample, trained):
    models, files = best_stage_files(trained)
    env_file = write_task(tmp_path, sample, run_mining=True, run_infer=True, models_dir=models,
                          config=dict(model_params_path=files, img_size=128, samples_per_gpu=1, cpu_num_workers=1,
                                      mining_algorithm="cald"))
    code = run_and_terminate(env_file, tmp_path / "out", mining_under_way, tmp_path / "log.txt")
    assert code != 0
    check_outputs(tmp_path / "out")
    assert not (tmp_path / "out" / "result.tsv").exists()  # a partial ranking is never written
