"""Training through the real entry: 2 Ray Train CPU workers, outputs read as the platform
reads them; and a worker killed mid-run makes Ray resume from the last checkpoint."""

from __future__ import annotations

import os
import re
import signal

import pytest
import torch
import yaml
from mmengine.config import Config

from conftest import TRAIN_CONFIG, Holds, Run, start_entry
from ray_app.data.sample import write_task

pytestmark = pytest.mark.slow


def test_training_outputs(trained: Run):
    fields = trained.monitor()
    assert fields[2:4] == ["1.0000", "3"]
    result = yaml.safe_load((trained.out / "models" / "result.yaml").read_text())
    stages = result["model_stages"]
    # max_keep_checkpoints=1: the best and the newest; validations at epochs 5, 10, 15, 20
    assert "epoch_20" in stages and result["best_stage_name"] in stages and 1 <= len(stages) <= 2
    assert result["mAP"] == stages[result["best_stage_name"]]["mAP"]
    assert 0 < result["mAP"] <= 1, "the model learnt nothing in 20 epochs"
    assert set(result["evaluate_config"]) == {"iou_thr", "conf_thr"}
    for name, stage in stages.items():
        assert re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name) and stage["stage_name"] == name
        assert isinstance(stage["timestamp"], int) and 0 <= stage["mAP"] <= 1
        files = [trained.out / "models" / name / f for f in stage["files"]]
        assert all(f.is_file() and not f.is_symlink() for f in files)
        weights = [f for f in files if f.suffix == ".pth"]
        configs = [f for f in files if f.suffix == ".py"]
        assert len(weights) == 1 and len(configs) == 1
        assert any(f.suffix == ".log" for f in files)  # ymir_saved_file_patterns: the mmengine log
        checkpoint = torch.load(weights[0], weights_only=True)  # loads without unpickling code
        assert checkpoint["meta"]["dataset_meta"]["classes"] == ("square", "disc", "triangle")
        cfg = Config.fromfile(str(configs[0]))
        assert cfg.train_cfg.max_epochs == 20 and cfg.model.bbox_head.head_module.num_classes == 3
    assert {p.name for p in (trained.out / "models").iterdir() if p.is_dir()} == set(stages)  # pruned on disk too
    events = list((trained.out / "tensorboard").rglob("events.out.tfevents.*"))
    assert events and all(e.stat().st_size > 0 for e in events)
    assert "resuming" not in trained.output
    # a local Ray has no dashboard; none of Ray Train's parts that ask its state API runs (they would warn every second)
    assert "Failed to query Ray Train Controller actor state" not in trained.output
    speed = re.search(r"\[rank 0\] training: (\d+) iterations, median ([0-9.]+) s per iteration", trained.output)
    # 2 workers share 48 images in batches of 4: at most 6 iterations per epoch each
    assert speed and 20 <= int(speed.group(1)) <= 20 * 6 and float(speed.group(2)) > 0, "no iteration-time summary"


def test_tensorboard_has_loss_and_map(trained: Run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for event_file in (trained.out / "tensorboard").rglob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(event_file))
        accumulator.Reload()
        tags |= set(accumulator.Tags()["scalars"])
    assert {"loss", "lr", "coco/bbox_mAP", "coco/bbox_mAP_50"} <= tags, tags


def test_killed_worker_resumes_from_checkpoint(tmp_path, sample):
    """Kill a Train worker right after the first Ray checkpoint is registered (rank 0 pauses
    there, see ``ray_app.pause``): the group restarts and resumes from that checkpoint."""
    config = {**TRAIN_CONFIG, "model_name": "yolov5_n", "max_epochs": 6, "val_interval": 2}
    env_file = write_task(tmp_path, sample, run_training=True, config=config)
    holds = Holds(tmp_path / "holds")
    holds.hold("resume_checkpoint_registered")
    log = tmp_path / "log.txt"
    out = tmp_path / "out"
    try:
        proc = start_entry(env_file, log, holds.env)
        (paused,) = holds.wait("resume_checkpoint_registered", proc, log=log)
        assert paused["epoch"] == 2
        assert (out / "models" / "epoch_2").is_dir()  # published before the checkpoint
        percent, state = (out / "monitor.txt").read_text().split("\t")[2:4]
        assert state.strip() == "2" and 0.01 < float(percent) < 1  # progress moved during training
        os.kill(paused["pid"], signal.SIGKILL)
        holds.release()
        assert proc.wait(timeout=600) == 0, log.read_text()[-5000:]
    finally:
        holds.release()
    text = log.read_text()
    assert "resuming from the last Ray Train checkpoint" in text
    after = text.split("resuming from the last Ray Train checkpoint", 1)[1]
    epochs = [int(e) for e in re.findall(r"Epoch\(train\)\s+\[(\d+)\]", after)]
    assert epochs and min(epochs) >= 3, f"restarted from scratch: {sorted(set(epochs))}"
    result = yaml.safe_load((out / "models" / "result.yaml").read_text())
    assert "epoch_6" in result["model_stages"]
    assert (out / "monitor.txt").read_text().split("\t")[3].strip() == "3"


def test_training_from_a_pretrained_stage(tmp_path, sample, trained: Run):
    """``pretrained_model_params`` as the platform gives it (STAGE/FILE under models_dir):
    the run starts from those weights. Checked on the weights themselves: after one epoch
    the backbone is still within a few percent of the stage it started from, where a run from
    scratch would differ by about as much as the weights themselves. (The mAP after one epoch
    is no steady witness: the warm-up's high bias learning rate shakes a trained model, and
    it ranged 0.17–0.48 for a stage of 0.49–0.66 over four runs.)"""
    from conftest import best_stage_files, run_entry
    from ray_app.checkpoints import load_checkpoint_file

    models, files = best_stage_files(trained)
    config = {**TRAIN_CONFIG, "max_epochs": 1, "val_interval": 1, "cpu_num_workers": 1,
              "pretrained_model_params": files}
    run = run_entry(write_task(tmp_path, sample, run_training=True, config=config, models_dir=models))
    assert run.returncode == 0, run.output[-3000:]
    assert f"starting from {models / files[0]} (pretrained_model_params)" in run.output
    new_models, new_files = best_stage_files(run)
    before = load_checkpoint_file(models / next(f for f in files if f.endswith(".pth")))["state_dict"]
    after = load_checkpoint_file(new_models / next(f for f in new_files if f.endswith(".pth")))["state_dict"]
    keys = [k for k in before if k.startswith("backbone.") and k.endswith("conv.weight")]
    assert keys and all(k in after for k in keys)
    change = sum(float(((after[k] - before[k]) ** 2).sum()) for k in keys)
    size = sum(float((before[k] ** 2).sum()) for k in keys)
    assert change / size < 0.05, f"backbone moved {change / size:.3f} (relative, squared) from the starting stage"
    assert yaml.safe_load((run.out / "models" / "result.yaml").read_text())["mAP"] > 0.05


def test_nan_loss_stops_with_300201(tmp_path, sample):
    """A diverging run ends at once with 300201 (no futile restarts) and says what to try."""
    from conftest import run_entry

    config = {**TRAIN_CONFIG, "model_name": "yolov5_n", "max_epochs": 3, "val_interval": 1, "cpu_num_workers": 1,
              "learning_rate": 1e12}
    run = run_entry(write_task(tmp_path, sample, run_training=True, config=config))
    assert run.returncode == 1, run.output[-3000:]
    fields = run.monitor()
    assert fields[3:5] == ["4", "300201"] and "learning_rate" in fields[5]
    assert run.output.count("resuming from the last Ray Train checkpoint") == 0
    assert "[FailurePolicy] RETRY" not in run.output  # Ray Train did not restart the workers


def test_nan_loss_after_a_stage_keeps_the_stage(tmp_path, sample):
    """A run that diverges after its first validation still ends with 300201 at once, and the
    stage published before is kept, listed in result.yaml as the platform reads it. The event
    is set by the config, not by timing: yolov5's scheduler multiplies the learning rate by
    ``lr_factor`` (1e12) along the epochs, so the first epoch trains at the template's rate and
    the second at 1e10 times it."""
    from conftest import run_entry

    config = {**TRAIN_CONFIG, "model_name": "yolov5_n", "max_epochs": 2, "val_interval": 1, "cpu_num_workers": 1,
              "cfg_options": "default_hooks.param_scheduler.lr_factor=1e12"}
    run = run_entry(write_task(tmp_path, sample, run_training=True, config=config))
    assert run.returncode == 1, run.output[-3000:]
    fields = run.monitor()
    assert fields[3:5] == ["4", "300201"] and "learning_rate" in fields[5], fields
    assert "[FailurePolicy] RETRY" not in run.output
    result = yaml.safe_load((run.out / "models" / "result.yaml").read_text())
    assert list(result["model_stages"]) == ["epoch_1"], result
    assert all((run.out / "models" / "epoch_1" / name).is_file() for name in result["model_stages"]["epoch_1"]["files"])


def test_validation_without_a_checkpoint_publishes_no_stage(tmp_path, sample):
    """cfg_options that save checkpoints every 2 epochs while validating every epoch: the
    first validation has no checkpoint to publish, which the log says in one line; the second
    publishes its stage and the run ends done."""
    from conftest import run_entry

    config = {**TRAIN_CONFIG, "max_epochs": 2, "val_interval": 1, "cpu_num_workers": 1,
              "cfg_options": "default_hooks.checkpoint.interval=2"}
    run = run_entry(write_task(tmp_path, sample, run_training=True, config=config))
    assert run.returncode == 0, run.output[-3000:]
    # the worker's lines reach the output twice (its stream and the task's log): count epochs
    assert set(re.findall(r"epoch (\d+): validated without a checkpoint saved before it", run.output)) == {"1"}
    result = yaml.safe_load((run.out / "models" / "result.yaml").read_text())
    assert list(result["model_stages"]) == ["epoch_2"], result


@pytest.mark.parametrize(("option", "stage", "cause"), [
    ("model.backbone.type=NoSuchBackbone", "building the mmengine Runner for yolov8_n failed", "KeyError"),
    ("train_dataloader.dataset.ann_file=/no/such/train.json", "preparing training", "FileNotFoundError"),
], ids=["runner", "dataset"])
def test_error_no_restart_can_fix_fails_once(tmp_path, sample, option, stage, cause):
    """An error while the Runner or the dataset is built comes back on every restart: the
    task ends at the first one, with no Ray Train restart, one line naming the stage and the
    cause, and the worker's traceback below it. Two workers: both ranks meet it."""
    from conftest import run_entry

    config = {**TRAIN_CONFIG, "max_epochs": 1, "val_interval": 1, "cfg_options": option}
    run = run_entry(write_task(tmp_path, sample, run_training=True, config=config))
    assert run.returncode == 1, run.output[-3000:]
    fields = run.monitor()
    assert fields[3:5] == ["4", "300001"], fields
    assert fields[5].startswith(stage) and cause in fields[5], fields[5]
    below = (run.out / "monitor.txt").read_text().splitlines()[1:]
    assert below and below[0].startswith("Traceback") and any("ray_app/train/worker.py" in line for line in below)
    assert "[FailurePolicy] RETRY" not in run.output and "resuming from the last Ray Train checkpoint" not in run.output


def test_controller_environ_is_a_default_for_fit_only(monkeypatch):
    """Ray Train's controller settings: the preemption watcher is off on a local Ray only;
    a variable the environment sets wins; none is left behind after ``fit``."""
    from ray_app.train.task import controller_environ, environ_defaults

    assert controller_environ(local=True)["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] == "0"
    assert "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER" not in controller_environ(local=False)
    monkeypatch.delenv("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", raising=False)
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "3")  # the operator's choice
    with environ_defaults(controller_environ(local=True)):
        assert os.environ["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] == "0"
        assert os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "3"
    assert "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER" not in os.environ
    assert os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "3"


def test_a_config_with_no_python_form_is_a_recorded_config_error(tmp_path, sample):
    """The outputs actor formats the config the stages save (beside the driver); a config that
    cannot be written as Python is recorded as the run's failure (300001), which the workers
    find before they start and the driver then reports, instead of a crash in the actor."""
    from mmengine.config import Config

    from ray_app.protocol.env import load_env
    from ray_app.train.outputs import TrainingOutputs

    env = load_env(write_task(tmp_path, sample, run_training=True, config=TRAIN_CONFIG))
    good = TrainingOutputs(env, 1, {}, "yolov8_n_config.py", Config(dict(model=dict(type="YOLODetector"))))
    assert good.fatal() is None and b"YOLODetector" in good.config_text
    bad = TrainingOutputs(env, 1, {}, "yolov8_n_config.py", Config(dict(model=dict(type=object()))))
    failure = bad.fatal()
    assert failure.code == 300001 and "cannot be written as a Python file" in failure.message
    assert "SyntaxError" in failure.detail


@pytest.mark.parametrize("local", [True, False])
def test_the_controller_gets_the_executor_choices(tmp_path, local):
    """What ``YmirTorchTrainer`` hands Ray Train's controller, from the arguments Ray Train
    itself builds: our failure policy always; on a local Ray no placement-group cleaner and no
    autoscaling coordinator (``LocalScalingPolicy``); no ``DatasetsCallback`` while no Ray
    Dataset is given (its ``DatasetManager`` actor would serve nothing). The training runs of
    this file go through the same method."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
    from ray.train.v2._internal.execution.failure_handling import create_failure_policy
    from ray.train.v2._internal.execution.scaling_policy import create_scaling_policy
    from ray.train.v2._internal.execution.scaling_policy.fixed import FixedScalingPolicy

    from ray_app.train.failures import StopOnRecordedFailure
    from ray_app.train.trainer import LOCAL_RAY_SKIPS, LocalScalingPolicy, YmirTorchTrainer

    trainer = YmirTorchTrainer(lambda config: None, outputs=None, local_ray=local,
                               scaling_config=ScalingConfig(num_workers=1),
                               run_config=RunConfig(storage_path=str(tmp_path)))

    def kwargs() -> dict:
        return trainer.controller_kwargs(dict(
            scaling_policy=create_scaling_policy(trainer.scaling_config),
            failure_policy=create_failure_policy(trainer.run_config.failure_config),
            callbacks=trainer._create_default_callbacks()))

    given = kwargs()
    kinds = {type(callback) for callback in given["callbacks"]}
    assert isinstance(given["failure_policy"], StopOnRecordedFailure)
    assert type(given["scaling_policy"]) is (LocalScalingPolicy if local else FixedScalingPolicy)
    assert DatasetsCallback not in kinds
    assert bool(kinds & set(LOCAL_RAY_SKIPS)) is not local  # a joined cluster keeps the cleaner
    trainer.datasets = {"train": object()}  # a trainer given Ray Datasets (the attribute Ray Train reads)
    assert DatasetsCallback in {type(callback) for callback in kwargs()["callbacks"]}
