"""Starting or joining Ray, the same way for training, inference and mining."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

import ray
import torch
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ray_app.protocol.errors import ErrorCode, YmirError
from ray_app.protocol.hyperparams import CommonParams

log = logging.getLogger(__name__)


@contextmanager
def ray_session(address: str, gpu_ids: list[int]) -> Iterator[None]:
    """Join the cluster at ``address`` (or ``$RAY_ADDRESS``), else start a local Ray sized
    to this container with only the GPUs in ``gpu_ids`` visible. A Ray already initialised
    in this process (tests, notebooks) is used as it is and left running."""
    if ray.is_initialized():
        yield
        return
    address = address.strip() or os.environ.get("RAY_ADDRESS", "").strip()
    if address:
        log.info("joining the Ray cluster at %s", address)
        ray.init(address=address, log_to_driver=True)
    else:
        if gpu_ids:
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpu_ids)
        log.info("starting a local Ray (%d CPUs, %d GPUs)", os.cpu_count() or 1, len(gpu_ids))
        ray.init(num_cpus=os.cpu_count() or 1, num_gpus=len(gpu_ids), include_dashboard=True,
                 log_to_driver=True, configure_logging=False)
    try:
        yield
    finally:
        ray.shutdown()


def driver_node_label() -> dict[str, str]:
    """A label selector for the driver's node (Ray labels every node with its id)."""
    return {"ray.io/node-id": ray.get_runtime_context().get_node_id()}


def on_this_node() -> NodeAffinitySchedulingStrategy:
    """Schedule an actor on the driver's node: the one that owns /in and /out."""
    return NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)


def check_gpus(params: CommonParams) -> list[int]:
    """The GPUs asked for, checked against what this container sees (300102 if none)."""
    gpu_ids = params.gpu_ids
    if gpu_ids and not torch.cuda.is_available():
        raise YmirError(ErrorCode.NO_GPU, f"gpu_id {params.gpu_id!r} was given but no GPU is visible in the container")
    if gpu_ids and max(gpu_ids) >= torch.cuda.device_count():
        raise YmirError(ErrorCode.GPU_MISMATCH, f"gpu_id {params.gpu_id!r} asks for GPU {max(gpu_ids)} but only "
                                                f"{torch.cuda.device_count()} are visible")
    return gpu_ids
