"""Ray Data's cluster autoscaler for a local Ray: the node's own resources, and no coordinator.

Ray Data's executor asks a ``ClusterAutoscaler`` (a Ray Data DeveloperAPI) how many resources
it may use, and tells it when it wants more. Ray Data's own (the rate-based one) answers from an
``AutoscalingCoordinator``: a detached actor, so a Python process of its own that imports Ray
Data, started with every execution, whose answer is the cluster's resources less what other
requesters hold. A local Ray is this container alone, started for the task, with one node that
nothing scales and no other requester, so the answer is the node's resources, known on the
driver. Joined clusters keep Ray Data's autoscaler, whose requests an autoscaler may act on.
This is the Ray Data side of what ``ray_app.train.trainer.LocalScalingPolicy`` does for Ray
Train.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import ray
from ray.data._internal.cluster_autoscaler import ClusterAutoscaler
from ray.data._internal.execution import streaming_executor
from ray.data._internal.execution.interfaces.execution_options import ExecutionResources


class LocalClusterAutoscaler(ClusterAutoscaler):
    """The node's resources as Ray reports them when the execution starts; no requests."""

    def __init__(self) -> None:
        self._total = ExecutionResources.from_resource_dict(ray.cluster_resources())

    def try_trigger_scaling(self) -> None:
        """Nothing to scale."""

    def on_executor_shutdown(self) -> None:
        """No request to cancel."""

    def get_total_resources(self) -> ExecutionResources:
        return self._total


@contextmanager
def local_cluster_autoscaler() -> Iterator[None]:
    """Executions that start in this block use :class:`LocalClusterAutoscaler`."""
    ray_datas = streaming_executor.create_cluster_autoscaler
    streaming_executor.create_cluster_autoscaler = lambda *args, **kwargs: LocalClusterAutoscaler()
    try:
        yield
    finally:
        streaming_executor.create_cluster_autoscaler = ray_datas
