"""The mmengine hooks that connect a Runner inside a Ray Train worker to YMIR and Ray, one job each.

At every validation, from the checkpoint mmengine saved just before it: ``PublishStage`` (rank
0) turns it into a weights-only YMIR stage sent to the driver's outputs actor, and
``ReportToRayTrain``, the Ray Train adapter, reports the epoch (on all ranks) with the resume
state as a Ray checkpoint, so a restarted worker group resumes from it. Beside them
(``ymir_hooks``): a non-finite loss ends the run with 300201 (``StopOnNonFiniteLoss``), rank 0
reports progress (``ReportProgress``), ships the TensorBoard files (``ShipTensorboard``) and
logs the run's speed (``LogIterationTimes``). Two more run before them: ``IterationsStarted``
(errors before the first iteration are build errors) and ``FitStartingWeights`` (COCO or
other-class weights fitted to this model).
"""

from __future__ import annotations

import math
import re
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
import ray.train
import torch
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.runner import Runner

from ray_app.checkpoints import resume_checkpoint, stage_checkpoint, to_bytes
from ray_app.pause import pause_point
from ray_app.protocol.errors import ErrorCode, YmirError
from ray_app.train.pretrained import fit_message, fit_to_model

METRIC = "coco/bbox_mAP"
RESUME_FILE = "resume.pth"
#: how long rank 0 waits for Ray Train to register a reported checkpoint
REGISTER_TIMEOUT_S = 120.0


def iteration_times(runner: Runner, warmup: int = 5) -> tuple[int, float] | None:
    """(iterations run, median seconds per iteration) from the Runner's own timer
    (``train/time`` in its message hub, every iteration whatever the logger interval), the
    first ``warmup`` iterations left out of the median. The hook logs it so the operator sees
    the speed of the run in one line; ``bench/train_bench.py`` compares it with a plain Runner's."""
    if "train/time" not in runner.message_hub.log_scalars:
        return None
    times = list(runner.message_hub.get_scalar("train/time").data[0])
    if len(times) <= warmup:
        return None
    return len(times), statistics.median(times[warmup:])


def is_rank0() -> bool:
    """Rank 0 of the Ray Train worker group: the one that writes for the whole group."""
    return ray.train.get_context().get_world_rank() == 0


class IterationsStarted(Hook):
    """Notes that a training iteration completed: until then an error comes from building
    the run (datasets, weights, a shape the network cannot take), which no restart fixes."""

    priority = "VERY_HIGH"

    def __init__(self) -> None:
        self.done = False

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        self.done = True


class FitStartingWeights(Hook):
    """Fits the starting weights (``load_from``: a COCO checkpoint, or a stage trained for other
    classes) to this model before mmengine loads them: each tensor whose shape differs (the
    class layers) is replaced by the model's own, already initialised one, and rank 0 says so
    in one warning line (see :func:`ray_app.train.pretrained.fit_to_model`). A resume is left
    alone: it is this very model. Its priority runs it before the EMA hook, which loads the
    same tensors into its copy."""

    priority = "VERY_HIGH"

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        if runner._resume or not isinstance(checkpoint.get("state_dict"), dict):
            return
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        model_state = model.state_dict()
        replaced = fit_to_model(checkpoint["state_dict"], model_state)
        if replaced and is_rank0():
            runner.logger.warning(fit_message(replaced, checkpoint["state_dict"], model_state))


class StopOnNonFiniteLoss(Hook):
    """A training loss that is no longer finite (NaN, inf) ends the run at once with 300201.

    The failure is recorded with the outputs actor before the error is raised, so that Ray
    Train's failure policy (``failures.StopOnRecordedFailure``) stops instead of restarting the
    workers: a restart resumes the same diverging run. The stages published before stay (the
    outputs actor wrote each with result.yaml when it came). Under AMP the loss mmengine hands
    the hooks is the unscaled one, so the check is the same."""

    def __init__(self, outputs: Any) -> None:
        self.outputs = outputs

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        loss = (outputs or {}).get("loss")
        value = float(loss.detach()) if isinstance(loss, torch.Tensor) else 0.0
        if not math.isfinite(value):
            error = YmirError(ErrorCode.NAN_LOSS, f"the training loss became {value} at iteration "
                                                  f"{runner.iter + 1}; try a smaller learning_rate")
            ray.get(self.outputs.fail.remote(error))  # no restart can fix this
            raise error


class ReportProgress(Hook):
    """Rank 0 tells the outputs actor how far training is (for monitor.txt), at most once
    every ``interval_s``: a remote call per iteration would cost more than it tells."""

    def __init__(self, outputs: Any, interval_s: float = 2.0) -> None:
        self.outputs = outputs
        self.interval_s = interval_s
        self._last = 0.0

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        now = time.monotonic()
        if now - self._last >= self.interval_s and is_rank0():
            self._last = now
            self.outputs.progress.remote((runner.iter + 1) / runner.max_iters)


class ShipTensorboard(Hook):
    """Rank 0 copies the TensorBoard event files it wrote (``tensorboard_dir``) to the outputs
    actor after every validation and at the end, so that /out has them while training goes on."""

    def __init__(self, outputs: Any, tensorboard_dir: Path) -> None:
        self.outputs = outputs
        self.tensorboard_dir = Path(tensorboard_dir)

    def after_val_epoch(self, runner, metrics: dict[str, float] | None = None) -> None:
        if is_rank0():
            self._ship(runner)

    def after_train(self, runner) -> None:
        if is_rank0():
            self._ship(runner)

    def _ship(self, runner) -> None:
        for backend in getattr(runner.visualizer, "_vis_backends", {}).values():
            writer = getattr(backend, "_tensorboard", None)
            if writer is not None:
                writer.flush()
        files = {str(p.relative_to(self.tensorboard_dir)): p.read_bytes()
                 for p in self.tensorboard_dir.rglob("*") if p.is_file()}
        if files:
            ray.get(self.outputs.tensorboard.remote(files))


def stage_mAP(metrics: dict[str, float] | None) -> float:
    """The stage's mAP from a validation's metrics (0 where the evaluator gave none, or -1)."""
    return max(0.0, float((metrics or {}).get(METRIC, 0.0)))


class _SeesCheckpoint(Hook):
    """Keeps the checkpoint mmengine saves (on rank 0: mmengine saves on the master) for the
    validation that follows it (``train.config`` sets the checkpoint interval to ``val_interval``).

    Registered with the LOWEST priority, so it sees the checkpoint after the EMA hook swapped
    the averaged weights in, and the metrics after every evaluator finished."""

    def __init__(self) -> None:
        self._checkpoint: dict[str, Any] | None = None

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        self._checkpoint = dict(checkpoint)

    def _take(self) -> dict[str, Any] | None:
        checkpoint, self._checkpoint = self._checkpoint, None
        return checkpoint


class PublishStage(_SeesCheckpoint):
    """Rank 0 sends each validation's checkpoint as a weights-only YMIR stage, with the files
    ``ymir_saved_file_patterns`` keeps, to the outputs actor (which writes it and result.yaml)."""

    def __init__(self, outputs: Any, saved_file_patterns: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.outputs = outputs
        self.saved_file_patterns = [re.compile(p) for p in saved_file_patterns]

    def after_val_epoch(self, runner, metrics: dict[str, float] | None = None) -> None:
        checkpoint = self._take()
        if not is_rank0():
            return
        if checkpoint is None:  # cfg_options moved default_hooks.checkpoint.interval off val_interval
            print(f"[rank 0] epoch {runner.epoch}: validated without a checkpoint saved before it "
                  "(default_hooks.checkpoint.interval differs from val_interval): no stage for this epoch", flush=True)
            return
        stage = to_bytes(stage_checkpoint(checkpoint))
        ray.get(self.outputs.publish.remote(runner.epoch, stage_mAP(metrics), stage, self._extra_files(runner)))

    def _extra_files(self, runner) -> dict[str, bytes]:
        """Files of the work dir whose name one of ``ymir_saved_file_patterns`` finds (``re.search``,
        as the YMIR SDK does), for every stage; the weights are the stage's own."""
        if not self.saved_file_patterns:
            return {}
        found = {}
        for path in Path(runner.work_dir).rglob("*"):
            if (path.is_file() and not path.name.endswith(".pth")
                    and any(pattern.search(path.name) for pattern in self.saved_file_patterns)):
                found[path.name] = path.read_bytes()
        return found


class ReportToRayTrain(_SeesCheckpoint):
    """The Ray Train adapter, at mmengine's own checkpoint event: every rank reports each
    validation's epoch and mAP; rank 0 attaches the resume state (the checkpoint less the
    message hub, :func:`ray_app.checkpoints.resume_checkpoint`) as a Ray checkpoint and waits
    until Ray Train has registered it, so a worker group restarted after that resumes from it."""

    def after_val_epoch(self, runner, metrics: dict[str, float] | None = None) -> None:
        epoch = runner.epoch
        checkpoint = self._take()
        with tempfile.TemporaryDirectory() as tmp:
            ray_checkpoint = None
            if is_rank0() and checkpoint is not None:
                (Path(tmp) / RESUME_FILE).write_bytes(to_bytes(resume_checkpoint(checkpoint)))
                ray_checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report({"epoch": epoch, "mAP": stage_mAP(metrics)}, checkpoint=ray_checkpoint)
        if ray_checkpoint is not None:
            # Ray Train registers a checkpoint when its controller processes the report; a
            # worker killed before that would restart from the previous one. Wait for it.
            ray.train.get_all_reported_checkpoints(ray.train.CheckpointConsistencyMode.COMMITTED,
                                                   timeout_s=REGISTER_TIMEOUT_S)
            print(f"[rank 0] epoch {epoch}: resume checkpoint registered with Ray Train", flush=True)
            pause_point("resume_checkpoint_registered", epoch=epoch)


class LogIterationTimes(Hook):
    """Rank 0 logs the run's speed in one line at the end (:func:`iteration_times`)."""

    def after_train(self, runner) -> None:
        speed = iteration_times(runner) if is_rank0() else None
        if speed:
            print(f"[rank 0] training: {speed[0]} iterations, median {speed[1]:.4f} s per iteration", flush=True)


def ymir_hooks(outputs: Any, tensorboard_dir: Path, saved_file_patterns: tuple[str, ...] = ()) -> list[Hook]:
    """The hooks that connect a worker's Runner to YMIR and Ray Train, one job each, in the
    order they run at the same event (the worker registers them with the LOWEST priority:
    after mmengine's logger, EMA and evaluators)."""
    return [StopOnNonFiniteLoss(outputs), ReportProgress(outputs), ShipTensorboard(outputs, tensorboard_dir),
            PublishStage(outputs, saved_file_patterns), ReportToRayTrain(), LogIterationTimes()]
