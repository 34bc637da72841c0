"""Ray Data's cluster autoscaler for a local Ray: the node's own resources, and no coordinator.

Ray Data's executor asks a ``ClusterAutoscaler`` (a Ray Data DeveloperAPI) how many resources
it may use, and tells it when it wants more. Ray Data's own (the rate-based one) answers from an
``AutoscalingCoordinator``: a detached actor, so a Python process of its own that imports Ray
Data, started with every execution, whose answer is the cluster's resources less what other
requesters hold. A local Ray is this container alone, started for the task, with one node that
nothing scales and no other requester, so the answer is the node's resources, known on the
driver. Without the coordinator's process the model actor starts on less contended cores: from
the pipeline's start to its ready line 5.23 -> 3.76 s, process ended 10.68 -> 9.37 s on 2 cores
(``bench/ab.py --base 640c50d --timeline --rounds 3 --size 256 --input 160``, medians). Joined
clusters keep Ray Data's autoscaler, whose requests an autoscaler may act on. This is the Ray
Data side of what ``ray_app.train.trainer.LocalScalingPolicy`` does for Ray Train.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import ray
from ray.data._internal.cluster_autoscaler import ClusterAutoscaler
from ray.data._internal.execution import streaming_executor
from ray.data._internal.execution.interfaces.execution_options import ExecutionResources

log = logging.getLogger(__name__)


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
    """Executions that start in this block use :class:`LocalClusterAutoscaler`; with a Ray Data
    whose executor does not build its autoscaler where this looks (not the pinned release), Ray
    Data's own, after one warning line."""
    ray_datas = getattr(streaming_executor, "create_cluster_autoscaler", None)
    if not callable(ray_datas):
        log.warning("Ray Data %s builds its cluster autoscaler elsewhere: its own runs, with its coordinator",
                    ray.__version__)
        yield
        return
    streaming_executor.create_cluster_autoscaler = lambda *args, **kwargs: LocalClusterAutoscaler()
    try:
        yield
    finally:
        streaming_executor.create_cluster_autoscaler = ray_datas
