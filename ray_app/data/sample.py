"""A synthetic, YMIR-shaped workspace: images of coloured shapes, ``ark:raw`` boxes,
index files, ``env.yaml`` and ``config.yaml``, as the platform would lay them out.

Used by ``make demo``, the tests and the benchmarks, so that everything runs with no
download. Each shape class has its own form and colour, so a tiny detector learns it in a
few epochs.
"""

from __future__ import annotations

import argparse
import hashlib
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from PIL import Image, ImageDraw, ImageFilter

CLASS_NAMES = ["square", "disc", "triangle"]
COLOURS = {"square": (220, 40, 40), "disc": (40, 200, 60), "triangle": (40, 80, 230)}


@dataclass
class SampleData:
    """Where a generated dataset lies."""

    root: Path
    train_index: Path
    val_index: Path
    candidate_index: Path
    class_names: list[str]


def draw_shape(draw: ImageDraw.ImageDraw, shape: int, box: tuple[int, int, int, int],
               colour: tuple[int, int, int]) -> None:
    """A filled square (0), disc (1) or triangle (2) filling the xyxy ``box`` (end exclusive)."""
    x1, y1, x2, y2 = box
    if shape == 0:
        draw.rectangle([x1, y1, x2 - 1, y2 - 1], fill=colour)
    elif shape == 1:
        draw.ellipse([x1, y1, x2 - 1, y2 - 1], fill=colour)
    else:
        draw.polygon([(x1, y2 - 1), ((x1 + x2) // 2, y1), (x2 - 1, y2 - 1)], fill=colour)


def _draw_image(rng: random.Random, size: int, class_names: list[str]) -> tuple[Image.Image, list[tuple]]:
    background = tuple(rng.randint(90, 170) for _ in range(3))
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(0, 6)):  # clutter: thin grey lines
        draw.line([(rng.randint(0, size), rng.randint(0, size)) for _ in range(2)],
                  fill=tuple(rng.randint(60, 200) for _ in range(3)), width=1)
    boxes = []
    for _ in range(rng.randint(1, 3)):
        class_id = rng.randrange(len(class_names))
        side = rng.randint(size // 6, size // 3)
        x1, y1 = rng.randint(0, size - side), rng.randint(0, size - side)
        x2, y2 = x1 + side, y1 + side
        draw_shape(draw, class_id % 3, (x1, y1, x2, y2), COLOURS.get(class_names[class_id], (200, 200, 40)))
        boxes.append((class_id, x1, y1, x2, y2))
    return image.filter(ImageFilter.GaussianBlur(0.6)), boxes


def make_dataset(
    root: str | Path,
    n_train: int = 24,
    n_val: int = 8,
    n_candidates: int = 16,
    image_size: int = 96,
    class_names: list[str] | None = None,
    seed: int = 0,
) -> SampleData:
    """Write images under ``root/assets/<hash[:2]>/``, boxes under ``root/annotations/``,
    and the three index files (absolute paths, as the platform writes them)."""
    root = Path(root).resolve()
    class_names = list(class_names or CLASS_NAMES)
    rng = random.Random(seed)
    lines: dict[str, list[str]] = {"train": [], "val": [], "candidate": []}
    for split, count in (("train", n_train), ("val", n_val), ("candidate", n_candidates)):
        for i in range(count):
            image, boxes = _draw_image(rng, image_size, class_names)
            asset_id = hashlib.sha1(f"{seed}-{split}-{i}".encode()).hexdigest()
            image_path = root / "assets" / asset_id[:2] / f"{asset_id}.jpg"
            image_path.parent.mkdir(parents=True, exist_ok=True)
            image.save(image_path, quality=92)
            annotation_path = root / "annotations" / f"{asset_id}.txt"
            annotation_path.parent.mkdir(parents=True, exist_ok=True)
            annotation_path.write_text("".join(f"{c}, {x1}, {y1}, {x2}, {y2}\n" for c, x1, y1, x2, y2 in boxes))
            lines[split].append(f"{image_path}\t{annotation_path}" if split != "candidate" else str(image_path))
    paths = {}
    for split, split_lines in lines.items():
        paths[split] = root / f"{split}-index.tsv"
        paths[split].write_text("".join(f"{line}\n" for line in split_lines))
    return SampleData(root, paths["train"], paths["val"], paths["candidate"], class_names)


def write_task(
    task_dir: str | Path,
    data: SampleData,
    *,
    run_training: bool = False,
    run_mining: bool = False,
    run_infer: bool = False,
    config: dict[str, Any] | None = None,
    models_dir: str | Path | None = None,
    protocol_version: str = "1.1.0",
    task_id: str = "t0000001000002ebb7f11653630774",
) -> Path:
    """Lay out ``task_dir/in`` (env.yaml, config.yaml, models) and ``task_dir/out`` for one
    task over ``data``, and return the path of its ``env.yaml``."""
    task_dir = Path(task_dir).resolve()
    in_dir, out_dir = task_dir / "in", task_dir / "out"
    (out_dir / "models").mkdir(parents=True, exist_ok=True)
    (out_dir / "tensorboard").mkdir(parents=True, exist_ok=True)
    in_dir.mkdir(parents=True, exist_ok=True)
    models = Path(models_dir).resolve() if models_dir else in_dir / "models"
    models.mkdir(parents=True, exist_ok=True)
    config = {"task_id": task_id, "gpu_id": "", "gpu_count": 0, "class_names": data.class_names,
              "shm_size": "16G", **(config or {})}
    if run_training:
        config.setdefault("export_format", "ark:raw")
    (in_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    env = {
        "task_id": task_id,
        "protocol_version": protocol_version,
        "run_training": run_training,
        "run_mining": run_mining,
        "run_infer": run_infer,
        "input": {
            "root_dir": str(in_dir), "assets_dir": str(data.root / "assets"),
            "annotations_dir": str(data.root / "annotations"), "models_dir": str(models),
            "training_index_file": str(data.train_index) if run_training else "",
            "val_index_file": str(data.val_index) if run_training else "",
            "candidate_index_file": str(data.candidate_index) if (run_mining or run_infer) else "",
            "config_file": str(in_dir / "config.yaml"),
        },
        "output": {
            "root_dir": str(out_dir), "models_dir": str(out_dir / "models"),
            "tensorboard_dir": str(out_dir / "tensorboard"),
            "training_result_file": str(out_dir / "models" / "result.yaml"),
            "mining_result_file": str(out_dir / "result.tsv"),
            "infer_result_file": str(out_dir / "infer-result.json"),
            "monitor_file": str(out_dir / "monitor.txt"),
            "executor_log_file": str(out_dir / "ymir-executor-out.log"),
        },
        "manifest_file": "/img-man/manifest.yaml",
    }
    env_file = in_dir / "env.yaml"
    env_file.write_text(yaml.safe_dump(env, sort_keys=False))
    return env_file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("root", help="folder to write the dataset into")
    parser.add_argument("--train", type=int, default=24)
    parser.add_argument("--val", type=int, default=8)
    parser.add_argument("--candidates", type=int, default=16)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    data = make_dataset(args.root, args.train, args.val, args.candidates, args.size, seed=args.seed)
    print(f"sample dataset in {data.root}")


if __name__ == "__main__":
    main()
