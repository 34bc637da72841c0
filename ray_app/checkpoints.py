"""Model files: written so they load with ``torch.load(weights_only=True)``, and read
without ever executing pickled code.

Trust decisions, deliberately:
- Files we write for YMIR (stages) and for Ray Train (resume state) hold only tensors,
  numbers, strings, lists, tuples and dicts. mmengine's message hub (``HistoryBuffer``
  objects, numpy arrays and a pickled ``getattr``) is dropped from resume state: the
  loss-smoothing windows restart after a resume, nothing else changes.
- Files from ``/in/models`` (the user's, or foreign mmyolo checkpoints) are read with
  ``weights_only=True``, or, for full mmengine checkpoints, with an allowlist unpickler:
  tensors, dtypes, plain containers and numpy arrays; mmengine's ``HistoryBuffer`` and the
  ``getattr`` it pickles become inert stand-ins. Any other global is refused (error 300004).
"""

from __future__ import annotations

import codecs
import collections
import io
import os
import pickle
import re
import types
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
    """``module.name`` -> object: tensors, dtypes, plain containers, numpy arrays."""
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


class _AllowlistUnpickler(pickle.Unpickler):
    """Resolves only the globals of :func:`_allowlist`; anything else stops the load."""

    allowed = _allowlist()

    def find_class(self, module: str, name: str) -> Any:
        key = f"{module}.{name}"
        if key in self.allowed:
            return self.allowed[key]
        raise pickle.UnpicklingError(f"Unsupported global: {key}")


#: a ``pickle_module`` for ``torch.load``: torch only uses its ``Unpickler`` and ``load``
allowlist_pickle = types.SimpleNamespace(Unpickler=_AllowlistUnpickler, load=pickle.load,
                                         __name__="ray_app.allowlist_pickle")


def load_checkpoint_file(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint from ``/in`` or anywhere untrusted, as a dict, without running code.

    First ``weights_only=True`` (torch's own safe loader); for mmengine checkpoints that
    carry a message hub, ``torch.load`` with our allowlist unpickler, which resolves no
    global outside :func:`_allowlist` (the message hub's objects become inert stand-ins).
    ``weights_only=False`` is passed only because torch requires it with a custom
    ``pickle_module``; no arbitrary global can be reached. Missing, damaged or refused
    files are error 300004 naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise YmirError(ErrorCode.MODEL, f"model file {path} does not exist")
    try:
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            checkpoint = torch.load(path, map_location="cpu", weights_only=False, pickle_module=allowlist_pickle)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: (\S+)", str(e))
        if not found:  # not a pickle we refused: a file that is no checkpoint at all
            raise YmirError(ErrorCode.MODEL, f"model file {path} is damaged or not a PyTorch checkpoint: "
                                             f"{str(e).splitlines()[0]}") from None
        raise YmirError(ErrorCode.MODEL, f"model file {path} was refused: it holds a pickled {found.group(1)}, "
                                         "which is not allowed") from None
    except (RuntimeError, OSError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise YmirError(ErrorCode.MODEL, f"model file {path} is damaged or not a PyTorch checkpoint: "
                                         f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
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
