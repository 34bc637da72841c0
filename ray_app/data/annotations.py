"""Reading YMIR box annotations (``ark:raw`` txt and ``voc:raw`` xml) leniently.

A dataset exported by users always holds some bad lines. None of them may crash a run or
vanish silently: each is skipped (or clipped), counted by kind in :class:`Issues`, and
reported once per kind with an example.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

#: kind -> what a user reads in the warning
ISSUE_KINDS = {
    "malformed_line": "malformed annotation lines (skipped)",
    "class_out_of_range": "boxes whose class is not in class_names (skipped)",
    "empty_box": "boxes with no area (skipped)",
    "clipped_box": "boxes reaching outside their image (clipped to it)",
    "outside_box": "boxes entirely outside their image (skipped)",
    "unreadable_annotation": "annotation files that cannot be read (image kept with no boxes)",
    "unreadable_image": "images that are missing, not images, or truncated (image skipped)",
    "unreadable_candidate": "images that cannot be read or decoded (kept with no boxes, ranked last)",
}

Box = tuple[int, float, float, float, float]  # class index, x1, y1, x2, y2


@dataclass
class Issues:
    """Counts of skipped or repaired input, by kind, with the first few examples of each."""

    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    max_examples: int = 3

    def add(self, kind: str, example: str) -> None:
        self.counts[kind] += 1
        kept = self.examples.setdefault(kind, [])
        if len(kept) < self.max_examples:
            kept.append(example)

    def warn(self, what: str) -> None:
        """One warning per kind: how many, and examples a user can find."""
        for kind, count in sorted(self.counts.items()):
            log.warning("%s: %d %s, e.g. %s", what, count, ISSUE_KINDS[kind], "; ".join(self.examples[kind]))


def parse_ark(text: str, num_classes: int, source: str, issues: Issues) -> list[Box]:
    """``class_id, xmin, ymin, xmax, ymax[, quality[, angle]]`` per line, commas, maybe spaces."""
    boxes: list[Box] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split(",")]
        try:
            if len(fields) < 5:
                raise ValueError
            class_id = int(float(fields[0]))
            if class_id != float(fields[0]):
                raise ValueError
            x1, y1, x2, y2 = (float(v) for v in fields[1:5])
        except ValueError:
            issues.add("malformed_line", f"{source}:{number}: {line.strip()!r}")
            continue
        if not 0 <= class_id < num_classes:
            issues.add("class_out_of_range", f"{source}:{number}: class {class_id}")
            continue
        boxes.append((class_id, x1, y1, x2, y2))
    return boxes


def parse_voc(text: str, class_names: list[str], source: str, issues: Issues) -> list[Box]:
    """Pascal-VOC ``object/name`` and ``object/bndbox``; a broken document counts as unreadable."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as e:
        issues.add("unreadable_annotation", f"{source}: {e}")
        return []
    index = {name: i for i, name in enumerate(class_names)}
    boxes: list[Box] = []
    for number, obj in enumerate(root.iter("object"), start=1):
        name = (obj.findtext("name") or "").strip()
        bndbox = obj.find("bndbox")
        try:
            if bndbox is None:
                raise ValueError
            x1, y1, x2, y2 = (float(bndbox.findtext(tag) or "") for tag in ("xmin", "ymin", "xmax", "ymax"))
        except ValueError:
            issues.add("malformed_line", f"{source}: object {number}")
            continue
        if name not in index:
            issues.add("class_out_of_range", f"{source}: object {number} class {name!r}")
            continue
        boxes.append((index[name], x1, y1, x2, y2))
    return boxes


def clip_box(box: Box, width: int, height: int, source: str, issues: Issues) -> Box | None:
    """The box clipped to the image, or None when nothing of it is left."""
    class_id, x1, y1, x2, y2 = box
    if x2 <= x1 or y2 <= y1:
        issues.add("empty_box", f"{source}: {box[1:]}")
        return None
    cx1, cy1, cx2, cy2 = max(0.0, x1), max(0.0, y1), min(float(width), x2), min(float(height), y2)
    if cx2 <= cx1 or cy2 <= cy1:
        issues.add("outside_box", f"{source}: {box[1:]} in a {width}x{height} image")
        return None
    if (cx1, cy1, cx2, cy2) != (x1, y1, x2, y2):
        issues.add("clipped_box", f"{source}: {box[1:]} in a {width}x{height} image")
    return (class_id, cx1, cy1, cx2, cy2)


def read_boxes(annotation: str, export_format: str, class_names: list[str], issues: Issues) -> list[Box]:
    """The boxes of one annotation file; a missing or empty file is an image with no boxes."""
    if not annotation:
        return []
    path = Path(annotation)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []  # YMIR's way of saying: a negative sample
    except (OSError, UnicodeDecodeError) as e:
        issues.add("unreadable_annotation", f"{path}: {e}")
        return []
    if not text.strip():
        return []
    if "voc" in export_format:
        return parse_voc(text, class_names, str(path), issues)
    return parse_ark(text, len(class_names), str(path), issues)
