"""YMIR training/validation index -> COCO json, the dataset format mmdet/mmyolo read."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

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


def image_size(path: str) -> tuple[int, int]:
    """(width, height) from the file header: PIL opens lazily and decodes no pixels."""
    with Image.open(path) as image:
        return image.size


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
