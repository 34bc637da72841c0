"""Inference and mining: Ray Data streams the candidates to a pool of model actors."""

import os
import time

#: when this process began to load the inference modules: in a model actor's process that is
#: the first thing it does for the actor, so its ready line counts its imports (torch,
#: mmengine and these modules) from here
LOADING_SINCE = time.monotonic()


def _process_age() -> float | None:
    """Seconds since this process started, from Linux's ``/proc/self/stat`` (None elsewhere)."""
    try:
        with open("/proc/self/stat") as f:
            started = int(f.read().rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")
        return max(0.0, time.clock_gettime(time.CLOCK_BOOTTIME) - started)
    except (OSError, ValueError, IndexError, AttributeError):
        return None


#: how old this process was at ``LOADING_SINCE``: in a model actor's process, the worker's own
#: start before it (Python, Ray's core worker, Ray Data's wrapper of the actor class with
#: ``ray.data``'s imports), and any time it waited idle if Ray had started it beforehand
PROCESS_AGE_AT_LOADING = _process_age()
