"""The local Ray the executor starts for a task (``ray_session.start_or_join``), in a process
of its own as the entry starts it: what it must not do."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, run_entry
from ray_app.devices import container_cpus

#: the child: start the executor's local Ray, then print every process it started, one per line
CHILD = r'''
import os
import ray
from ray._private import services
from ray._private.node import Node
from ray_app.ray_session import LOCAL_RAY_LEAVES_OUT, _left_out, descendants, start_or_join

ray_get_node = services.get_node
start_or_join("", [])
assert all(getattr(Node, name) is not _left_out for name in LOCAL_RAY_LEAVES_OUT), "Node not restored"
assert services.get_node is ray_get_node, "get_node not restored"
for pid in descendants(os.getpid()):
    try:
        print(open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode().strip())
    except OSError:
        pass
ray.shutdown()
'''


def test_a_local_ray_starts_lean_and_never_reports_usage():
    """The local Ray starts no API server and no autoscaler monitor
    (``ray_session.LOCAL_RAY_LEAVES_OUT``), while its GCS, raylet and the raylet's dashboard
    agent run, and Ray's own ``Node`` and ``get_node`` are as they were afterwards. The API
    server is the one process that would send usage statistics to Ray's makers (its one module
    without a dashboard), so none is sent, whatever the environment says: the executor never
    reaches the network at run time. ``ray start`` reports by default: the image turns it off (``tests/test_image.py``), and
    :func:`ray_app.ray_session.join_as_node` passes ``--disable-usage-stats``."""
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "1"}  # what an environment may say
    proc = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, cwd=REPO,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    started = proc.stdout
    assert "gcs_server" in started and "raylet" in started and "DashboardAgent" in started, started
    assert "dashboard/dashboard.py" not in started and "autoscaler/_private/monitor.py" not in started, started


def test_a_ray_without_what_is_left_out_starts_in_full(monkeypatch, caplog):
    """A Ray other than the pinned one, whose ``Node`` lacks a method that
    ``LOCAL_RAY_LEAVES_OUT`` names, starts in full after one warning line, not with an error."""
    from ray._private import services
    from ray._private.node import Node

    from ray_app.ray_session import lean_local_start

    ray_get_node = services.get_node
    monkeypatch.delattr(Node, "start_monitor")
    with caplog.at_level("WARNING", logger="ray_app.ray_session"), lean_local_start() as left_out:
        assert left_out == ()
        assert Node.start_api_server.__name__ == "start_api_server" and services.get_node is ray_get_node
    assert "has no Node.start_monitor: the local Ray starts with its API server and autoscaler" in caplog.text


#: the child: start the executor's local Ray and say which GCS and how many CPUs it got
LOCAL = r'''
import os
import ray
from ray_app.ray_session import start_or_join

start_or_join("", [])
print("GCS", ray.get_runtime_context().gcs_address, "CPU", ray.cluster_resources().get("CPU"))
ray.shutdown()
'''


#: a client of the other Ray: its CPUs, once it answers
OTHER = r'''
import ray
ray.init(address="{address}")
print("CPU", ray.cluster_resources().get("CPU"))
ray.shutdown()
'''


def test_a_ray_already_on_the_machine_is_left_alone(tmp_path):
    """A Ray someone started on the machine (``ray start --head``, which also records itself
    as the machine's current cluster) is neither joined nor disturbed: the task starts a Ray
    of its own (``ray.init(address="local")``), sized to the machine, and the other one still
    answers afterwards."""
    import socket

    with socket.socket() as s:  # a free port for the other Ray's GCS
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray_cli = str(Path(sys.executable).parent / "ray")
    # a user's default environment (no address, no auth settings), and a HOME of the test's own
    # with no ~/.ray/auth_token: `ray start` then starts a Ray without authentication (it turns
    # token authentication on only when it finds a token), and the task leaves no token there
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    env["HOME"] = str(tmp_path)
    try:
        started = subprocess.run([ray_cli, "start", "--head", f"--port={port}", "--num-cpus=1",
                                  "--include-dashboard=false", "--disable-usage-stats"], env=env,
                                 capture_output=True, text=True, timeout=180)
        assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-3000:]
        proc = subprocess.run([sys.executable, "-c", LOCAL], env=env, capture_output=True, text=True, cwd=REPO,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        fields = proc.stdout.split()
        assert fields[0] == "GCS" and not fields[1].endswith(f":{port}"), proc.stdout
        assert float(fields[3]) == container_cpus(), proc.stdout
        assert not (tmp_path / ".ray" / "auth_token").exists()  # else the other Ray's clients would present it
        other = subprocess.run([sys.executable, "-c", OTHER.format(address=f"127.0.0.1:{port}")], env=env,
                               capture_output=True, text=True, cwd=REPO, timeout=300)
        assert other.returncode == 0 and other.stdout.split() == ["CPU", "1.0"], other.stdout + other.stderr[-3000:]
    finally:
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                text = cmdline.read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if f":{port} " in f"{text} " or f"port={port} " in f"{text} ":
                try:
                    os.kill(int(cmdline.parent.name), 9)
                except ProcessLookupError:
                    pass
        current = Path("/tmp/ray/ray_current_cluster")  # as `ray stop` does: no later ray.init() looks for it
        if current.is_file() and current.read_text().strip().endswith(f":{port}"):
            current.unlink()


@pytest.mark.slow
def test_a_home_the_user_cannot_write(infer_task, tmp_path):
    """``docker run --user UID:GID`` with a UID the image does not know: Docker sets HOME to
    ``/``, which that user cannot write. Ray wrote the local Ray's token to ``~/.ray/auth_token``
    before it started, so every task failed there (300001). Root, which runs the tests, may
    write anywhere, so this HOME lies under a regular file: creating anything in it fails at
    the same call (``ENOTDIR``, where that user gets ``EACCES``). The task ends done, says in
    one line which HOME its processes used instead, no library warns about it (matplotlib
    did, twice), and no token is written there."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    run = run_entry(infer_task(run_mining=False, run_infer=True), extra_env={"HOME": str(blocker / "home")})
    private = re.search(r"HOME \S+ is not a folder this user \(uid \d+\) can write.*use (\S+)$", run.output, re.M)
    try:
        assert run.returncode == 0, run.output[-3000:]
        assert run.monitor()[2:4] == ["1.0000", "3"]
        assert private, run.output[-3000:]
        assert "starting a local Ray (" in run.output and ", token authentication)" in run.output
        assert "matplotlib" not in run.output, run.output[-3000:]
        assert not (Path(private.group(1)) / ".ray").exists()
    finally:
        if private:
            shutil.rmtree(private.group(1), ignore_errors=True)


@pytest.mark.slow
def test_a_local_ray_writes_no_token_file(infer_task, tmp_path):
    """With a usable HOME, HOME stays, and the local Ray's token stays in its processes'
    environment: Ray's own default wrote it to ``~/.ray/auth_token``, after which every ``ray``
    command of that user on the machine turns token authentication on."""
    home = tmp_path / "home"
    home.mkdir()
    run = run_entry(infer_task(run_mining=False, run_infer=True), extra_env={"HOME": str(home)})
    assert run.returncode == 0, run.output[-3000:]
    assert not (home / ".ray").exists(), sorted(p.name for p in (home / ".ray").iterdir())
    assert ", token authentication)" in run.output and "is not a folder this user" not in run.output


def test_ray_auth_mode_disabled_turns_the_local_token_off(monkeypatch):
    """An operator's ``RAY_AUTH_MODE=disabled`` (Ray's own setting) is kept: no token is made."""
    from ray_app.ray_session import local_ray_token

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    assert local_ray_token() is False
    assert "RAY_AUTH_TOKEN" not in os.environ


@pytest.mark.slow
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs to leave one out")
def test_the_local_ray_has_the_cpus_the_container_may_use(infer_task):
    """A task that may run on one CPU of this machine (as under ``docker run --cpuset-cpus 0``;
    ``--cpus`` quotas are read from the cgroup by Ray's own detection) starts a Ray of one CPU.
    It was given ``os.cpu_count()``, the host's CPUs."""
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(allowed)})  # the entry and every process it starts inherit it
    try:
        run = run_entry(infer_task(run_mining=False, run_infer=True))
    finally:
        os.sched_setaffinity(0, allowed)
    assert run.returncode == 0, run.output[-3000:]
    assert "starting a local Ray (1 CPUs, 0 GPUs" in run.output, run.output[-3000:]
