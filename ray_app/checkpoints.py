"""Model files: written so they load with ``torch.load(weights_only=True)``, and read
without ever executing pickled code.

Trust decisions, deliberately:
- Files we write for YMIR (stages) and for Ray Train (resume state) hold only tensors,
  numbers, strings, lists, tuples and dicts. mmengine's message hub (``HistoryBuffer``
  objects, numpy arrays and a pickled ``getattr``) is dropped from resume state: the
  loss-smoothing windows restart after a resume, nothing else changes.
- Files from ``/in/models`` (the user's, or foreign mmyolo checkpoints) are read with
  ``weights_only=True`` and an allowlist of mmengine's ``HistoryBuffer`` and plain numpy
  array reconstruction, nothing else. A file that needs more is refused (error 300004).
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ray_app.protocol.errors import ErrorCode, YmirError

EMPTY_MESSAGE_HUB = {"log_scalars": {}, "runtime_info": {}, "resumed_keys": {}}
#: meta keys kept in YMIR stage files (all plain values)
STAGE_META_KEYS = ("epoch", "iter", "seed", "experiment_name", "time", "mmengine_version", "dataset_meta")


def _allowed_globals() -> list[Any]:
    from mmengine.logging.history_buffer import HistoryBuffer

    return [HistoryBuffer, np._core.multiarray._reconstruct, np.ndarray, np.dtype,
            np._core.multiarray.scalar, type(np.dtype("float64")), type(np.dtype("int64"))]


def load_checkpoint_file(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint from ``/in`` or anywhere untrusted, as a dict, without running code.

    Missing, damaged or refused files are error 300004 naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise YmirError(ErrorCode.MODEL, f"model file {path} does not exist")
    try:
        with torch.serialization.safe_globals(_allowed_globals()):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        reason = str(e).split("\n")[0] if "Unsupported global" not in str(e) else \
            "it holds pickled objects that are not tensors (" + str(e).split("Unsupported global:")[-1].split("\n")[0].strip() + ")"
        raise YmirError(ErrorCode.MODEL, f"model file {path} was refused: {reason}") from None
    except (RuntimeError, OSError, EOFError, ValueError) as e:
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
