"""The Ray Data pipeline over the candidate index, streaming results to the driver.

On a cluster: read (driver's node) -> [preprocess actors: GPU only] -> model actors -> the driver.
On a local Ray (one node): paths -> [preprocess actors: GPU only] -> model actors -> the
driver; the first actor reads the files itself (``images.with_bytes``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import ray
from ray.data import ActorPoolStrategy, DataContext, TaskPoolStrategy

from ray_app.infer.actors import DetectorActor, DetectorSpec, PreprocessActor
from ray_app.infer.images import read_batch
from ray_app.infer.local_autoscaler import local_cluster_autoscaler
from ray_app.infer.model import ModelBundle, inference_pipeline
from ray_app.protocol.errors import ErrorCode, YmirError
from ray_app.protocol.hyperparams import InferParams
from ray_app.ray_session import alive_nodes, check_cluster_gpus, driver_node_label, local_ray

#: read tasks at once. Reading is file I/O pinned to the driver's node (the one that sees /in),
#: so it reserves no CPU: model actors that fill that node can never starve it, and a read
#: never waits for Ray Data's CPU budget while model actors sit idle
READ_TASKS = 2
#: batches per read block at most: fewer, larger blocks cost Ray Data less per image
#: (2,000 images on 2 cores: 81 against 72 images/s), at the price of coarser load balancing
MAX_BATCHES_PER_BLOCK = 4
#: read blocks wanted per model-actor thread at least, so every thread stays busy to the end
BLOCKS_PER_THREAD = 4
#: CPU share of one preprocessing (decode + resize) actor of the GPU layout
PREPROCESS_CPUS = 0.5
#: batches a GPU model actor works on at once: one in the network, one in unpacking or NMS
GPU_BATCHES_AT_ONCE = 2
#: How long the model actors may take to start (model load, or an autoscaler adding nodes)
#: before the task fails with a clear message instead of waiting forever for resources.
ACTOR_START_TIMEOUT_S = 600


@dataclass(frozen=True)
class ActorPlan:
    """How many model actors, and what each one holds."""

    count: int
    num_cpus: float
    num_gpus: float = 0
    #: batches each actor works on at once, each in its own thread (see ``model.Detector``)
    batches_at_once: int = GPU_BATCHES_AT_ONCE


def plan_actors(params: InferParams, gpu_ids: list[int], nodes: int) -> ActorPlan:
    """One model actor per GPU, else ``cpu_num_workers`` CPU actors that decode their own
    images and work on one batch per CPU they hold: on one machine they share its CPUs
    (rounded up to whole batches); on a cluster (``nodes`` alive) each takes one CPU, which
    fits on any node."""
    if gpu_ids:
        check_cluster_gpus(len(gpu_ids))
        return ActorPlan(count=len(gpu_ids), num_cpus=1, num_gpus=1)
    available = ray.cluster_resources().get("CPU", 0)
    if params.cpu_num_workers > available:
        raise YmirError(ErrorCode.CONFIG, f"cpu_num_workers={params.cpu_num_workers} model actors need "
                                          f"{params.cpu_num_workers} CPUs; the Ray cluster has {available:g}")
    if nodes > 1:  # a share of the sum may fit no single node
        return ActorPlan(count=params.cpu_num_workers, num_cpus=1, batches_at_once=1)
    share = math.floor(available / params.cpu_num_workers * 10) / 10
    return ActorPlan(count=params.cpu_num_workers, num_cpus=share, batches_at_once=max(1, math.ceil(share)))


def rows_per_block(images: int, batch_size: int, plan: ActorPlan) -> int:
    """Images per block: whole batches, up to ``MAX_BATCHES_PER_BLOCK`` of them, but
    small enough that each model-actor thread gets ``BLOCKS_PER_THREAD`` blocks or more."""
    threads = plan.count * plan.batches_at_once
    batches = images // (batch_size * threads * BLOCKS_PER_THREAD)
    return batch_size * min(MAX_BATCHES_PER_BLOCK, max(1, batches))


def stream_results(images: list[str], bundle: ModelBundle, params: InferParams, algorithm: str | None,
                   gpu_ids: list[int], task_id: str) -> Iterator[dict[str, np.ndarray]]:
    """Batches of ``{path, detections (json), score, error}`` as the actors finish them.

    On a cluster, read tasks run on the driver's node (the one that sees /in) and hand image
    bytes on; preprocessing and the model run wherever Ray places them (Ray Data spreads
    actors over the nodes). On a local Ray (started for this task: one node, which no
    autoscaler can grow) every actor sees /in, and the first one reads its batch's files
    itself: no read stage, whose two task processes and operator cost 1.1 s of start-up on 2
    cores (11.6 -> 10.4 s, ``bench/infer_bench.py --timeline``, 320 images). A joined cluster
    keeps the read stage even while it has one node: an autoscaler may add nodes that cannot
    see /in. With GPUs a pool of preprocessing actors (up to ``workers_per_gpu`` per GPU)
    decodes for the model actors; CPU model actors decode their own images (see ``actors``).
    A pool of several actors waits until every one is up, so that one quick actor does not
    take the whole index while the others are still loading. Ray Data
    restarts actors (its default ``max_restarts=-1``) and retries their lost batches when a
    worker or a node dies.
    """
    nodes = alive_nodes()  # one view of the cluster for the plan, the gate and the read stage
    plan = plan_actors(params, gpu_ids, nodes)
    # Wait for every model actor before dispatching (Ray Data then holds every stage,
    # reading included). Not needed for one actor on one node, where plan_actors already
    # checked the CPUs: the first batches are queued while the model loads.
    gate = plan.count > 1 or nodes > 1
    context = DataContext.get_current()
    context.wait_for_min_actors_s = ACTOR_START_TIMEOUT_S if gate else -1
    # Every block is read on the driver's node, so Ray Data's actor locality would hand each
    # one to that node's model actors first, up to their in-flight limit, and a small set
    # might never reach another node. The least busy actor gets it instead; a block is only
    # the encoded images, cheap to move.
    context.execution_options.actor_locality_enabled = False
    bundle_ref = ray.put(bundle)
    batch_size = params.samples_per_gpu
    block = rows_per_block(len(images), batch_size, plan)
    blocks = max(1, min(len(images) // block, 10_000))
    ds = ray.data.from_items([{"path": p} for p in images], override_num_blocks=blocks)
    local = local_ray(params.ray_address, nodes)
    if not local:  # on a local Ray every actor sees /in
        ds = ds.map_batches(read_batch, batch_size=block, num_cpus=0, compute=TaskPoolStrategy(size=READ_TASKS),
                            label_selector=driver_node_label())
    steps = inference_pipeline(bundle.cfg)  # the preprocessors need the pipeline, not the weights
    if gpu_ids:
        ds = ds.map_batches(PreprocessActor, fn_constructor_kwargs={"steps": steps, "size": bundle.input_size},
                            batch_size=batch_size, num_cpus=PREPROCESS_CPUS,
                            compute=ActorPoolStrategy(min_size=1, max_size=max(1, params.workers_per_gpu) * plan.count))
    weights = getattr(params, "class_distribution_scores", None)
    spec = DetectorSpec(bundle=bundle_ref, task_id=task_id, use_gpu=bool(gpu_ids), algorithm=algorithm,
                        conf_threshold=params.conf_threshold, class_weights=tuple(weights) if weights else None,
                        preprocess_steps=None if gpu_ids else tuple(steps),
                        features=algorithm is not None and getattr(params, "diversity", 0) > 0,
                        cpu_runtime=params.cpu_runtime)
    ds = ds.map_batches(
        DetectorActor,
        fn_constructor_kwargs={"spec": spec},
        batch_size=batch_size, num_cpus=plan.num_cpus, num_gpus=plan.num_gpus,
        compute=ActorPoolStrategy(size=plan.count, max_concurrent_calls_per_actor=plan.batches_at_once,
                                  enable_true_multi_threading=True))
    try:
        with local_cluster_autoscaler() if local else contextlib.nullcontext():
            yield from ds.iter_batches(batch_size=None, batch_format="numpy")
    except ray.exceptions.GetTimeoutError as error:
        what = f"{plan.count} GPU model actors" if gpu_ids else f"{plan.count} CPU model actors"
        raise YmirError(ErrorCode.NO_GPU if gpu_ids else ErrorCode.CONFIG,
                        f"the Ray cluster could not start {what} within {ACTOR_START_TIMEOUT_S} s: "
                        f"too few free {'GPUs' if gpu_ids else 'CPUs'} ({error})") from error
