"""What each Ray Train worker runs: an mmengine Runner in Ray Train's process group."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import ray.train
import torch
from mmengine.config import Config
from mmengine.runner import Runner

from ray_app.devices import model_device
from ray_app.protocol.errors import YmirError
from ray_app.train.config import set_dataset
from ray_app.train.failures import peer_gone, record_fatal
from ray_app.train.hooks import RESUME_FILE, FitStartingWeights, IterationsStarted, ymir_hooks
from ray_app.train.staging import stage_dataset


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a Train worker gets from the driver, typed, so that a misspelt field fails
    on the driver, not in a worker after a restart.

    It travels as an object reference (``train_loop_config={"spec": ray.put(spec)}``, read
    by :func:`worker_spec`): Ray Train hands ``train_loop_config`` to its controller and its
    callbacks as well, and a spec by value made the controller unpickle it, importing this
    module, torch's training stack and mmengine's Runner (0.7 s of CPU on 2 cores) before it
    could start the worker group."""

    cfg: Config
    model_name: str
    use_gpu: bool
    #: the run's scratch folder for work dirs, where this node can write it (see ``local_work_dir``)
    work_root: str
    #: ``TrainingOutputsActor`` on the driver's node: the only writer of /out
    outputs: Any
    #: ``DatasetServer`` on the driver's node, for workers on other nodes; None on a local Ray
    dataset_server: Any
    driver_node: str
    #: the train and val COCO files, as the driver wrote them
    coco_files: tuple[str, str]
    class_names: tuple[str, ...]
    task_id: str
    #: ``ymir_saved_file_patterns``: regular expressions of extra work-dir files saved with every stage
    saved_file_patterns: tuple[str, ...] = ()


def local_work_dir(preferred: str, rank: int) -> Path:
    """This worker's scratch folder: under the run's work root where this node can write
    it (one machine: under /out), else the node's temp dir (a remote node)."""
    for root in (Path(preferred), Path(tempfile.gettempdir()) / "ray_app"):
        try:
            path = root / f"rank{rank}"
            path.mkdir(parents=True, exist_ok=True)
            return path
        except OSError:
            continue
    raise OSError("no writable work dir")


def adapt_to_device(cfg: Config, use_gpu: bool, world_size: int) -> None:
    """Ray Train already created the process group: ``launcher='pytorch'`` makes mmengine
    reuse it. A single worker needs no DDP wrapper (``launcher='none'``: its gradient
    bucketing costs time for nothing). On CPU, DDP must not get ``device_ids`` and
    SyncBatchNorm cannot run."""
    cfg.launcher = "pytorch" if world_size > 1 else "none"
    cfg.env_cfg.setdefault("dist_cfg", {})["backend"] = "nccl" if use_gpu else "gloo"
    if not use_gpu:
        if cfg.optim_wrapper.get("type") == "AmpOptimWrapper":  # a GPU run placed on a CPU worker
            cfg.optim_wrapper.type = "OptimWrapper"
            cfg.optim_wrapper.pop("loss_scale", None)
        cfg.model_wrapper_cfg["device_ids"] = None
        cfg.model.use_syncbn = False
        cfg.env_cfg.cudnn_benchmark = False


def worker_spec(config: dict[str, Any]) -> WorkerSpec:
    """The :class:`WorkerSpec` in Ray Train's ``train_loop_config``."""
    return ray.get(config["spec"])


def train_worker(config: dict[str, Any]) -> None:
    """Ray Train's ``train_loop_per_worker``: build the Runner, resume if Ray restarted us.

    An error before the first iteration completes (config, Runner, datasets, starting
    weights) is recorded as one no restart can fix (see ``failures``), unless it is this
    rank's collective failing because a peer died."""
    spec = worker_spec(config)
    if ray.get(spec.outputs.fatal.remote()):
        return  # restarted after an error no restart can fix: end at once, the driver reports it
    cfg: Config = spec.cfg.copy()
    context = ray.train.get_context()
    rank = context.get_world_rank()
    try:
        use_gpu = model_device(spec.use_gpu) != "cpu"
    except YmirError as error:  # a GPU torch cannot use: no restart changes that
        record_fatal(spec.outputs, "finding this worker's GPU", spec.model_name, error)
        raise
    adapt_to_device(cfg, use_gpu, context.get_world_size())
    node = ray.get_runtime_context().get_node_id()
    remote = node != spec.driver_node
    print(f"[rank {rank}] Ray Train worker on node {node[:8]}"
          f"{' (another node than the driver: staging the data)' if remote else ''}", flush=True)
    stage_dir = None  # on another node: this run's folder there (data, work dir), removed when done
    if remote:  # /in and /out are not here
        staged = stage_dataset(spec.dataset_server, spec.task_id)
        train_json, val_json = spec.coco_files
        set_dataset(cfg, Path(staged[train_json]), Path(staged[val_json]), list(spec.class_names))
        if cfg.get("load_from"):
            cfg.load_from = staged[cfg.load_from]
        stage_dir = Path(staged[train_json]).parent
    work_dir = local_work_dir(str(stage_dir / "work") if stage_dir else spec.work_root, rank)
    cfg.work_dir = str(work_dir)
    tensorboard_dir = work_dir / "tensorboard"
    for backend in cfg.visualizer.vis_backends:
        if backend["type"] == "TensorboardVisBackend":
            backend["save_dir"] = str(tensorboard_dir)

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:  # Ray restarted the worker group after a failure
        with checkpoint.as_directory() as folder:
            shutil.copy(Path(folder) / RESUME_FILE, work_dir / RESUME_FILE)
        cfg.load_from = str(work_dir / RESUME_FILE)
        cfg.resume = True
        print(f"[rank {rank}] resuming from the last Ray Train checkpoint", flush=True)

    if not use_gpu:  # as many threads as CPUs Ray gave this worker
        torch.set_num_threads(max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1))))
    try:
        runner = Runner.from_cfg(cfg)
    except Exception as error:
        if not peer_gone(error):
            record_fatal(spec.outputs, "building the mmengine Runner", spec.model_name, error)
        raise
    started = IterationsStarted()
    runner.register_hook(started)
    runner.register_hook(FitStartingWeights())
    for hook in ymir_hooks(spec.outputs, tensorboard_dir, spec.saved_file_patterns):
        runner.register_hook(hook, priority="LOWEST")
    try:
        runner.train()
    except Exception as error:
        if not started.done and not peer_gone(error):
            record_fatal(spec.outputs, "preparing training (datasets, optimizer, starting weights, first iteration)",
                         spec.model_name, error)
        raise
    if stage_dir and context.get_local_rank() == 0:  # every rank is past the last validation: done with the copy
        shutil.rmtree(stage_dir, ignore_errors=True)
