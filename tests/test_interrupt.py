"""SIGTERM (what ``docker stop`` and YMIR's "stop task" send) at several points of a run:
whatever /out holds afterwards is complete and valid, or absent, and monitor.txt says error."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from conftest import TRAIN_CONFIG, Holds, best_stage_files, start_entry
from ray_app.data.sample import write_task

pytestmark = pytest.mark.slow


def run_and_terminate(env_file: Path, out: Path, when: Callable[[Path, str, Holds], bool], log: Path,
                      holds: Holds) -> int:
    """Start the entry, send SIGTERM once ``when(out, log_text, holds)`` holds, then let any
    paused process go on; the entry's exit code."""
    proc = start_entry(env_file, log, holds.env)
    try:
        deadline = time.monotonic() + 600  # a guard against a hung test; the events decide
        while not when(out, log.read_text(), holds):
            assert proc.poll() is None, f"the run ended before the kill point:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        holds.release()
        return proc.wait(timeout=600)
    finally:
        holds.release()


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


def stage_published(out: Path, log: str, holds: Holds) -> bool:
    """Paused right after the first stage was published and its resume checkpoint registered."""
    return bool(holds.reached("resume_checkpoint_registered"))


def converting(out: Path, log: str, holds: Holds) -> bool:
    """As soon as the run has started (its monitor exists): it cannot finish 30 epochs first."""
    return "training" in log or (out / "monitor.txt").exists()


@pytest.mark.parametrize("point", [converting, stage_published], ids=["at-start", "after-a-stage"])
def test_sigterm_during_training(tmp_path, sample, point):
    config = {**TRAIN_CONFIG, "model_name": "yolov5_n", "max_epochs": 30, "val_interval": 1, "cpu_num_workers": 1}
    env_file = write_task(tmp_path, sample, run_training=True, config=config)
    holds = Holds(tmp_path / "holds")
    holds.hold("resume_checkpoint_registered")
    code = run_and_terminate(env_file, tmp_path / "out", point, tmp_path / "log.txt", holds)
    assert code != 0
    check_outputs(tmp_path / "out")
    if point is stage_published:  # the good work is kept
        assert yaml.safe_load((tmp_path / "out" / "models" / "result.yaml").read_text())["model_stages"]


def mining_under_way(out: Path, log: str, holds: Holds) -> bool:
    """The model actor has finished a batch and holds it (paused) while the others wait."""
    return bool(holds.reached("model_batch_done"))


def test_sigterm_during_mining_and_infer(tmp_path, sample, trained):
    models, files = best_stage_files(trained)
    env_file = write_task(tmp_path, sample, run_mining=True, run_infer=True, models_dir=models,
                          config=dict(model_params_path=files, img_size=128, samples_per_gpu=1, cpu_num_workers=1,
                                      mining_algorithm="cald"))
    holds = Holds(tmp_path / "holds")
    holds.hold("model_batch_done")
    code = run_and_terminate(env_file, tmp_path / "out", mining_under_way, tmp_path / "log.txt", holds)
    assert code != 0
    check_outputs(tmp_path / "out")
    assert not (tmp_path / "out" / "result.tsv").exists()  # a partial ranking is never written
