"""YMIR index files: ``<image>\\t<annotation>`` (training, validation) or ``<image>``
(candidates), one per line."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ray_app.protocol.errors import ErrorCode, YmirError

log = logging.getLogger(__name__)


def read_index(path: str | os.PathLike, what: str, with_annotations: bool) -> list[tuple[str, str]]:
    """The ``(image, annotation)`` pairs of an index file; annotation is ``''`` for candidates.

    Blank lines and CRLF endings are tolerated. A missing, unreadable or empty index is
    error 300002: the task has nothing to work on.
    """
    if not path:
        raise YmirError(ErrorCode.DATASET, f"no {what} index file was given in env.yaml")
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise YmirError(ErrorCode.DATASET, f"{what} index file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise YmirError(ErrorCode.DATASET, f"{what} index file {path} cannot be read: {e}") from None
    pairs: list[tuple[str, str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        fields = line.split("\t")
        image = fields[0].strip()
        annotation = fields[1].strip() if with_annotations and len(fields) > 1 else ""
        pairs.append((image, annotation))
    if not pairs:
        raise YmirError(ErrorCode.DATASET, f"{what} index file {path} lists no images")
    return pairs


def check_unique_basenames(images: list[str], what: str) -> None:
    """YMIR keys results by basename: two images with one basename would overwrite each
    other's results, so that is a dataset error (300002)."""
    seen: dict[str, str] = {}
    for image in images:
        name = os.path.basename(image)
        if name in seen and seen[name] != image:
            raise YmirError(ErrorCode.DATASET,
                            f"{what} index lists two images with the basename {name}: {seen[name]} and {image}")
        seen[name] = image
