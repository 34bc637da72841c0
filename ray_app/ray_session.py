"""Starting or joining Ray, the same way for training, inference and mining."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ray_app.devices import container_cpus, container_gpus
from ray_app.protocol.errors import ErrorCode, YmirError
from ray_app.protocol.hyperparams import CommonParams

log = logging.getLogger(__name__)
T = TypeVar("T")


#: Ports of the Ray node this container becomes when it joins a cluster (see cluster/README.md):
#: pinned so that an operator knows what to open between the container and the cluster.
NODE_PORTS = ("--node-manager-port=6380", "--object-manager-port=6381",
              "--min-worker-port=10002", "--max-worker-port=10100")
#: How long to wait for the cluster's GCS to answer before giving up (300301)
CONNECT_TIMEOUT_S = 15
#: How long ``ray start`` may take to add this container as a node
JOIN_TIMEOUT_S = 120
#: Ray's token authentication (Ray 2.52+): the mode, and the token every node and driver presents
AUTH_MODE_VARIABLE = "RAY_AUTH_MODE"
AUTH_TOKEN_VARIABLE = "RAY_AUTH_TOKEN"
#: the hyperparameter that carries the token when the image's environment does not
TOKEN_HYPERPARAMETER = "ray_auth_token"


def cluster_address(address: str) -> str:
    """The cluster to join: the ``ray_address`` hyperparameter, else ``$RAY_ADDRESS``, else
    empty (start a local Ray)."""
    return address.strip() or os.environ.get("RAY_ADDRESS", "").strip()


def local_ray(address: str, nodes: int) -> bool:
    """Whether the task runs on a local Ray: one started for it (no ``ray_address``, no
    ``$RAY_ADDRESS``) with its one node, which no autoscaler grows. Every actor there sees /in
    and /out, and nothing drains the node. A joined cluster is never local, even with one node:
    an autoscaler may add nodes that see neither."""
    return not cluster_address(address) and nodes == 1


def use_auth_token(token: str) -> str:
    """Present a token to the cluster, if there is one: ``$RAY_AUTH_TOKEN`` (an operator baked
    it into a site-specific image) first, else the ``ray_auth_token`` hyperparameter (YMIR's
    ``docker run`` takes no per-task environment: ``config.yaml`` is the only channel).

    With a token this process and all it starts (``ray start``, Ray's workers on this node)
    run with ``RAY_AUTH_MODE=token`` (unless the environment sets a mode) and the token in
    ``RAY_AUTH_TOKEN``: the environment, never a file or a command line, so nothing under
    /out and no log line holds it. Returns where the token came from ("" for none)."""
    from_env = os.environ.get(AUTH_TOKEN_VARIABLE, "").strip()
    chosen = from_env or token.strip()
    if not chosen:
        return ""
    _present_token(chosen)
    return AUTH_TOKEN_VARIABLE if from_env else TOKEN_HYPERPARAMETER


def _present_token(token: str) -> None:
    """This process and every process it starts present ``token``: ``RAY_AUTH_TOKEN`` in the
    environment, and ``RAY_AUTH_MODE=token`` unless the environment sets a mode."""
    os.environ[AUTH_TOKEN_VARIABLE] = token
    os.environ.setdefault(AUTH_MODE_VARIABLE, "token")
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")  # Ray caches its config and token at import: read the environment again
    AuthenticationTokenLoader.instance().reset_cache()


def local_ray_token() -> bool:
    """Token authentication for the task's local Ray, with a token that lives only in the
    environment of the task's processes. Returns whether it is on.

    Ray (2.52+) turns token authentication on for every new local Ray and, when no token is
    set, writes a new one to ``~/.ray/auth_token`` before it starts. Under ``docker run --user
    UID:GID`` with a UID the image does not know, HOME is ``/``, which that user cannot write,
    and every task failed there before Ray started (300001, ``Permission denied: '/.ray'``). On
    a machine's own account the file stays, and from then on every ``ray`` command of that user
    turns token authentication on. So the local Ray gets a random 256-bit token (as Ray's own)
    in ``RAY_AUTH_TOKEN``, or the one the environment already holds; nothing is written.
    ``RAY_AUTH_MODE=disabled`` in the image's environment turns authentication off, as Ray's
    own setting."""
    if os.environ.get(AUTH_MODE_VARIABLE, "token").strip().lower() != "token":
        return False
    _present_token(os.environ.get(AUTH_TOKEN_VARIABLE, "").strip() or secrets.token_hex(32))
    return True


def check_authentication(address: str, token_source: str) -> None:
    """300301 within a second when the cluster wants a token this process does not have, or
    refuses the one it has (``ray.init`` would report a ``ConnectionError`` after ~20 s)."""
    from ray._raylet import GcsClient
    from ray.exceptions import AuthenticationError

    try:
        GcsClient(address=address)  # its first call to the GCS presents the token
    except AuthenticationError:
        if not token_source:
            raise YmirError(ErrorCode.NETWORK, f"the Ray cluster at {address} requires a token (token "
                                               f"authentication): give it in the hyperparameter "
                                               f"{TOKEN_HYPERPARAMETER}, or as {AUTH_TOKEN_VARIABLE} in the "
                                               "image's environment") from None
        raise YmirError(ErrorCode.NETWORK, f"the Ray cluster at {address} refused the token given in "
                                           f"{token_source}: it is not this cluster's token") from None


def check_reachable(address: str) -> None:
    """Fail fast with 300301 when the head's GCS port does not answer (``ray start`` and
    ``ray.init`` would otherwise retry for minutes)."""
    if address.startswith("ray://"):
        raise YmirError(ErrorCode.CONFIG, f"ray_address {address!r} is a Ray Client address; give the head's GCS "
                                          "address (host:6379): the executor joins the cluster as a node")
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host or address, int(port or 6379)), timeout=CONNECT_TIMEOUT_S):
            pass
    except (OSError, ValueError) as error:
        raise YmirError(ErrorCode.NETWORK, f"cannot reach the Ray cluster at {address}: {error}") from error


def this_machine_is_a_node() -> bool:
    """Whether a raylet already runs here (a Ray node on this machine, e.g. the head)."""
    try:
        from ray._private.services import find_node_ids  # what ray.init itself uses to find one
    except ImportError:  # pragma: no cover - a Ray without it: let ray.init decide
        return True
    return bool(find_node_ids())


def join_as_node(address: str, gpu_ids: list[int]) -> None:
    """``ray start --address``: this container becomes a Ray node with its own CPUs and GPUs,
    so the driver (which alone reads /in and writes /out) runs on a node of the cluster."""
    ray_cli = Path(sys.executable).with_name("ray")
    visible = container_gpus()
    gpu_ids = [g for g in gpu_ids if g < visible]  # the ones this container has
    command = [str(ray_cli), "start", f"--address={address}", f"--num-cpus={container_cpus()}",
               f"--num-gpus={len(gpu_ids)}", "--disable-usage-stats", *NODE_PORTS]
    env = dict(os.environ)
    if gpu_ids:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpu_ids)
    log.info("this container joins the cluster as a Ray node: %s", " ".join(command[1:]))
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=JOIN_TIMEOUT_S)
    except subprocess.TimeoutExpired as error:
        raise YmirError(ErrorCode.NETWORK, f"joining the Ray cluster at {address} took over {JOIN_TIMEOUT_S} s") \
            from error
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise YmirError(ErrorCode.NETWORK, f"could not join the Ray cluster at {address}: {tail[0]}")


#: What a local Ray leaves out of Ray's start: the method of ``ray._private.node.Node`` that would
#: start it, and its name in the log. A local Ray is this container alone, started for the task
#: and ended with it. Ray's API server (``dashboard.py``, started even with
#: ``include_dashboard=False``) then serves one module, the usage reports that the executor never
#: sends, yet ``ray.init`` waits for it to publish its address before it starts the raylet. The
#: autoscaler's monitor (``monitor.py``) has nothing to scale, and boots on the same cores
#: meanwhile. Without both, ``ray.init`` took 3.06 s instead of 4.08; with the registration
#: also seen sooner (:func:`_get_node_once_registered`), 2.29 s instead of 4.14 (medians of 6
#: alternated runs on 2 cores, ``bench/ray_start.py --full``).
LOCAL_RAY_LEAVES_OUT = {
    "start_api_server": "API server",
    "start_monitor": "autoscaler monitor",
}


#: How often a local Ray's start asks the GCS whether the raylet has registered, and for how
#: long at most (Ray's own wait, ``node.py``'s ``raylet_start_wait_time_s``)
REGISTRATION_POLL_S = 0.05
REGISTRATION_TIMEOUT_S = 30


def _left_out(self: object, *args: object, **kwargs: object) -> None:
    """Stands in for a :data:`LOCAL_RAY_LEAVES_OUT` method while a local Ray starts."""


def _get_node_once_registered(ray_get_node: Callable[[str, str], dict]) -> Callable[[str, str], dict]:
    """Ray's ``services.get_node``, called once the GCS lists the node as alive.

    ``ray.init`` calls it as soon as it has started the raylet, and Ray's C++ side asks the GCS
    again only a whole second after each miss (``GlobalStateAccessor::GetNode``), so
    ``ray.init`` went on up to a second after the raylet had registered: 1.78-1.85 or 2.81 s,
    as the registration fell, against 1.51-1.82 s when asked every 50 ms (6 alternated runs
    each, 2 cores). Each ask is one GCS call for the one node."""
    from ray._raylet import GcsClient, NodeID
    from ray.core.generated.gcs_pb2 import GcsNodeInfo
    from ray.core.generated.gcs_service_pb2 import GetAllNodeInfoRequest

    def get_node(gcs_address: str, node_id: str) -> dict:
        client = GcsClient(address=gcs_address)
        selectors = [GetAllNodeInfoRequest.NodeSelector(node_id=NodeID.from_hex(node_id).binary())]
        deadline = time.monotonic() + REGISTRATION_TIMEOUT_S
        while time.monotonic() < deadline and not client.get_all_node_info(
                timeout=REGISTRATION_TIMEOUT_S, node_selectors=selectors, state_filter=GcsNodeInfo.GcsNodeState.ALIVE):
            time.sleep(REGISTRATION_POLL_S)
        return ray_get_node(gcs_address, node_id)  # Ray's own call, and its error after its own wait

    return get_node


@contextmanager
def lean_local_start() -> Iterator[tuple[str, ...]]:
    """While a local Ray starts in this block, Ray starts none of :data:`LOCAL_RAY_LEAVES_OUT`,
    and learns that its raylet has registered within :data:`REGISTRATION_POLL_S` of it
    (:func:`_get_node_once_registered`). Yields the methods left out: none, with one warning
    line, if this Ray lacks one of the pieces changed (a Ray other than the pinned one), which
    then starts as Ray starts it. Ray's GCS, raylet, dashboard agent (the raylet waits for it),
    runtime-env agent and log monitor start as always. Everything is restored on leaving."""
    from ray._private import services
    from ray._private.node import Node

    pieces = {(Node, name): _left_out for name in LOCAL_RAY_LEAVES_OUT}
    missing = [f"{owner.__name__}.{name}" for owner, name in [*pieces, (services, "get_node")]
               if not callable(getattr(owner, name, None))]
    if missing:
        log.warning("Ray %s has no %s: the local Ray starts with its API server and autoscaler",
                    ray.__version__, " or ".join(missing))
        yield ()
        return
    pieces[(services, "get_node")] = _get_node_once_registered(services.get_node)
    saved = {(owner, name): getattr(owner, name) for owner, name in pieces}
    try:
        for (owner, name), replacement in pieces.items():
            setattr(owner, name, replacement)
        yield tuple(LOCAL_RAY_LEAVES_OUT)
    finally:
        for (owner, name), original in saved.items():
            setattr(owner, name, original)


def start_or_join(address: str, gpu_ids: list[int], auth_token: str = "") -> tuple[str, bool]:
    """Join the cluster at ``address`` (or ``$RAY_ADDRESS``), presenting ``auth_token`` (see
    :func:`use_auth_token`), else start a local Ray sized to this container with only the
    GPUs in ``gpu_ids`` visible, no dashboard (see :func:`ray_session`) and a token kept in
    the environment (:func:`local_ray_token`). Returns the cluster's address ("" for a local
    Ray) and whether this container joined it as a node."""
    address = cluster_address(address)
    if not address:
        if gpu_ids:
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpu_ids)
        auth = "token authentication" if local_ray_token() else f"no authentication ({AUTH_MODE_VARIABLE})"
        cpus = container_cpus()
        with lean_local_start() as left_out:
            parts = ["dashboard", *(LOCAL_RAY_LEAVES_OUT[name] for name in left_out)]
            log.info("starting a local Ray (%d CPUs, %d GPUs, no %s, %s)", cpus, len(gpu_ids),
                     " or ".join(filter(None, (", ".join(parts[:-1]), parts[-1]))), auth)
            asked = time.monotonic()
            # address="local": always a new Ray of our own, even if another runs on this machine.
            # ray.init waits for Ray's GCS, then its raylet, which registers once its dashboard
            # agent (a Python process) is up
            ray.init(address="local", num_cpus=cpus, num_gpus=len(gpu_ids), include_dashboard=False,
                     log_to_driver=True, configure_logging=False)
        log.info("local Ray up in %.1f s", time.monotonic() - asked)
        return "", False
    token_source = use_auth_token(auth_token)
    log.info("joining the Ray cluster at %s%s", address,
             f" (token authentication, token from {token_source})" if token_source else "")
    check_reachable(address)
    check_authentication(address, token_source)
    started_node = False
    if not this_machine_is_a_node():
        join_as_node(address, gpu_ids)
        started_node = True
    ray.init(address=address, log_to_driver=True)
    log.info("Ray cluster: %d node(s), %s", alive_nodes(),
             {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")})
    return address, started_node


@contextmanager
def ray_session(address: str, gpu_ids: list[int], auth_token: str = "",
                prepare: Callable[[], T] | None = None) -> Iterator[T | None]:
    """Ray for one task (see :func:`start_or_join`), ended or left with the task. A Ray
    already initialised in this process (tests, notebooks) is used as it is and left running.

    ``prepare`` (the driver's heavier work before it needs Ray: imports, the model stage or the
    training config; bad input is checked before, so that it fails before Ray starts) runs in
    a thread while Ray starts: the two wait on different things, and one after the
    other they cost the sum (2.4 s of the driver's against 3.5 s of Ray's on 2 cores,
    ``bench/infer_bench.py --timeline``). The session yields its result; its error is raised
    here, after Ray has started, and ends the session like any other.

    A local Ray has no dashboard: its head and module processes (11 of the 19 processes a local
    Ray starts on 2 cores) cost 0.9 s of CPU, and its port is not reachable outside the YMIR
    container anyway. Nothing in Ray Data needs it; the one part of Ray Train that does (the
    placement-group cleaner, which asks its state API) is left out on a local Ray
    (``ray_app.train.trainer``). To watch a task in a dashboard, run it on a cluster
    (``ray_address``)."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="prepare") as pool:
        prepared = pool.submit(prepare) if prepare else None
        if ray.is_initialized():
            yield prepared.result() if prepared else None
            return
        address, started_node = start_or_join(address, gpu_ids, auth_token)
        try:
            yield prepared.result() if prepared else None
        finally:
            if address or not _PROCESS_END.armed:  # a local Ray under the entry is left for end_process
                ray.shutdown()
            if started_node:  # leave the cluster: this container's node goes away with the task
                subprocess.run([str(Path(sys.executable).with_name("ray")), "stop"], capture_output=True, timeout=60)


@dataclass
class _ProcessEnd:
    """Whether the local Ray is left for :func:`end_process` instead of ``ray.shutdown()``."""

    armed: bool = False  # set by the entry: the process ends right after the task


_PROCESS_END = _ProcessEnd()


def end_with_process() -> None:
    """Leave the local Ray that :func:`ray_session` starts running at the end of the session,
    for :func:`end_process` to end. Only for a process that ends with its task (the entry)."""
    _PROCESS_END.armed = True


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, theirs, ...), read from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:  # "pid (name) state ppid ...": the name may hold spaces and parentheses
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # ended meanwhile
        children.setdefault(parent, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def end_process(code: int) -> None:
    """End this process now with ``code``, and the local Ray it started with it.

    ``ray.shutdown()`` asks each Ray process to stop and waits for it (1.4 s on 2 cores,
    ``bench/infer_bench.py``), and the interpreter's own teardown follows. Once the task's
    outputs are written (each atomically, with fsync) nothing is left to save: every process
    this one started (the local Ray's GCS, raylet, dashboard and their workers) gets SIGKILL,
    the logs are flushed, and the process exits without its teardown. Joined clusters are not
    touched: :func:`ray_session` has already disconnected from them, so Ray is still
    initialised here only when a local Ray was left running.
    """
    if _PROCESS_END.armed and ray.is_initialized():
        for pid in descendants(os.getpid()):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def alive_nodes() -> int:
    """How many nodes the Ray this process is connected to has now."""
    return sum(1 for node in ray.nodes() if node["Alive"])


def node_cpus() -> list[float]:
    """The CPUs of each alive node of the Ray this process is connected to."""
    return [float(node["Resources"].get("CPU", 0)) for node in ray.nodes() if node["Alive"]]


def driver_node_label() -> dict[str, str]:
    """A label selector for the driver's node (Ray labels every node with its id)."""
    return {"ray.io/node-id": ray.get_runtime_context().get_node_id()}


def on_this_node() -> NodeAffinitySchedulingStrategy:
    """Schedule an actor on the driver's node: the one that owns /in and /out."""
    return NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)


def check_gpus(params: CommonParams) -> list[int]:
    """The GPUs asked for, checked against what this container sees (300102 if none).

    On a cluster the GPUs are the cluster's: the count is checked once joined
    (:func:`check_cluster_gpus`)."""
    gpu_ids = params.gpu_ids
    if not gpu_ids or cluster_address(params.ray_address):
        return gpu_ids
    visible = container_gpus()
    if not visible:
        raise YmirError(ErrorCode.NO_GPU, f"gpu_id {params.gpu_id!r} was given but no GPU is visible in the container")
    if max(gpu_ids) >= visible:
        raise YmirError(ErrorCode.GPU_MISMATCH, f"gpu_id {params.gpu_id!r} asks for GPU {max(gpu_ids)} but only "
                                                f"{visible} are visible")
    return gpu_ids


def check_cluster_gpus(needed: int) -> None:
    """300102 when the Ray cluster (local or joined) has fewer GPUs than ``gpu_id`` names."""
    available = ray.cluster_resources().get("GPU", 0)
    if needed > available:
        raise YmirError(ErrorCode.NO_GPU, f"gpu_id names {needed} GPU(s) but the Ray cluster has {available:g}")
