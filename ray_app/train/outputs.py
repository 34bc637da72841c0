"""The driver-side writer of training outputs: a Ray actor on the driver's node.

Train workers may run on other machines that cannot see ``/out``. Rank 0 sends what the
platform must read (progress, each validated model stage, tensorboard events) to this
actor, which alone writes ``/out``: stage files, ``models/result.yaml`` (rewritten after
every validation, so a run stopped early still leaves a usable model) and ``monitor.txt``.
"""

from __future__ import annotations

import logging
import shutil
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

import ray

from ray_app.protocol.atomic import atomic_write_bytes, ensure_under
from ray_app.protocol.env import EnvConfig
from ray_app.protocol.errors import ErrorCode, YmirError
from ray_app.protocol.monitor import Monitor
from ray_app.protocol.writers import ModelStage, TrainingResult, write_training_result

if TYPE_CHECKING:
    from mmengine.config import Config

log = logging.getLogger(__name__)


def kept_stages(stages: dict[str, ModelStage], epochs: dict[str, int], keep: int) -> set[str]:
    """The ``keep`` newest and the ``keep`` best stages (all when ``keep`` is -1)."""
    if keep < 0:
        return set(stages)
    newest = sorted(stages, key=lambda s: epochs[s], reverse=True)[:keep]
    best = sorted(stages, key=lambda s: (stages[s].mAP, epochs[s]), reverse=True)[:keep]
    return set(newest) | set(best)


class TrainingOutputs:
    """Writes ``/out`` for a training run (see the module docstring)."""

    def __init__(self, env: EnvConfig, max_keep: int, evaluate_config: dict[str, float],
                 config_name: str, config: Config) -> None:
        self.env = env
        self.root = Path(env.output.root_dir)
        self.models_dir = Path(env.output.models_dir)
        self.monitor = Monitor(env.output.monitor_file, env.task_id, env.output.root_dir)
        self.max_keep = max_keep
        self.evaluate_config = evaluate_config
        self.config_name = config_name
        self.stages: dict[str, ModelStage] = {}
        self.epochs: dict[str, int] = {}
        self.failure: YmirError | None = None
        # formatted here, in the actor's constructor, which runs beside the driver: mmengine
        # formats a config with yapf (0.2 s on 2 cores), which on the driver delayed Ray Train's
        # start. A config that is not Python (a value with no literal form) could be saved with
        # no stage: recorded as the run's failure, which the workers find before they start.
        try:
            self.config_text = config.pretty_text.encode()
        except SyntaxError:
            self.config_text = b""
            self.fail(YmirError(ErrorCode.CONFIG, "the training config cannot be written as a Python file for the "
                                                  "model stages: a value in it has no Python literal form",
                                detail=traceback.format_exc()))

    def progress(self, fraction: float) -> None:
        """Training progress in [0, 1); 1 is written by the entry once all is done."""
        self.monitor.progress(min(fraction, 0.99))

    def publish(self, epoch: int, mAP: float, weights: bytes, extra_files: dict[str, bytes]) -> str:
        """Write stage ``epoch_<epoch>`` (weights, config, extra files), prune, rewrite result.yaml."""
        name = f"epoch_{epoch}"
        stage_dir = self.models_dir / name
        files = {f"{name}.pth": weights, self.config_name: self.config_text, **extra_files}
        for file_name, data in files.items():
            atomic_write_bytes(stage_dir / file_name, data, self.root)
        self.stages[name] = ModelStage(stage_name=name, files=list(files), timestamp=int(time.time()),
                                       mAP=min(1.0, max(0.0, float(mAP))))
        self.epochs[name] = epoch
        keep = kept_stages(self.stages, self.epochs, self.max_keep)
        best = max(self.stages, key=lambda s: (self.stages[s].mAP, self.epochs[s]))
        result = TrainingResult(best_stage_name=best, mAP=self.stages[best].mAP,
                                evaluate_config=self.evaluate_config,
                                model_stages={s: self.stages[s] for s in sorted(keep, key=self.epochs.get)})
        write_training_result(self.env.output.training_result_file, result, self.root)
        for dropped in set(self.stages) - keep:
            shutil.rmtree(ensure_under(self.models_dir / dropped, self.root), ignore_errors=True)
            del self.stages[dropped], self.epochs[dropped]
        log.info("stage %s published (mAP %.4f); best %s", name, self.stages[name].mAP, best)
        return name

    def tensorboard(self, files: dict[str, bytes]) -> None:
        """Copy the event files rank 0 wrote, to ``tensorboard_dir`` (relative names kept)."""
        for relative, data in files.items():
            atomic_write_bytes(Path(self.env.output.tensorboard_dir) / relative, data, self.root)

    def fail(self, error: YmirError) -> None:
        """A worker hit an error that a restart cannot fix (a build error, a NaN loss):
        remember the first one (its ``detail``: the worker's traceback), so that Ray Train's
        failure policy raises instead of retrying (``failures``) and the driver raises it."""
        self.failure = self.failure or error

    def fatal(self) -> YmirError | None:
        return self.failure

    def summary(self) -> dict[str, float]:
        """Stage name -> mAP of the stages kept."""
        return {name: stage.mAP for name, stage in self.stages.items()}


TrainingOutputsActor = ray.remote(num_cpus=0)(TrainingOutputs)
