"""Pause points: places where a test can hold a run to inject a fault at a known moment.

A test that kills an actor, removes a node or sends SIGTERM "in the middle of a run" must
not depend on how fast the machine is: on a fast one the run is over before the fault
lands, on a slow one the fault lands before the moment it is meant to test. So the product
calls ``pause_point(event)`` at the moments such tests need (a model actor finished a batch,
a resume checkpoint is registered), and a test holds the run there:

1. the test sets ``RAY_APP_PAUSE_DIR`` to a folder (before the run, or the Ray cluster,
   starts: Ray's workers inherit it) and creates ``<folder>/<event>.hold``;
2. the first process to reach ``event`` claims the hold (an atomic rename to
   ``<event>.held-<pid>``), writes what it is (pid, node, what it did) to
   ``<event>.held-<pid>.json``, and waits while ``<event>.held-<pid>`` exists;
3. the test reads the JSON, injects its fault, and deletes ``<event>.held-<pid>`` to let
   it go on (a process it killed never does).

One hold file pauses one process once; several holds (``<event>.hold``, ``<event>.2.hold``,
...) pause as many. Without ``RAY_APP_PAUSE_DIR`` (production) a pause point is one
environment lookup and nothing else.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

PAUSE_DIR_VARIABLE = "RAY_APP_PAUSE_DIR"
#: a hold never left in place blocks longer than this (a test that died without releasing)
MAX_PAUSE_S = 900.0
POLL_S = 0.02


def pause_point(event: str, **info: Any) -> None:
    """Wait here while a test holds ``event`` (see the module docstring); ``info`` goes to the test."""
    folder = os.environ.get(PAUSE_DIR_VARIABLE)
    if not folder:
        return
    root = Path(folder)
    for hold in sorted(root.glob(f"{event}.hold")) + sorted(root.glob(f"{event}.*.hold")):
        held = hold.with_name(f"{hold.stem}.held-{os.getpid()}")
        try:
            hold.rename(held)  # atomic: one process wins each hold
        except OSError:
            continue
        record = held.with_name(held.name + ".json")
        record.with_suffix(".tmp").write_text(json.dumps({"pid": os.getpid(), **info}, default=str))
        record.with_suffix(".tmp").replace(record)
        deadline = time.monotonic() + MAX_PAUSE_S
        while held.exists() and time.monotonic() < deadline:
            time.sleep(POLL_S)
        return
