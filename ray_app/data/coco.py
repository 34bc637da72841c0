"""YMIR training/validation index -> COCO json, the dataset format mmdet/mmyolo read."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from PIL import Image

from ray_app.data.annotations import Issues, clip_box, read_boxes
from ray_app.protocol.atomic import atomic_write_text
from ray_app.protocol.errors import ErrorCode, YmirError

log = logging.getLogger(__name__)


@dataclass
class ConversionReport:
    """What a conversion kept, and what it skipped or repaired."""

    images: int = 0
    boxes: int = 0
    issues: Issues = field(default_factory=Issues)


class TruncatedImageError(OSError):
    """A JPEG or PNG file cut short: its header reads, its pixels do not decode."""


#: the bytes a complete file of these formats ends with
END_MARKERS = {"JPEG": b"\xff\xd9", "PNG": b"IEND\xaeB`\x82"}


def image_size(path: str) -> tuple[int, int]:
    """(width, height) of a whole image file; OSError for a file cut short.

    The size comes from the header (PIL opens lazily and decodes no pixels). That alone
    would let a truncated file (an interrupted copy) through, and the training loader would
    then fail on it in every epoch and every Ray Train restart. A complete JPEG or PNG ends
    with a fixed marker, so only a file without it is decoded in full, by OpenCV, the decoder
    mmcv's training loader uses (PIL accepts a PNG that OpenCV refuses): that fails for a
    truncated file and passes when data follows the image (e.g. a phone's motion photo).
    Other formats are checked by their header only.
    """
    with Image.open(path) as image:
        marker = END_MARKERS.get(image.format or "")
        if marker and not _ends_with(image.fp, marker) and not _decodes(path):
            raise TruncatedImageError(f"{path}: truncated {image.format} file")
        return image.size


def _ends_with(file: BinaryIO, marker: bytes) -> bool:
    """Whether ``file`` ends with ``marker``; its position is kept for PIL."""
    position = file.tell()
    try:
        file.seek(0, os.SEEK_END)
        if file.tell() < len(marker):
            return False
        file.seek(-len(marker), os.SEEK_END)
        return file.read(len(marker)) == marker
    finally:
        file.seek(position)


def _decodes(path: str) -> bool:
    """Whether OpenCV decodes the whole file, as ``mmcv.imfrombytes`` does in training."""
    import cv2  # only for the rare file without its end marker
    import numpy as np

    return cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR) is not None


def to_coco(
    pairs: list[tuple[str, str]],
    class_names: list[str],
    export_format: str,
    out_file: str | os.PathLike,
    root: str | os.PathLike,
    what: str = "training",
) -> ConversionReport:
    """Convert ``(image, annotation)`` pairs to a COCO json at ``out_file`` (under ``root``).

    Category ids are the class indices (from 0), named by ``class_names``. Images whose
    size cannot be read are left out; bad boxes are skipped or clipped. All of it is
    counted and logged once per kind. No usable image at all is error 300002.
    """
    report = ConversionReport()
    images, annotations = [], []
    for image_path, annotation_path in pairs:
        try:
            width, height = image_size(image_path)
        except (OSError, SyntaxError, ValueError) as e:  # PIL raises these for bad headers
            report.issues.add("unreadable_image", f"{image_path}: {type(e).__name__}")
            continue
        image_id = len(images)
        images.append({"id": image_id, "file_name": image_path, "width": width, "height": height})
        for box in read_boxes(annotation_path, export_format, class_names, report.issues):
            clipped = clip_box(box, width, height, annotation_path, report.issues)
            if clipped is None:
                continue
            class_id, x1, y1, x2, y2 = clipped
            w, h = x2 - x1, y2 - y1
            annotations.append({"id": len(annotations), "image_id": image_id, "category_id": class_id,
                                "bbox": [x1, y1, w, h], "area": w * h, "iscrowd": 0})
    report.images, report.boxes = len(images), len(annotations)
    report.issues.warn(f"{what} set")
    if not images:
        raise YmirError(ErrorCode.DATASET, f"the {what} set has no readable image ({len(pairs)} listed)")
    coco = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i, "name": name} for i, name in enumerate(class_names)],
    }
    atomic_write_text(Path(out_file), json.dumps(coco), root)
    log.info("%s set: %d images, %d boxes -> %s", what, report.images, report.boxes, out_file)
    return report
