"""Conversion benchmark: a YMIR training index of N images (default 100,000) with one
``ark:raw`` annotation file each, converted to COCO json by ``ray_app.data.coco.to_coco``.

Image sizes come from the file headers (PIL opens lazily), so the cost is per file, not per
pixel. Target (issue 7): under 60 s for 100,000 files on the 2-core CI machine.

    .venv/bin/python bench/convert_bench.py            # writes bench/results/convert.json
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save  # noqa: E402

from ray_app.data.coco import to_coco  # noqa: E402
from ray_app.data.index import read_index  # noqa: E402


def generate(root: Path, count: int) -> Path:
    """``count`` small distinct PNGs in hashed folders and one annotation file each."""
    rng = random.Random(0)
    lines = []
    for i in range(count):
        width, height = rng.randint(32, 96), rng.randint(32, 96)
        image = root / "assets" / f"{i % 256:02x}" / f"{i:08d}.png"
        image.parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (width, height), i % 255).save(image)
        annotation = root / "annotations" / f"{i % 256:02x}" / f"{i:08d}.txt"
        annotation.parent.mkdir(parents=True, exist_ok=True)
        boxes = []
        for _ in range(rng.randint(0, 4)):
            x1, y1 = rng.randint(0, width - 8), rng.randint(0, height - 8)
            boxes.append(f"{rng.randint(0, 2)}, {x1}, {y1}, {x1 + rng.randint(4, 30)}, {y1 + rng.randint(4, 30)}\n")
        annotation.write_text("".join(boxes))
        lines.append(f"{image}\t{annotation}\n")
    index = root / "train-index.tsv"
    index.write_text("".join(lines))
    return index


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        index = generate(root, args.count)
        generated = time.perf_counter() - start
        start = time.perf_counter()
        report = to_coco(read_index(index, "training", True), ["a", "b", "c"], "ark:raw", root / "out" / "train.json",
                         root / "out", "training")
        seconds = time.perf_counter() - start
    rate = args.count / seconds
    print(f"\nconverted {report.images} images, {report.boxes} boxes in {seconds:.1f} s ({rate:,.0f} files/s); "
          f"clipped {report.issues.counts.get('clipped_box', 0)} boxes (generation took {generated:.0f} s)")
    print(f"target: under 60 s for 100,000 files: {'met' if seconds * 100_000 / args.count < 60 else 'NOT met'}")
    path = save("convert", {"count": args.count, "seconds": seconds, "files_per_s": rate, "images": report.images,
                            "boxes": report.boxes, "issues": dict(report.issues.counts)})
    print(f"full numbers: {path}")


if __name__ == "__main__":
    main()
