"""The local Ray the executor starts for a task (``ray_session.start_or_join``), in a process
of its own as the entry starts it: what it must not do."""

from __future__ import annotations

import os
import subprocess
import sys

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
