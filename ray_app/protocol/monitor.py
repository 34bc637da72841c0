"""``monitor.txt``: the one progress channel the platform polls.

First line, tab separated: ``task_id  timestamp  percent  state[  code  message]``; the
lines after it are free text (a stack trace on error). The file is rewritten, never
appended, and always atomically.
"""

from __future__ import annotations

import os
import time
from enum import IntEnum

from ray_app.protocol.atomic import atomic_write_text
from ray_app.protocol.errors import ErrorCode


class TaskState(IntEnum):
    PENDING = 1
    RUNNING = 2
    DONE = 3
    ERROR = 4


def monitor_line(task_id: str, percent: float, state: TaskState, code: int | None = None, message: str = "") -> str:
    """The first line of ``monitor.txt`` (no newline)."""
    percent = min(1.0, max(0.0, float(percent)))
    fields = [task_id, f"{time.time():.6f}", f"{percent:.4f}", str(int(state))]
    if state == TaskState.ERROR:
        fields += [str(int(code or ErrorCode.CONFIG)), " ".join(str(message).split()) or "error"]
    return "\t".join(fields)


class Monitor:
    """Progress of one run, with a span of [0, 1] given to each sub-task.

    Mining and infer in one run map to [0, 0.5] and [0.5, 1]: ``monitor.span(0.5, 1)``
    returns a monitor whose ``progress(0..1)`` lands in that half. Writes are throttled
    (a step of ``min_step`` or ``min_interval`` seconds) so per-iteration calls stay cheap.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        task_id: str,
        root: str | os.PathLike,
        span: tuple[float, float] = (0.0, 1.0),
        min_step: float = 0.005,
        min_interval: float = 5.0,
    ) -> None:
        self.path = path
        self.task_id = task_id
        self.root = root
        self.start, self.end = span
        self.min_step = min_step
        self.min_interval = min_interval
        self._last_percent = -1.0
        self._last_time = 0.0
        self.percent = self.start

    def span(self, start: float, end: float) -> "Monitor":
        """A monitor for a sub-task whose [0, 1] maps into [start, end] of this one."""
        width = self.end - self.start
        return Monitor(self.path, self.task_id, self.root,
                       (self.start + start * width, self.start + end * width), self.min_step, self.min_interval)

    def progress(self, fraction: float, force: bool = False) -> None:
        """Record the sub-task's progress, ``fraction`` in [0, 1]."""
        fraction = min(1.0, max(0.0, float(fraction)))
        self.percent = self.start + fraction * (self.end - self.start)
        now = time.monotonic()
        if (force or fraction in (0.0, 1.0) or self.percent - self._last_percent >= self.min_step
                or now - self._last_time >= self.min_interval):
            self._write(monitor_line(self.task_id, self.percent, TaskState.RUNNING))
            self._last_percent, self._last_time = self.percent, now

    def done(self) -> None:
        """The whole run finished: percent 1, state done."""
        self._write(monitor_line(self.task_id, 1.0, TaskState.DONE))

    def error(self, code: int, message: str, trace: str = "") -> None:
        """The run failed: state error with code and message, the trace below."""
        text = monitor_line(self.task_id, self.percent, TaskState.ERROR, code, message)
        self._write(text + ("\n" + trace.rstrip() if trace else ""))

    def _write(self, text: str) -> None:
        atomic_write_text(self.path, text + "\n", self.root)
