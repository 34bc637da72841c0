"""``run_training``: YMIR training task -> Ray Train workers running the mmengine Runner.

Flow: validate hyperparameters -> convert the YMIR datasets to COCO under /out -> build
the mmengine config -> start/join Ray -> TorchTrainer with N workers (one per GPU, else
``cpu_num_workers`` on CPU) -> stages land in /out/models as validations complete.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow.fs
import ray

from ray_app.data.coco import to_coco
from ray_app.data.index import read_index
from ray_app.model_config.zoo import check_img_size, config_path
from ray_app.protocol.env import EnvConfig
from ray_app.protocol.errors import ErrorCode, YmirError
from ray_app.protocol.hyperparams import TrainingParams
from ray_app.protocol.monitor import Monitor
from ray_app.ray_session import (alive_nodes, check_cluster_gpus, check_gpus, local_ray, node_cpus, on_this_node,
                                 ray_session)
from ray_app.model_config.edit import parse_cfg_options
from ray_app.train.config import build_config, evaluate_config
from ray_app.train.outputs import TrainingOutputsActor
from ray_app.train.staging import DatasetServer, remove_staged_copies

if TYPE_CHECKING:
    from mmengine.config import Config
    from ray.train import ScalingConfig

log = logging.getLogger(__name__)

#: Ray Train restarts the worker group this many times after a worker dies
MAX_FAILURES = 3
#: How often Ray Train's controller polls its workers (``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S``,
#: Ray's default 2 s), unless the environment sets it. The controller notices the end of
#: training at its next poll: with 2 s, the task ended 2.1-2.9 s after the worker's last line;
#: with 0.5 s, 0.7-1.3 s (bench/train_bench.py's task, 2 cores). A poll is one remote call
#: per worker.
HEALTH_CHECK_INTERVAL_S = 0.5
#: Ray Train's preemption watcher (``RAY_TRAIN_ENABLE_PREEMPTION_WATCHER``) on a local Ray,
#: unless the environment sets it: off. It listens for a node being drained (an autoscaler
#: taking a spot node back) to tell the workers; a local Ray is this container alone, which
#: nothing drains, and the watcher is an actor process of its own that starts beside the
#: Runner's build (1.0 s of CPU, 196 MB resident on 2 cores). On a joined cluster it stays on.
LOCAL_PREEMPTION_WATCHER = "0"


def controller_environ(local: bool) -> dict[str, str]:
    """Ray Train settings read by its controller, which Ray Train starts with these variables
    from the driver's environment (where the environment sets one, it wins)."""
    environ = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": str(HEALTH_CHECK_INTERVAL_S)}
    if local:
        environ["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] = LOCAL_PREEMPTION_WATCHER
    return environ


@contextmanager
def environ_defaults(defaults: dict[str, str]) -> Iterator[None]:
    """``defaults`` in ``os.environ`` where unset, for the block only (a process that runs
    several tasks, as the tests do, does not carry one task's settings into the next)."""
    added = [name for name in defaults if name not in os.environ]
    os.environ.update({name: defaults[name] for name in added})
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


def cpus_per_worker(workers: int, node_cpus: list[float]) -> int:
    """The most whole CPUs each of ``workers`` CPU workers can hold with every one of them
    placed: the largest ``k`` with ``sum(floor(cpus / k)) >= workers`` over the nodes. On one
    node that shares its CPUs equally; on a cluster no worker asks for more than a node has
    (the cluster's total split equally could exceed every node, and the workers would never
    start). 0: not even one CPU each."""
    fits = [k for k in range(1, int(max(node_cpus, default=0)) + 1)
            if sum(int(cpus // k) for cpus in node_cpus) >= workers]
    return max(fits, default=0)


def scaling(params: TrainingParams, gpu_ids: list[int]) -> ScalingConfig:
    """One worker per GPU, else ``cpu_num_workers`` CPU workers with as many CPUs each as
    :func:`cpus_per_worker` allows (each worker's torch uses as many threads as it holds)."""
    from ray.train import ScalingConfig

    if gpu_ids:
        check_cluster_gpus(len(gpu_ids))
        return ScalingConfig(num_workers=len(gpu_ids), use_gpu=True, resources_per_worker={"GPU": 1, "CPU": 1})
    nodes = node_cpus()
    per_worker = cpus_per_worker(params.cpu_num_workers, nodes)
    if not per_worker:
        spread = f" over {len(nodes)} nodes ({', '.join(f'{c:g}' for c in sorted(nodes, reverse=True))} CPUs)"
        raise YmirError(ErrorCode.CONFIG, f"cpu_num_workers={params.cpu_num_workers} needs {params.cpu_num_workers} "
                                          f"CPUs but the Ray cluster has {sum(nodes):g}"
                                          + (spread if len(nodes) > 1 else ""))
    return ScalingConfig(num_workers=params.cpu_num_workers, use_gpu=False, resources_per_worker={"CPU": per_worker})


def storage_path(params: TrainingParams, scratch: Path, nodes: int) -> str:
    """Where Ray Train keeps resume checkpoints: ``ray_storage_path`` when given (shared
    storage: an NFS path mounted on every node, ``s3://``, ``gs://``), else under /out.

    Ray Train needs every worker to reach this storage; on a cluster of several nodes a path
    under the container's /out is not such a place, so the run is refused up front rather
    than failing once the workers start."""
    if params.ray_storage_path:
        return params.ray_storage_path
    if nodes > 1:
        raise YmirError(ErrorCode.CONFIG, f"training on a Ray cluster of {nodes} nodes needs ray_storage_path: "
                                          "storage every node can reach (an NFS path mounted on all nodes, s3://, "
                                          "gs://) for Ray Train's resume checkpoints")
    return str(scratch / "ray_results")


def remove_resume_state(storage: str, experiment: str) -> None:
    """Resume checkpoints are not needed once training is done: remove this run's folder."""
    try:
        filesystem, root = pyarrow.fs.FileSystem.from_uri(storage if "://" in storage else str(Path(storage).resolve()))
        filesystem.delete_dir(f"{root.rstrip('/')}/{experiment}")
    except (OSError, pyarrow.ArrowException) as error:  # leftovers are harmless; say so and go on
        log.warning("could not remove Ray Train's resume state under %s: %s", storage, error)


def convert_datasets(env: EnvConfig, params: TrainingParams, monitor: Monitor) -> tuple[tuple[str, str], int]:
    """The training and validation sets as COCO files under /out/ray_app/data, checked before
    any work (a bad index or a set without boxes fails before Ray starts): ((train.json,
    val.json), training images)."""
    out_root = Path(env.output.root_dir)
    data = out_root / "ray_app" / "data"
    train_pairs = read_index(env.input.training_index_file, "training", with_annotations=True)
    val_pairs = read_index(env.input.val_index_file, "validation", with_annotations=True)
    train_report = to_coco(train_pairs, params.class_names, params.export_format, data / "train.json", out_root,
                           "training")
    to_coco(val_pairs, params.class_names, params.export_format, data / "val.json", out_root, "validation")
    if train_report.boxes == 0:
        raise YmirError(ErrorCode.DATASET, f"the training set has no usable box in {train_report.images} images: "
                                           "nothing to learn")
    monitor.progress(0.01, force=True)
    return (str(data / "train.json"), str(data / "val.json")), train_report.images


def build_run_config(env: EnvConfig, params: TrainingParams, coco_files: tuple[str, str], images: int,
                     world: int, use_gpu: bool) -> Config:
    """The mmyolo config of the run and its starting weights: the driver's work that needs
    mmengine, mmyolo and torch, run while Ray starts (``ray_session``). Ray Train's modules
    and the worker's (1.8 s of imports on 2 cores) are loaded here too."""
    import ray_app.train.trainer  # noqa: F401
    import ray_app.train.worker  # noqa: F401
    from ray_app.train.pretrained import pretrained_weights

    out_root = Path(env.output.root_dir)
    scratch = out_root / "ray_app"
    iters_per_epoch = math.ceil(images / (params.samples_per_gpu * world))
    cfg = build_config(params, Path(coco_files[0]), Path(coco_files[1]), scratch / "work", iters_per_epoch,
                       use_gpu=use_gpu)
    if "load_from" not in parse_cfg_options(params.cfg_options):
        start = pretrained_weights(params.pretrained_model_params, env.input.models_dir,
                                   config_path(params.model_name), scratch / "pretrained.pth", str(out_root))
        cfg.load_from = str(start) if start else None
    return cfg


def run_training(env: EnvConfig, monitor: Monitor, params: TrainingParams) -> None:
    """Train, writing stages, result.yaml, tensorboard events and progress under /out
    (``params``: the task's hyperparameters, read by the entry, which plans the export with them)."""
    check_img_size(params.model_name, params.img_size)  # an unknown model_name lists the valid ones
    gpu_ids = check_gpus(params)
    scratch = Path(env.output.root_dir) / "ray_app"
    config_name = f"{params.model_name}_config.py"

    coco_files, images = convert_datasets(env, params, monitor)
    world = len(gpu_ids) or params.cpu_num_workers
    session = ray_session(params.ray_address, gpu_ids, params.ray_auth_token.get_secret_value(),
                          prepare=lambda: build_run_config(env, params, coco_files, images, world, bool(gpu_ids)))
    with session as cfg:
        from ray.train import CheckpointConfig, FailureConfig, RunConfig

        from ray_app.train.trainer import YmirTorchTrainer
        from ray_app.train.worker import WorkerSpec, train_worker

        nodes = alive_nodes()  # one view of the cluster for the storage and the actors
        local = local_ray(params.ray_address, nodes)
        outputs = TrainingOutputsActor.options(scheduling_strategy=on_this_node()).remote(
            env, params.max_keep_checkpoints, evaluate_config(cfg), config_name, cfg)
        # only workers on other nodes ask it: none on a local Ray (one actor process less)
        server = None if local else DatasetServer.options(scheduling_strategy=on_this_node()).remote(
            list(coco_files), [cfg.load_from] if cfg.get("load_from") else [])
        storage = storage_path(params, scratch, nodes)
        spec = WorkerSpec(cfg=cfg, model_name=params.model_name, use_gpu=bool(gpu_ids),
                          work_root=str(scratch / "work"), outputs=outputs, dataset_server=server,
                          driver_node=ray.get_runtime_context().get_node_id(), coco_files=coco_files,
                          class_names=tuple(params.class_names), task_id=env.task_id,
                          saved_file_patterns=params.saved_file_patterns)
        trainer = YmirTorchTrainer(
            train_worker,
            outputs=outputs,
            local_ray=local,
            train_loop_config={"spec": ray.put(spec)},  # by reference: see WorkerSpec
            scaling_config=scaling(params, gpu_ids),
            run_config=RunConfig(
                name=f"ymir-{env.task_id}",
                storage_path=storage,
                failure_config=FailureConfig(max_failures=MAX_FAILURES),
                checkpoint_config=CheckpointConfig(num_to_keep=2),
            ),
        )
        log.info("training %s on %d %s worker(s), %d epochs", params.model_name, world,
                 "GPU" if gpu_ids else "CPU", params.max_epochs)
        error: Exception | None = None
        try:
            with environ_defaults(controller_environ(local)):
                trainer.fit()
        except Exception as e:  # reported below, after the error a worker recorded (if any)
            error = e
        if server is not None:  # other nodes' copies of the data, whatever the outcome
            try:
                left = remove_staged_copies(server, env.task_id)  # a finished worker removes its own
                if left:
                    log.info("removed the staged training data a stopped run left on %d other node(s)", left)
            except Exception as cleanup:  # never in the way of the run's own outcome
                log.warning("could not remove the staged training data from the other nodes: %s", cleanup)
        failure = ray.get(outputs.fatal.remote())  # e.g. NaN loss, recorded by the worker that hit it
        if failure:
            raise failure from error
        if error is not None:
            raise error
        stages = ray.get(outputs.summary.remote())
    if not stages:
        raise YmirError(ErrorCode.CONFIG, "training ended without a validated model stage")
    remove_resume_state(storage, f"ymir-{env.task_id}")
    log.info("training done: stages %s", stages)
