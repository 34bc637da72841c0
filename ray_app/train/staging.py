"""Training data for Train workers on other nodes: staged through Ray, no shared disk.

The YMIR container alone sees ``/in`` (the images) and ``/out`` (the COCO files made from
the index, the pretrained weights). A worker on another node asks a :class:`DatasetServer`
actor, which runs on the driver's node, for those files and the images the COCO files list,
writes them to its node's temp dir once (the first worker of a node stages, the others wait on
a file lock) and trains from there, its work dir in the same folder. A worker that finishes
removes its node's folder; once training has ended, whatever the outcome, the driver has every
node remove what is left (:func:`remove_staged_copies`): a run stopped by an error would
otherwise leave a copy of its dataset on every node that trained it, on a long-lived cluster
one per failed task.
Why staging and not streaming: mmengine's datasets and samplers read files by path every
epoch; staging once per node costs one transfer of the dataset per node, however many epochs
follow.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import uuid
from collections import deque
from pathlib import Path

import ray
from filelock import FileLock
from ray.actor import ActorHandle
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

log = logging.getLogger(__name__)

#: files per request to the server (a few MB each for typical YMIR images)
FILES_PER_REQUEST = 32
#: requests in flight per staging worker: transfer overlaps with writing
REQUESTS_IN_FLIGHT = 4
#: written after the last file: a node's staged copy is complete only with it
DONE_MARKER = ".staged"
#: how long the driver waits for the nodes to remove their staged copies
REMOVE_TIMEOUT_S = 60.0


@ray.remote(num_cpus=0)
class DatasetServer:
    """Serves this run's COCO files, the images they list and the extra files named (the
    pretrained weights), and nothing else."""

    def __init__(self, coco_files: list[str], extra_files: list[str]) -> None:
        self.coco_files, self.extra_files = list(coco_files), list(extra_files)
        self.token = uuid.uuid4().hex[:12]  # one run's copies are never taken for another's
        self.allowed: set[str] | None = None  # built on the first read: a one-machine run never reads

    def _allowed(self) -> set[str]:
        if self.allowed is None:
            self.allowed = set(self.coco_files) | set(self.extra_files)
            for coco_file in self.coco_files:
                self.allowed.update(image["file_name"] for image in json.loads(Path(coco_file).read_text())["images"])
        return self.allowed

    def files(self) -> tuple[list[str], list[str], str]:
        return self.coco_files, self.extra_files, self.token

    def read(self, paths: list[str]) -> list[bytes | None]:
        """The bytes of each path (``None`` for one that vanished; the dataset reports it)."""
        allowed = self._allowed()
        out: list[bytes | None] = []
        for path in paths:
            if path not in allowed:
                raise PermissionError(f"{path} is not part of this training run")
            try:
                out.append(Path(path).read_bytes())
            except OSError:
                out.append(None)
        return out


def stage_root(task_id: str, token: str) -> Path:
    """Where a node keeps its copy: its temp dir, one folder per run (Ray Train's restarts of
    the worker group find it again)."""
    return Path(tempfile.gettempdir()) / "ray_app" / f"staged-{task_id or 'task'}-{token}"


def remove_staged(task_id: str, token: str) -> bool:
    """Remove this node's copy of a run (:func:`stage_root`: its files and work dirs); whether
    there was one."""
    root = stage_root(task_id, token)
    if not root.exists():
        return False
    shutil.rmtree(root, ignore_errors=True)
    return True


def remove_staged_copies(server: ActorHandle, task_id: str) -> int:
    """Once training has ended: every alive node removes what is left of the run's staged copy
    (a task pinned to each node; the driver's node has none; a worker that finished removed its
    own). How many nodes still had one; a node that does not answer within
    ``REMOVE_TIMEOUT_S`` is named in a warning, never an error of the task."""
    token = ray.get(server.files.remote())[2]
    remove = ray.remote(num_cpus=0, max_retries=0)(remove_staged)
    pending = {remove.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False))
               .remote(task_id, token): node["NodeID"] for node in ray.nodes() if node["Alive"]}
    done, late = ray.wait(list(pending), num_returns=len(pending), timeout=REMOVE_TIMEOUT_S)
    removed = 0
    for ref in done:
        try:
            removed += bool(ray.get(ref))
        except Exception as error:  # the node went away: its temp dir with it
            log.warning("node %s did not remove its staged copy of the training data: %s", pending[ref][:8], error)
    for ref in late:
        log.warning("node %s did not remove its staged copy of the training data within %.0f s",
                    pending[ref][:8], REMOVE_TIMEOUT_S)
    return removed


def stage_dataset(server: ActorHandle, task_id: str) -> dict[str, str]:
    """This node's copy of the run's files: ``{original path: staged path}`` for the COCO
    files and the extra files.

    Images are renamed ``<n><suffix>`` (basenames may repeat across folders) and each staged
    COCO file lists the staged paths.
    """
    coco_files, extra_files, token = ray.get(server.files.remote())
    root = stage_root(task_id, token)
    root.mkdir(parents=True, exist_ok=True)
    staged = {c: root / f"{i}-{Path(c).name}" for i, c in enumerate(coco_files)}
    extras = {e: root / f"extra{i}-{Path(e).name}" for i, e in enumerate(extra_files)}
    mapping = {original: str(path) for original, path in (staged | extras).items()}
    with FileLock(str(root / ".lock")):
        if (root / DONE_MARKER).exists():
            return mapping
        contents = [json.loads(data) for data in ray.get(server.read.remote(coco_files))]
        local: dict[str, str] = {e: str(path) for e, path in extras.items()}
        for coco in contents:
            for image in coco["images"]:
                local.setdefault(image["file_name"], str(root / "images" / f"{len(local)}{Path(image['file_name']).suffix}"))
        (root / "images").mkdir(exist_ok=True)
        _copy(server, list(local.items()))
        for coco_file, coco in zip(coco_files, contents):
            for image in coco["images"]:
                image["file_name"] = local[image["file_name"]]
            staged[coco_file].write_text(json.dumps(coco))
        (root / DONE_MARKER).write_text(str(len(local)))
        print(f"staged {len(local) - len(extras)} training/validation images and {len(extras)} other file(s) to "
              f"{root} on node {ray.get_runtime_context().get_node_id()[:8]}", flush=True)
    return mapping


def _copy(server: ActorHandle, pairs: list[tuple[str, str]]) -> None:
    """Fetch ``(remote path, local path)`` pairs in chunks, a few requests in flight."""
    pending: deque[tuple[ray.ObjectRef, list[tuple[str, str]]]] = deque()
    for start in range(0, len(pairs), FILES_PER_REQUEST):
        chunk = pairs[start:start + FILES_PER_REQUEST]
        pending.append((server.read.remote([remote for remote, _ in chunk]), chunk))
        if len(pending) > REQUESTS_IN_FLIGHT:
            _write(*pending.popleft())
    while pending:
        _write(*pending.popleft())


def _write(ref: ray.ObjectRef, chunk: list[tuple[str, str]]) -> None:
    """Write one answered request's files, each under a temporary name then renamed."""
    for (_, local), data in zip(chunk, ray.get(ref)):
        if data is not None:  # a missing file stays missing: mmengine reports it like on one node
            tmp = f"{local}.part"
            Path(tmp).write_bytes(data)
            os.replace(tmp, local)
