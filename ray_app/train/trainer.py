"""The ``TorchTrainer`` of a YMIR training task: Ray Train's own, with two controller arguments set.

Ray Train 2.60 builds its controller's failure policy and callbacks itself; the one seam is
the keyword arguments it hands to the controller (``_initialize_and_run_controller``),
overridden here. ``tests/test_training.py`` fails if that seam moves (a build error would be
retried, and a local Ray would warn every second).
"""

from __future__ import annotations

from typing import Any

from ray.train.torch import TorchTrainer
from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback
from ray.train.v2._internal.execution.scaling_policy.fixed import FixedScalingPolicy

from ray_app.train.failures import StopOnRecordedFailure

#: Ray Train callbacks that have nothing to do on a local Ray (this container alone, ended
#: with the task). The placement-group cleaner is a detached actor that asks the state API,
#: every second, whether the controller is still alive, to remove the workers' placement
#: group if the controller dies without doing so; a local Ray ends with the task, its
#: placement groups with it. Without it a local Ray needs no dashboard (the state API's
#: server), which with its module processes is 11 of the 19 processes a local Ray starts
#: (0.9 s of CPU on 2 cores).
LOCAL_RAY_SKIPS = (PlacementGroupCleanerCallback,)


class LocalScalingPolicy(FixedScalingPolicy):
    """Ray Train's fixed-size policy without its AutoscalingCoordinator, for a local Ray.

    The fixed policy registers the workers' resources with Ray Data's autoscaling coordinator,
    an actor it creates (a Python process of its own that imports Ray Train and Ray Data: about
    1 s of CPU while the worker starts, on 2 cores), and asks it again at every turn of the
    controller's loop, so that a cluster autoscaler keeps the nodes. A local Ray is this
    container alone, which nothing scales. Joined clusters keep Ray Train's policy."""

    def after_controller_start(self, train_run_context: Any) -> None:
        """No resource request: nothing autoscales a local Ray (the coordinator is never created)."""

    def _maybe_send_resource_request(self) -> None:
        """As :meth:`after_controller_start`. Cancelling a request never sent is already a no-op."""


class YmirTorchTrainer(TorchTrainer):
    """``TorchTrainer`` whose controller gets :class:`~ray_app.train.failures.StopOnRecordedFailure`
    as its failure policy; on a local Ray (``local_ray``) none of :data:`LOCAL_RAY_SKIPS` and the
    :class:`LocalScalingPolicy`; with no Ray Datasets (the executor gives none: the workers read
    COCO files with mmengine's own loader), no ``DatasetsCallback``, which would start a
    ``DatasetManager`` actor (one more process) to serve dataset shards no worker asks for."""

    def __init__(self, *args: Any, outputs: Any, local_ray: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._outputs = outputs
        self._local_ray = local_ray

    def controller_kwargs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The controller's arguments as Ray Train built them, with this class's choices."""
        skips = (LOCAL_RAY_SKIPS if self._local_ray else ()) + (() if self.datasets else (DatasetsCallback,))
        policy = kwargs["scaling_policy"]
        if self._local_ray and type(policy) is FixedScalingPolicy:
            policy = LocalScalingPolicy(scaling_config=policy.scaling_config)
        return {**kwargs, "failure_policy": StopOnRecordedFailure(self.run_config.failure_config, self._outputs),
                "scaling_policy": policy,
                "callbacks": [callback for callback in kwargs["callbacks"] if not isinstance(callback, skips)]}

    def _initialize_and_run_controller(self, **controller_init_kwargs: Any):
        return super()._initialize_and_run_controller(**self.controller_kwargs(controller_init_kwargs))
