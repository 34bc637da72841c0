"""The mmengine hook that connects a Runner inside a Ray Train worker to YMIR and Ray.

At every validation it (on rank 0) turns the checkpoint mmengine just saved into a
weights-only YMIR stage sent to the driver, and (on all ranks) reports to Ray Train, with
the resume state as a Ray checkpoint so a restarted worker group resumes from it.
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
        if replaced and ray.train.get_context().get_world_rank() == 0:
            runner.logger.warning(fit_message(replaced, checkpoint["state_dict"], model_state))


class YmirTrainHook(Hook):
    """See the module docstring. Registered with the LOWEST priority, so it sees the
    checkpoint after the EMA hook swapped the averaged weights in, and the metrics after
    every evaluator finished."""

    priority = "LOWEST"

    def __init__(self, outputs: Any, tensorboard_dir: Path, saved_file_patterns: tuple[str, ...] = (),
                 progress_interval_s: float = 2.0) -> None:
        self.outputs = outputs
        self.tensorboard_dir = Path(tensorboard_dir)
        self.saved_file_patterns = [re.compile(p) for p in saved_file_patterns]
        self.progress_interval_s = progress_interval_s
        self._last_progress = 0.0
        self._checkpoint: dict[str, Any] | None = None

    @staticmethod
    def _is_rank0() -> bool:
        return ray.train.get_context().get_world_rank() == 0

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        loss = (outputs or {}).get("loss")
        value = float(loss.detach()) if isinstance(loss, torch.Tensor) else 0.0
        if not math.isfinite(value):
            error = YmirError(ErrorCode.NAN_LOSS, f"the training loss became {value} at iteration "
                                                  f"{runner.iter + 1}; try a smaller learning_rate")
            ray.get(self.outputs.fail.remote(error.code, error.message))  # no restart can fix this
            raise error
        now = time.monotonic()
        if self._is_rank0() and now - self._last_progress >= self.progress_interval_s:
            self._last_progress = now
            self.outputs.progress.remote((runner.iter + 1) / runner.max_iters)

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        self._checkpoint = dict(checkpoint)  # rank 0 only: mmengine saves on the master

    def after_val_epoch(self, runner, metrics: dict[str, float] | None = None) -> None:
        mAP = max(0.0, float((metrics or {}).get(METRIC, 0.0)))
        epoch = runner.epoch
        checkpoint, self._checkpoint = self._checkpoint, None
        with tempfile.TemporaryDirectory() as tmp:
            ray_checkpoint = None
            if self._is_rank0() and checkpoint is not None:
                stage = to_bytes(stage_checkpoint(checkpoint))
                ray.get(self.outputs.publish.remote(epoch, mAP, stage, self._extra_files(runner)))
                self._ship_tensorboard(runner)
                (Path(tmp) / RESUME_FILE).write_bytes(to_bytes(resume_checkpoint(checkpoint)))
                ray_checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report({"epoch": epoch, "mAP": mAP}, checkpoint=ray_checkpoint)
        if ray_checkpoint is not None:
            # Ray Train registers a checkpoint when its controller processes the report; a
            # worker killed before that would restart from the previous one. Wait for it.
            ray.train.get_all_reported_checkpoints(ray.train.CheckpointConsistencyMode.COMMITTED,
                                                   timeout_s=REGISTER_TIMEOUT_S)
            print(f"[rank 0] epoch {epoch}: resume checkpoint registered with Ray Train", flush=True)
            pause_point("resume_checkpoint_registered", epoch=epoch)

    def after_train(self, runner) -> None:
        if self._is_rank0():
            speed = iteration_times(runner)
            if speed:
                print(f"[rank 0] training: {speed[0]} iterations, median {speed[1]:.4f} s per iteration", flush=True)
            self._ship_tensorboard(runner)

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

    def _ship_tensorboard(self, runner) -> None:
        for backend in getattr(runner.visualizer, "_vis_backends", {}).values():
            writer = getattr(backend, "_tensorboard", None)
            if writer is not None:
                writer.flush()
        files = {str(p.relative_to(self.tensorboard_dir)): p.read_bytes()
                 for p in self.tensorboard_dir.rglob("*") if p.is_file()}
        if files:
            ray.get(self.outputs.tensorboard.remote(files))
