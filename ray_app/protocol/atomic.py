"""Atomic writes confined to the output root.

The platform may read ``/out`` at any moment (``monitor.txt`` is polled), and a run can
be killed at any moment: every file is written to a temporary name in the same folder
and renamed over the target, so a reader sees the old file or the new one, never half.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def ensure_under(path: str | os.PathLike, root: str | os.PathLike) -> Path:
    """Return ``path`` resolved, or raise ``ValueError`` if it leaves ``root``."""
    resolved = Path(path).resolve()
    root_resolved = Path(root).resolve()
    if resolved != root_resolved and root_resolved not in resolved.parents:
        raise ValueError(f"refusing to write {resolved}: it is outside the output root {root_resolved}")
    return resolved


def atomic_write_bytes(path: str | os.PathLike, data: bytes, root: str | os.PathLike) -> Path:
    """Write ``data`` to ``path`` (which must lie under ``root``) atomically."""
    target = ensure_under(path, root)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def atomic_write_text(path: str | os.PathLike, text: str, root: str | os.PathLike) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically (see :func:`atomic_write_bytes`)."""
    return atomic_write_bytes(path, text.encode("utf-8"), root)
