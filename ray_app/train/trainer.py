"""The ``TorchTrainer`` of a YMIR training task: Ray Train's own, with two controller arguments set.

Ray Train 2.60 builds its controller's failure policy and callbacks itself; the one seam is
the keyword arguments it hands to the controller (``_initialize_and_run_controller``),
overridden here. ``tests/test_training.py`` fails if that seam moves (a build error would be
retried, and a local Ray would warn every second).
"""

from __future__ import annotations

from typing import Any

from ray.train.torch import TorchTrainer
from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback

from ray_app.train.failures import StopOnRecordedFailure

#: Ray Train callbacks that have nothing to do on a local Ray (this container alone, ended
#: with the task). The placement-group cleaner is a detached actor that asks the state API,
#: every second, whether the controller is still alive, to remove the workers' placement
#: group if the controller dies without doing so; a local Ray ends with the task, its
#: placement groups with it. Without it a local Ray needs no dashboard (the state API's
#: server), which with its module processes is 11 of the 19 processes a local Ray starts
#: (0.9 s of CPU on 2 cores).
LOCAL_RAY_SKIPS = (PlacementGroupCleanerCallback,)


class YmirTorchTrainer(TorchTrainer):
    """``TorchTrainer`` whose controller gets :class:`~ray_app.train.failures.StopOnRecordedFailure`
    as its failure policy and, on a local Ray (``local_ray``), none of :data:`LOCAL_RAY_SKIPS`."""

    def __init__(self, *args: Any, outputs: Any, local_ray: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._outputs = outputs
        self._local_ray = local_ray

    def _initialize_and_run_controller(self, **controller_init_kwargs: Any):
        controller_init_kwargs["failure_policy"] = StopOnRecordedFailure(self.run_config.failure_config,
                                                                         self._outputs)
        if self._local_ray:
            controller_init_kwargs["callbacks"] = [callback for callback in controller_init_kwargs["callbacks"]
                                                   if not isinstance(callback, LOCAL_RAY_SKIPS)]
        return super()._initialize_and_run_controller(**controller_init_kwargs)
