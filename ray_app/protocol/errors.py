"""YMIR error codes, and the one exception type the entry turns into ``monitor.txt``."""

from __future__ import annotations

import re
from enum import IntEnum


class ErrorCode(IntEnum):
    """The codes the platform knows (see shared/ymir-protocol.md)."""

    CONFIG = 300001
    DATASET = 300002
    IMAGE = 300003
    MODEL = 300004
    GPU_MISMATCH = 300101
    NO_GPU = 300102
    OUT_OF_MEMORY = 300103
    NAN_LOSS = 300201
    NETWORK = 300301


class YmirError(Exception):
    """A failure the user can act on: a code for the platform and one readable line.

    Raise it wherever the cause is known; the entry point writes it to ``monitor.txt``
    (state 4) and exits non-zero. Anything else that escapes is reported as the most
    likely code for the task with its traceback.
    """

    def __init__(self, code: ErrorCode, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.code = ErrorCode(code)
        self.message = " ".join(message.split())  # one line, always
        #: the traceback to show below the line when it is not this process's own (a Train
        #: worker's, reported through the driver)
        self.detail = detail

    def __str__(self) -> str:
        """``[300004] message``: the code travels in the text, since the text is all Ray keeps
        of an error raised while an actor starts (``ActorDiedError`` holds its traceback as a
        string); :func:`describe` reads it back."""
        return f"[{int(self.code)}] {self.message}"

    def __reduce__(self):
        """Pickle by code and message. Ray sends an error raised in an actor or task back to
        the driver pickled; the default (``YmirError(*args)``, one argument) cannot be
        unpickled, and Ray would report an ``UnserializableException`` in its place."""
        return type(self), (self.code, self.message, self.detail)


def classify(error: BaseException) -> ErrorCode:
    """The most likely YMIR code for an exception nobody turned into a :class:`YmirError`.

    Ray wraps worker exceptions (``RayTaskError``, ``TrainingFailedError``); their text
    still carries the original's, which is what is matched here.
    """
    text = f"{type(error).__name__}: {error}".lower()
    if "out of memory" in text or "outofmemory" in text:
        return ErrorCode.OUT_OF_MEMORY
    if "no cuda gpus are available" in text or "found no nvidia driver" in text:
        return ErrorCode.NO_GPU
    if "cuda" in text:
        return ErrorCode.GPU_MISMATCH
    if "nan" in text.split() or "loss is nan" in text:
        return ErrorCode.NAN_LOSS
    return ErrorCode.CONFIG


#: What a user can change, for the codes where the fix is a hyperparameter
HINTS = {
    ErrorCode.OUT_OF_MEMORY: "try a smaller samples_per_gpu (or img_size)",
    ErrorCode.NO_GPU: "give gpu_id only for GPUs the container (or the Ray cluster) has",
    ErrorCode.NAN_LOSS: "try a smaller learning_rate",
}


#: the last traceback line of a YmirError, inside the text of a Ray error that wrapped it
_WRAPPED = re.compile(r"YmirError: \[(\d{6})\] ([^\n]+)")


def describe(error: BaseException) -> tuple[ErrorCode, str]:
    """Code and one-line message for an exception nobody turned into a :class:`YmirError`,
    with what to try where the code has an obvious remedy (out of memory: a smaller batch).
    A YmirError raised in a Ray actor or worker and wrapped by Ray keeps its own code and
    message."""
    wrapped = _WRAPPED.search(str(error))
    if wrapped:
        return ErrorCode(int(wrapped.group(1))), wrapped.group(2).strip()
    code = classify(error)
    text = " ".join(f"{type(error).__name__}: {error}".split())
    if len(text) > 500:  # Ray's wrapped errors carry whole tracebacks; those go below the line
        text = text[:500] + " ..."
    hint = HINTS.get(code)
    return code, f"{text} ({hint})" if hint else text
