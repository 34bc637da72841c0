"""Active learning through the real entry: do the mining scores pick images that teach the
model more than random picks do?

The protocol of the sister executors' "mining-images-overview" table (COCO, one class at a
time, a 1:3 positive-to-negative training set, a fixed number of images added per
iteration), at a size a 2-core machine runs in well under an hour:

- a generated dataset per seed (``make_al_dataset``) in which some images are worth more
  than others: a rare class (triangles), small objects, faint (low-contrast) objects,
  clusters of near-duplicates, and three background-only images (clutter and grey
  distractor shapes, no object) for every image with objects;
- a labelled seed set ``L0``, a pool ``P`` and a fixed test set (the training task's
  validation set: the mAP of each round is the COCO bbox mAP@[.5:.95] the executor itself
  computes on it, at the last epoch, so no stage is picked by its test score);
- ``M0`` trained from scratch on ``L0`` through the executor's training task; then R rounds
  of: mine ``P`` through the mining task with the round's model, move the first K lines of
  ``result.tsv`` from ``P`` to the labelled set, fine-tune the round's model on the
  labelled set (``pretrained_model_params``, as a YMIR iteration does).

Every strategy of a seed starts from the same ``M0``. A strategy is a ``mining_algorithm``,
optionally with ``+div`` (``diversity: --diversity``, 1 by default, ``ray_app.mining.diversity``). Per round the
benchmark also records what each strategy picked: images with objects, near-duplicates,
rare-class, small and faint images. Results go to ``bench/results/active_learning.json``
(written after every round, so a cut run keeps what it did); docs/mining.md has the table.

    .venv/bin/python bench/active_learning.py [--seeds 0,1,2] [--rounds 2] [--k 60]
        [--strategies random,entropy,aldd,cald,entropy+div]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from PIL import Image, ImageDraw, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import save  # noqa: E402
from bench.scaling_bench import run_entry  # noqa: E402
from ray_app.data.sample import SampleData, draw_shape, write_task  # noqa: E402

CLASS_NAMES = ["square", "disc", "triangle"]
COLOURS = [(220, 40, 40), (40, 200, 60), (40, 80, 230)]
SIZE = 128
#: images of each kind, by split. "common": squares and discs of ordinary size and colour;
#: "rare": a triangle (the rare class) among them; "small": objects of 1/12-1/8 of the image;
#: "faint": objects 65 % blended into the background; "dup": near-duplicate clusters of faint
#: or small images (counted in images); "background": no object
SPLITS = {
    "seed": {"common": 16, "rare": 2, "small": 1, "faint": 1, "background": 60},
    "pool": {"common": 60, "rare": 20, "small": 20, "faint": 20, "dup": 60, "background": 540},
    "test": {"common": 30, "rare": 30, "small": 30, "faint": 30, "background": 40},
}
DUP_CLUSTER = 6  # images per near-duplicate cluster
TRAIN = dict(model_name="yolov8_n", img_size=SIZE, samples_per_gpu=8, workers_per_gpu=0, cpu_num_workers=1,
             max_keep_checkpoints=1, learning_rate=0.01, ymir_saved_file_patterns="")
M0_EPOCHS = 40
ROUND_EPOCHS = 15
MINE = dict(img_size=0, samples_per_gpu=8, cpu_num_workers=1, conf_threshold=0.1, iou_threshold=0.65)
DIVERSITY = 1.0  # the ``diversity`` of a ``+div`` strategy (``--diversity``)


@dataclass
class Item:
    image: str
    annotation: str
    kind: str
    cluster: int = -1  # near-duplicate cluster, -1 for none

    def line(self) -> str:
        return f"{self.image}\t{self.annotation}\n"


@dataclass
class Layout:
    background: tuple[int, int, int]
    lines: list[tuple]
    distractors: list[tuple]
    objects: list[tuple] = field(default_factory=list)  # (class_id, x1, y1, x2, y2, colour)


def _layout(rng: random.Random, kind: str) -> Layout:
    background = tuple(rng.randint(90, 170) for _ in range(3))
    lines = [(tuple((rng.randint(0, SIZE), rng.randint(0, SIZE)) for _ in range(2)),
              tuple(rng.randint(60, 200) for _ in range(3))) for _ in range(rng.randint(0, 6))]
    distractors = []
    for _ in range(rng.randint(0, 2)):  # grey shapes of no class: what a detector may mistake
        side = rng.randint(SIZE // 8, SIZE // 4)
        x, y = rng.randint(0, SIZE - side), rng.randint(0, SIZE - side)
        grey = rng.randint(40, 220)
        distractors.append((rng.randrange(3), x, y, x + side, y + side, (grey, grey, grey)))
    layout = Layout(background, lines, distractors)
    if kind == "background":
        return layout
    classes = {"rare": [2] + [rng.randrange(2) for _ in range(rng.randint(0, 1))],
               "small": [rng.choice([0, 0, 1, 1, 2]) for _ in range(rng.randint(1, 3))]}.get(
        kind, [rng.randrange(2) for _ in range(rng.randint(1, 2))])
    for class_id in classes:
        side = rng.randint(SIZE // 12, SIZE // 8) if kind == "small" else rng.randint(SIZE // 6, SIZE // 3)
        x, y = rng.randint(0, SIZE - side), rng.randint(0, SIZE - side)
        colour = COLOURS[class_id]
        if kind == "faint":
            colour = tuple(int(0.35 * c + 0.65 * b) for c, b in zip(colour, background))
        layout.objects.append((class_id, x, y, x + side, y + side, colour))
    return layout


def _render(layout: Layout, dx: int = 0, dy: int = 0, light: int = 0) -> tuple[Image.Image, list[tuple]]:
    """The image, shifted by (dx, dy) and ``light`` brighter; boxes as ``(class, x1, y1, x2, y2)``."""
    image = Image.new("RGB", (SIZE, SIZE), tuple(min(255, max(0, c + light)) for c in layout.background))
    draw = ImageDraw.Draw(image)
    for points, colour in layout.lines:
        draw.line([(x + dx, y + dy) for x, y in points], fill=colour, width=1)
    boxes = []
    for is_object, shapes in ((False, layout.distractors), (True, layout.objects)):
        for class_id, x1, y1, x2, y2, colour in shapes:
            x1, x2 = min(max(x1 + dx, 0), SIZE - 4), min(max(x2 + dx, 4), SIZE)
            y1, y2 = min(max(y1 + dy, 0), SIZE - 4), min(max(y2 + dy, 4), SIZE)
            draw_shape(draw, class_id, (x1, y1, x2, y2), tuple(min(255, max(0, c + light)) for c in colour))
            if is_object:
                boxes.append((class_id, x1, y1, x2, y2))
    return image.filter(ImageFilter.GaussianBlur(0.6)), boxes


def make_al_dataset(root: Path, seed: int) -> dict[str, list[Item]]:
    """The seed set, the pool and the test set of one seed (images, ``ark:raw`` boxes)."""
    rng = random.Random(seed)
    splits: dict[str, list[Item]] = {}
    counter = 0
    clusters = 0

    def write(layout: Layout, kind: str, cluster: int = -1, **shift) -> Item:
        nonlocal counter
        counter += 1
        image, boxes = _render(layout, **shift)
        image_path = root / "assets" / f"{seed}-{counter:05d}.jpg"
        annotation_path = root / "annotations" / f"{seed}-{counter:05d}.txt"
        image.save(image_path, quality=92)
        annotation_path.write_text("".join(f"{c}, {x1}, {y1}, {x2}, {y2}\n" for c, x1, y1, x2, y2 in boxes))
        return Item(str(image_path), str(annotation_path), kind, cluster)

    (root / "assets").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for split, kinds in SPLITS.items():
        items = []
        for kind, count in kinds.items():
            if kind == "dup":
                for _ in range(count // DUP_CLUSTER):
                    layout = _layout(rng, rng.choice(["faint", "small"]))
                    for _ in range(DUP_CLUSTER):
                        items.append(write(layout, "dup", clusters, dx=rng.randint(-2, 2), dy=rng.randint(-2, 2),
                                           light=rng.randint(-6, 6)))
                    clusters += 1
            else:
                items.extend(write(_layout(rng, kind), kind) for _ in range(count))
        rng.shuffle(items)
        splits[split] = items
    return splits


def index_file(path: Path, items: list[Item], with_annotations: bool = True) -> Path:
    path.write_text("".join(i.line() if with_annotations else f"{i.image}\n" for i in items))
    return path


def _task_id(seed: int, strategy: str, round_: int) -> str:
    """A task id in the platform's shape; random's ranking is seeded by it."""
    tag = f"{seed:03d}{zlib.crc32(strategy.encode()) % 10**6:06d}{round_:02d}"  # not hash(): salted per process
    return ("t" + tag + "0" * 30)[:30]


def train(work: Path, data_root: Path, labelled: list[Item], test: list[Item], epochs: int,
          start: tuple[Path, list[str]] | None, task_id: str) -> tuple[Path, list[str], float, float]:
    """A training task through the entry: (models dir, best stage files, last stage's test mAP, wall s)."""
    work.mkdir(parents=True, exist_ok=True)
    data = SampleData(data_root, index_file(work / "train-index.tsv", labelled),
                      index_file(work / "val-index.tsv", test), Path(""), CLASS_NAMES)
    config = {**TRAIN, "max_epochs": epochs, "val_interval": epochs}
    if start:
        config["pretrained_model_params"] = start[1]
    env_file = write_task(work, data, run_training=True, config=config, task_id=task_id,
                          models_dir=start[0] if start else None)
    code, log, wall = run_entry(env_file)
    if code != 0:
        raise RuntimeError(f"training {work} failed:\n{log[-3000:]}")
    models = work / "out" / "models"
    result = yaml.safe_load((models / "result.yaml").read_text())
    last = max(result["model_stages"], key=lambda s: int(s.split("_")[-1]))
    files = [f"{last}/{f}" for f in result["model_stages"][last]["files"]]
    return models, files, float(result["model_stages"][last]["mAP"]), wall


def mine(work: Path, data_root: Path, pool: list[Item], model: tuple[Path, list[str]], strategy: str,
         task_id: str, diversity: float) -> tuple[list[tuple[str, float]], float]:
    """A mining task through the entry: the pool's (image, score), best first, and the wall time."""
    work.mkdir(parents=True, exist_ok=True)
    algorithm, _, div = strategy.partition("+")
    data = SampleData(data_root, Path(""), Path(""), index_file(work / "candidate-index.tsv", pool, False),
                      CLASS_NAMES)
    config = {**MINE, "mining_algorithm": algorithm, "model_params_path": model[1],
              "diversity": diversity if div == "div" else 0}
    env_file = write_task(work, data, run_mining=True, config=config, models_dir=model[0], task_id=task_id)
    code, log, wall = run_entry(env_file)
    if code != 0:
        raise RuntimeError(f"mining {work} failed:\n{log[-3000:]}")
    lines = (work / "out" / "result.tsv").read_text().splitlines()
    return [(line.split("\t")[0], float(line.split("\t")[1])) for line in lines], wall


def auc(ranked: list[tuple[str, float]], positive: set[str], negative: set[str]) -> float | None:
    """P(score of a random ``positive`` image > that of a random ``negative`` one), ties half
    (Mann-Whitney with average ranks)."""
    import numpy as np
    from scipy.stats import rankdata

    rows = [(s, p in positive) for p, s in ranked if p in positive or p in negative]
    n_pos = sum(is_pos for _, is_pos in rows)
    n_neg = len(rows) - n_pos
    if not n_pos or not n_neg:
        return None
    ranks = rankdata([s for s, _ in rows])
    pos_ranks = np.sum([r for r, (_, is_pos) in zip(ranks, rows) if is_pos])
    return round(float((pos_ranks - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)), 4)


def separation(ranked: list[tuple[str, float]], pool: list[Item]) -> dict:
    """How a ranking separates images with objects from background, and, among those with
    objects, the hard kinds (rare, small, faint, near-duplicate) from the common."""
    objects = {i.image for i in pool if i.kind != "background"}
    hard = {i.image for i in pool if i.kind in ("rare", "small", "faint", "dup")}
    return {"auc_objects_vs_background": auc(ranked, objects, {i.image for i in pool} - objects),
            "auc_hard_vs_common": auc(ranked, hard, objects - hard)}


def picked_summary(items: list[Item]) -> dict:
    """What a strategy added: counts by kind, and how many near-duplicate clusters it hit."""
    kinds = {kind: sum(i.kind == kind for i in items) for kind in ("common", "rare", "small", "faint", "dup",
                                                                     "background")}
    return {"with_objects": len(items) - kinds["background"], **kinds,
            "dup_clusters": len({i.cluster for i in items if i.cluster >= 0})}


def run_seed(work: Path, seed: int, strategies: list[str], rounds: int, k: int, diversity: float,
             results: dict) -> None:
    splits = make_al_dataset(work / f"data-{seed}", seed)
    data_root = work / f"data-{seed}"
    m0_models, m0_files, m0_map, wall = train(work / f"s{seed}-m0", data_root, splits["seed"], splits["test"],
                                              M0_EPOCHS, None, _task_id(seed, "m0", 0))
    print(f"seed {seed}: M0 mAP {m0_map:.3f} ({wall:.0f} s)", flush=True)
    for strategy in strategies:
        model = (m0_models, m0_files)
        labelled, pool = list(splits["seed"]), list(splits["pool"])
        record = {"mAP": [m0_map], "picked": [], "mine_s": [], "train_s": [wall]}
        for r in range(1, rounds + 1):
            tag = f"s{seed}-{strategy.replace('+', '-')}-r{r}"
            scored, mine_s = mine(work / f"{tag}-mine", data_root, pool, model, strategy, _task_id(seed, strategy, r),
                                  diversity)
            record.setdefault("separation", []).append(separation(scored, pool))
            ranked = [p for p, _ in scored]
            by_path = {i.image: i for i in pool}
            chosen = [by_path[p] for p in ranked[:k]]
            chosen_paths = {i.image for i in chosen}
            labelled += chosen
            pool = [i for i in pool if i.image not in chosen_paths]
            models, files, mAP, train_s = train(work / f"{tag}-train", data_root, labelled, splits["test"],
                                                ROUND_EPOCHS, model, _task_id(seed, strategy, r))
            model = (models, files)
            record["mAP"].append(mAP)
            record["picked"].append(picked_summary(chosen))
            record["mine_s"].append(round(mine_s, 1))
            record["train_s"].append(round(train_s, 1))
            print(f"seed {seed} {strategy} round {r}: mAP {mAP:.3f}, picked {record['picked'][-1]}, "
                  f"{record['separation'][-1]} "
                  f"(mine {mine_s:.0f} s, train {train_s:.0f} s)", flush=True)
        results.setdefault(strategy, {})[str(seed)] = record


def table(results: dict, rounds: int) -> dict:
    """Per strategy and round: mean and spread (population standard deviation) over seeds."""
    summary = {}
    for strategy, by_seed in results.items():
        per_round = []
        for r in range(rounds + 1):
            values = [rec["mAP"][r] for rec in by_seed.values() if len(rec["mAP"]) > r]
            if values:
                per_round.append({"mean": round(statistics.mean(values), 4),
                                  "std": round(statistics.pstdev(values), 4), "n": len(values)})
        picked = [rec["picked"][-1] for rec in by_seed.values() if rec["picked"]]
        summary[strategy] = {"rounds": per_round,
                             "picked_last_round_mean": {key: round(statistics.mean(p[key] for p in picked), 1)
                                                        for key in picked[0]} if picked else {}}
    return summary


def report(path: Path) -> str:
    """The markdown table of docs/mining.md from a results file: mAP per round (mean ± spread
    over the seeds), what the last round added, and how the rankings separated the pool."""
    data = json.loads(path.read_text())
    rounds = data["args"]["rounds"]
    seeds = len(next(iter(data["runs"].values())))
    head = " | ".join(f"round {r}" for r in range(rounds + 1))
    lines = [f"| strategy | {head} | gain over random, last round |", "|---|" + "---|" * (rounds + 2)]
    random_last = data["summary"].get("random", {}).get("rounds", [{}])[-1].get("mean")
    for strategy, summary in data["summary"].items():
        cells = " | ".join(f"{r['mean']:.3f} ± {r['std']:.3f}" for r in summary["rounds"])
        last = summary["rounds"][-1]["mean"]
        gain = "" if strategy == "random" or random_last is None else f"{100 * (last - random_last):+.1f} points"
        lines.append(f"| {strategy} | {cells} | {gain} |")
    lines += ["", f"What the last round added (mean over {seeds} seeds, of K = {data['args']['k']}), and how "
              "each ranking separated the pool (AUC, mean over seeds and rounds):", "",
              "| strategy | with objects | rare | small | faint | near-dup. (clusters) | background "
              "| AUC objects vs background | AUC hard vs common |", "|---|---|---|---|---|---|---|---|---|"]
    for strategy, summary in data["summary"].items():
        p = summary["picked_last_round_mean"]
        seps = [sep for rec in data["runs"][strategy].values() for sep in rec.get("separation", [])]
        aucs = [statistics.mean(sep[key] for sep in seps if sep[key] is not None)
                for key in ("auc_objects_vs_background", "auc_hard_vs_common")]
        lines.append(f"| {strategy} | {p['with_objects']:g} | {p['rare']:g} | {p['small']:g} | {p['faint']:g} | "
                     f"{p['dup']:g} ({p['dup_clusters']:g}) | {p['background']:g} | {aucs[0]:.2f} | {aucs[1]:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--k", type=int, default=60)
    parser.add_argument("--strategies", default="random,entropy,aldd,cald,entropy+div")
    parser.add_argument("--diversity", type=float, default=DIVERSITY)
    parser.add_argument("--out", default="active_learning")
    parser.add_argument("--report", action="store_true", help="only print the table of bench/results/<--out>.json")
    args = parser.parse_args()
    if args.report:
        print(report(Path(__file__).resolve().parent / "results" / f"{args.out}.json"))
        return

    seeds = [int(s) for s in args.seeds.split(",")]
    strategies = args.strategies.split(",")
    results: dict = {}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="al-bench-") as tmp:
        os.environ["RAY_APP_WEIGHTS"] = str(Path(tmp) / "no-coco-weights")  # M0 from scratch, on every machine
        for seed in seeds:
            run_seed(Path(tmp), seed, strategies, args.rounds, args.k, args.diversity, results)
            summary = table(results, args.rounds)
            path = save(args.out, {"args": vars(args), "splits": SPLITS, "m0_epochs": M0_EPOCHS,
                                   "round_epochs": ROUND_EPOCHS, "mine": MINE, "train": TRAIN,
                                   "elapsed_s": round(time.monotonic() - started), "summary": summary,
                                   "runs": results})
    print(json.dumps(summary, indent=1))
    print(f"{path} ({time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
