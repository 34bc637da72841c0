"""Before and after a change: a git revision's ray_app (``--base``) against the working tree's,
alternated, on the same stage and images (bench/infer_bench.py's stage: yolov8_n, 320 images of
256 px, one CPU model actor), through the entry, medians.

- default: the mining rates, steady images/s of each score (``mining_ab_<base>.json``);
- ``--timeline``: the start-up, step by step, of an infer task (``startup_timeline_ab_<base>.json``).

The editable install always loads ``<repo>/ray_app``, so the two versions take turns in that
folder: the working tree's is copied aside first and put back at the end, even on an error.
Do not edit ray_app/ while it runs.

    .venv/bin/python bench/ab.py --base 8e63d7a [--algorithms entropy aldd] [--rounds 3]
    .venv/bin/python bench/ab.py --base 1db5810 --timeline [--rounds 3] [--size 256 --input 160]
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.common import save  # noqa: E402
from bench.infer_bench import Timeline, mining_variants, train_stage  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the git revision whose ray_app is 'before'")
    parser.add_argument("--algorithms", nargs="+", default=["random", "entropy", "aldd", "cald"])
    parser.add_argument("--diversity", type=float, default=0.0, help="also entropy at this diversity (after only)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=320)
    parser.add_argument("--size", type=int, default=256, help="the candidates' px")
    parser.add_argument("--input", type=int, default=256, help="the model's input px")
    parser.add_argument("--timeline", action="store_true", help="the start-up of an infer task instead")
    args = parser.parse_args()
    runs: dict[str, dict[str, list]] = {"before": {}, "after": {}}
    timelines: dict[str, list[Timeline]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory(prefix="ab-") as tmp:
        before, after = Path(tmp) / "before" / "ray_app", Path(tmp) / "after" / "ray_app"
        shutil.copytree(REPO / "ray_app", after, ignore=shutil.ignore_patterns("__pycache__"))
        before.parent.mkdir(parents=True)
        subprocess.run(f"git -C {REPO} archive {args.base} ray_app | tar -x -C {before.parent}", shell=True,
                       check=True)

        def use(src: Path) -> None:
            shutil.rmtree(REPO / "ray_app")
            shutil.copytree(src, REPO / "ray_app")

        try:
            stage = train_stage(Path(tmp), args.images, args.input, False, args.size)
            for r in range(args.rounds):
                order = [("before", before), ("after", after)]
                for version, src in order if r % 2 == 0 else order[::-1]:
                    use(src)
                    if args.timeline:
                        timeline = stage.timeline(args.images)
                        timelines[version].append(timeline)
                        print(version, r, timeline.steps, timeline.actor, flush=True)
                        continue
                    variants = mining_variants(args.algorithms, args.diversity if version == "after" else 0)
                    for name, config in variants.items():
                        row = stage.ours(f"{version}-{r}-{name.split()[0]}", args.images, **config)
                        runs[version].setdefault(name, []).append(row)
                        print(version, r, name, row, flush=True)
        finally:
            use(after)
    if args.timeline:
        return report_timeline(args, timelines)
    medians = {version: {name: statistics.median(row["steady_images_per_s"] for row in rows)
                         for name, rows in by_name.items()} for version, by_name in runs.items()}
    for name in medians["after"]:
        was = medians["before"].get(name)
        print(f"{name:24} before {was if was is not None else '-':>7} after {medians['after'][name]:>7} images/s")
    print(save(f"mining_ab_{args.base}", {"args": vars(args), "median_steady_images_per_s": medians, "runs": runs}))


def report_timeline(args: argparse.Namespace, timelines: dict[str, list[Timeline]]) -> None:
    """Each step's median, before and after, in the order of the working tree's start-up, then
    each version's table with its busy cores and the model actor's own start."""
    medians = {version: Timeline.median(runs) for version, runs in timelines.items()}
    before = {step: at for at, step in medians["before"].steps}
    print(f"{'step':58} {'before':>7} {'after':>7}   (seconds from the process's start, {args.images} images)")
    for at, step in medians["after"].steps:
        print(f"{step:58} {before.get(step, '-'):>7} {at:>7}")
    for version, median in medians.items():
        print(f"\n{version}, medians of {len(timelines[version])}:\n{median.table()}")
    print(save(f"startup_timeline_ab_{args.base}",
               {"args": vars(args), "median": {v: dataclasses.asdict(m) for v, m in medians.items()},
                "runs": {v: [dataclasses.asdict(t) for t in runs] for v, runs in timelines.items()}}))


if __name__ == "__main__":
    main()
