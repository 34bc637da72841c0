"""Model files: written so they load with ``torch.load(weights_only=True)``, and read
without ever executing pickled code.

Trust decisions, deliberately:
- Files we write for YMIR (stages) and for Ray Train (resume state) hold only tensors,
  numbers, strings, lists, tuples and dicts. mmengine's message hub (``HistoryBuffer``
  objects, numpy arrays and a pickled ``getattr``) is dropped from resume state: the
  loss-smoothing windows restart after a resume, nothing else changes.
- Files from ``/in/models`` (the user's, or foreign mmyolo checkpoints) are read only by
  torch's restricted unpickler (``weights_only=True``), whatever their format (zip or
  legacy), with :data:`SAFE_GLOBALS` allowed beside torch's own: numpy arrays and scalars,
  plain containers, and mmengine's ``HistoryBuffer`` and the ``getattr`` it pickles as inert
  stand-ins. Any other global is refused (error 300004).
"""

from __future__ import annotations

import codecs
import collections
import io
import os
import pickle
import re
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ray_app.protocol.errors import ErrorCode, YmirError

EMPTY_MESSAGE_HUB = {"log_scalars": {}, "runtime_info": {}, "resumed_keys": {}}
#: meta keys kept in YMIR stage files (all plain values)
STAGE_META_KEYS = ("epoch", "iter", "seed", "experiment_name", "time", "mmengine_version", "dataset_meta")


class _Dropped:
    """Stands in for objects loading weights never needs (mmengine's ``HistoryBuffer``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


def _no_getattr(obj: Any, name: str) -> None:
    """``HistoryBuffer`` pickles its statistics methods as ``getattr(cls, name)``; the real
    ``getattr`` would let a file reach any attribute, so it is replaced by this."""
    return None


def _allowlist() -> dict[str, Any]:
    """``module.name`` -> object: what mmengine checkpoints pickle beyond torch's own safe
    globals (tensors, dtypes, ``OrderedDict``): numpy arrays and scalars, a few builtin
    containers, and inert stand-ins for the message hub's objects."""
    import torch._utils as torch_utils

    allowed: dict[str, Any] = {
        "collections.OrderedDict": collections.OrderedDict, "builtins.set": set, "builtins.frozenset": frozenset,
        "builtins.slice": slice, "builtins.complex": complex, "builtins.bytearray": bytearray,
        "_codecs.encode": codecs.encode, "torch.Size": torch.Size, "torch.device": torch.device,
        "numpy.ndarray": np.ndarray, "numpy.dtype": np.dtype,
        "numpy._core.multiarray._reconstruct": np._core.multiarray._reconstruct,
        "numpy.core.multiarray._reconstruct": np._core.multiarray._reconstruct,
        "numpy._core.multiarray.scalar": np._core.multiarray.scalar,
        "numpy.core.multiarray.scalar": np._core.multiarray.scalar,
        "mmengine.logging.history_buffer.HistoryBuffer": _Dropped,
        "builtins.getattr": _no_getattr, "__builtin__.getattr": _no_getattr,
    }
    allowed.update({f"torch._utils.{n}": getattr(torch_utils, n) for n in dir(torch_utils) if n.startswith("_rebuild")})
    allowed.update({f"torch.{n}": getattr(torch, n) for n in dir(torch) if isinstance(getattr(torch, n, None), torch.dtype)})
    allowed.update({f"numpy.dtypes.{n}": getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")})
    return allowed


#: ``(object, "module.name")`` pairs for ``torch.serialization.safe_globals``: the names a
#: checkpoint may hold beyond torch's defaults, each resolved to the object given (a stand-in
#: for the message hub's). torch's restricted unpickler resolves these and nothing else.
SAFE_GLOBALS = [(obj, name) for name, obj in _allowlist().items()]
#: ``safe_globals`` edits one process-wide set on entry and exit: one load at a time, so that
#: two threads (a model actor's, a driver's preparation) never see each other's half-set list
_LOAD_LOCK = threading.Lock()
_REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
#: torch's own lines around the cause of a refused load; one of them advises
#: ``weights_only=False``, which this executor never does, so none reaches the user
_TORCH_BOILERPLATE = ("Weights only load failed", "Please file an issue", "Check the documentation")


def _damaged(path: Path, cause: str) -> YmirError:
    return YmirError(ErrorCode.MODEL, f"model file {path} is damaged or not a PyTorch checkpoint: {cause}")


def _refusal(path: Path, error: pickle.UnpicklingError) -> YmirError:
    """One line for a load torch's restricted unpickler refused: the global it met, else its
    cause, without torch's surrounding lines."""
    text = str(error)
    found = _REFUSED_GLOBAL.search(text)
    if found:
        return YmirError(ErrorCode.MODEL, f"model file {path} was refused: it holds a pickled {found.group(1)}, "
                                          "which is not allowed")
    causes = []
    for line in text.splitlines():
        cause = line.split("WeightsUnpickler error:")[-1].strip()
        if cause and not cause.startswith(_TORCH_BOILERPLATE):
            causes.append(cause)
    return _damaged(path, "; ".join(causes) or "refused by the safe loader")


def load_checkpoint_file(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint from ``/in`` or anywhere untrusted, as a dict, without running code.

    One ``torch.load(weights_only=True)``: torch's restricted unpickler, for zip and legacy
    files alike, with :data:`SAFE_GLOBALS` allowed (mmengine checkpoints carry a message hub
    and numpy values). No unrestricted unpickler ever sees the file: an earlier version
    retried refused files with ``weights_only=False`` and its own ``pickle_module``, whose
    plain ``pickle.load`` torch calls first on a legacy (non-zip) file, which ran the code in
    a raw pickle (``tests/test_checkpoints.py::test_malicious_pickle_runs_nothing``). Missing,
    damaged or refused files are error 300004 naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise YmirError(ErrorCode.MODEL, f"model file {path} does not exist")
    try:
        with _LOAD_LOCK, torch.serialization.safe_globals(SAFE_GLOBALS):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise _refusal(path, e) from None
    except (RuntimeError, OSError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise _damaged(path, str(e).splitlines()[0] if str(e) else type(e).__name__) from None
    if isinstance(checkpoint, dict) and "state_dict" not in checkpoint and all(
            isinstance(v, torch.Tensor) for v in checkpoint.values()):
        checkpoint = {"state_dict": checkpoint, "meta": {}}  # a bare state dict
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise YmirError(ErrorCode.MODEL, f"model file {path} has no state_dict")
    return checkpoint


def plain(value: Any) -> Any:
    """numpy scalars and arrays (in meta, scheduler states) as Python numbers and tensors."""
    if isinstance(value, dict):
        return type(value)((k, plain(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(plain(v) for v in value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    return value


def stage_checkpoint(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The weights-only part of an mmengine checkpoint, for a YMIR stage."""
    meta = checkpoint.get("meta", {}) or {}
    return plain({"meta": {k: meta[k] for k in STAGE_META_KEYS if k in meta}, "state_dict": checkpoint["state_dict"]})


def resume_checkpoint(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """A full mmengine checkpoint without its message hub: loadable with weights_only=True."""
    return plain({**checkpoint, "message_hub": EMPTY_MESSAGE_HUB})


def to_bytes(checkpoint: dict[str, Any]) -> bytes:
    """Serialise with ``torch.save``, then prove it loads with ``weights_only=True``."""
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    data = buffer.getvalue()
    torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)  # fails loudly if not
    return data
