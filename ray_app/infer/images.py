"""Reading and decoding candidate images; a bad image costs only itself."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps


def read_bytes(path: str) -> tuple[bytes, str]:
    """(file bytes, '') or (b'', reason): runs on the node that sees /in."""
    try:
        return Path(path).read_bytes(), ""
    except OSError as e:
        return b"", f"{type(e).__name__}: {e.strerror or e}"


def decode_bgr(data: bytes) -> np.ndarray:
    """Decode fully (a truncated file raises, not grey pixels) and apply EXIF orientation,
    as OpenCV's loader does in the training pipeline. Returns HxWx3 uint8, BGR."""
    if not data:
        raise ValueError("empty file")
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        rgb = ImageOps.exif_transpose(image).convert("RGB")
    return np.ascontiguousarray(np.asarray(rgb)[:, :, ::-1])
