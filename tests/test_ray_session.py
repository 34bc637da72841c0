"""The local Ray the executor starts for a task (``ray_session.start_or_join``), in a process
of its own as the entry starts it: what it must not do."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO

#: the child: start the executor's local Ray, then read what Ray's dashboard process decided
#: about usage reports (it logs one line at its start), waiting for that line, not for a time
CHILD = r'''
import time
from pathlib import Path
import ray
from ray_app.ray_session import start_or_join

start_or_join("", [])
log = Path(ray._private.worker._global_node.get_logs_dir_path()) / "dashboard.log"
deadline = time.monotonic() + 120  # a bound for a broken Ray, not the wait itself
line = ""
while not line and time.monotonic() < deadline:
    text = log.read_text() if log.exists() else ""
    line = next((l for l in text.splitlines() if "Usage reporting is" in l), "")
    time.sleep(0.05)
print(line or "no usage line in " + str(log))
ray.shutdown()
'''


def test_a_local_ray_never_reports_usage():
    """Ray's dashboard process (it runs even with no dashboard) would send usage statistics to
    Ray's makers a minute after the start. ``ray.init`` of a Ray release turns that off, whatever
    the environment says (its nightly wheels ask instead); this holds Ray to it, since the
    executor never reaches the network at run time. ``ray start`` reports by default: the
    image turns it off (``tests/test_image.py``), and :func:`ray_app.ray_session.join_as_node`
    passes ``--disable-usage-stats``."""
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "1"}  # what an environment may say
    proc = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, cwd=REPO,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Usage reporting is disabled" in proc.stdout, proc.stdout + proc.stderr[-3000:]


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
    # a user's default environment (no address, no auth settings), and a HOME of the test's own:
    # the other Ray's token file (~/.ray/auth_token, made by `ray start`) stays in its folder
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
        assert float(fields[3]) == os.cpu_count(), proc.stdout
        other = subprocess.run([sys.executable, "-c", OTHER.format(address=f"127.0.0.1:{port}")],
                               env={**env, "RAY_AUTH_MODE": "token"},  # its token: $HOME/.ray/auth_token
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
