"""``run_inference``: mining and/or infer over the candidate index, in ONE pass.

The same forward pass gives the infer boxes and the mining score. The driver alone
writes /out: ``result.tsv`` (every candidate, best first, bad images last) and
``infer-result.json`` (every candidate, ``[]`` when nothing was found).
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from typing import TYPE_CHECKING

import numpy as np

from ray_app.data.annotations import Issues
from ray_app.data.index import check_unique_basenames, read_index
from ray_app.protocol.env import EnvConfig
from ray_app.protocol.errors import ErrorCode, YmirError
from ray_app.protocol.hyperparams import InferParams, inference_params
from ray_app.protocol.monitor import Monitor
from ray_app.protocol.writers import Annotation, Box, write_infer_result, write_mining_result
from ray_app.ray_session import check_gpus, ray_session

if TYPE_CHECKING:
    from ray_app.infer.model import ModelBundle

log = logging.getLogger(__name__)


def to_annotations(detections_json: str, class_names: list[str], width: int, height: int) -> list[Annotation]:
    """``[[x1, y1, x2, y2, score, label], ...]`` -> YMIR boxes: integers, clipped to the image."""
    annotations = []
    for x1, y1, x2, y2, score, label in json.loads(detections_json):
        x1, x2 = min(max(x1, 0), width), min(max(x2, 0), width)
        y1, y2 = min(max(y1, 0), height), min(max(y2, 0), height)
        x, y = int(round(x1)), int(round(y1))
        w, h = int(round(x2)) - x, int(round(y2)) - y
        if w <= 0 or h <= 0 or not 0 <= int(label) < len(class_names):
            continue
        annotations.append(Annotation(class_name=class_names[int(label)], score=round(float(score), 6),
                                      box=Box(x=x, y=y, w=w, h=h)))
    return annotations


class Progress:
    """monitor.txt (at least every 1% or 10 s) and a text progress bar in the log."""

    def __init__(self, monitor: Monitor, total: int, what: str, start: float | None = None) -> None:
        self.monitor, self.total, self.what = monitor, total, what
        self.done = 0
        self.per_node: Counter = Counter()
        self.start = self.last_log = start or time.monotonic()
        self.first: tuple[float, int] | None = None  # (time, images) of the first result
        self.last = self.start  # time of the latest result

    def add(self, nodes: list[str]) -> None:
        """One result per image, with the node whose model actor produced it."""
        count = len(nodes)
        self.per_node.update(nodes)
        self.done += count
        fraction = self.done / self.total
        self.monitor.progress(fraction)
        now = time.monotonic()
        if self.first is None:
            self.first = (now, count)
            log.info("%s: first results after %.1f s (Ray's start, the model actors', the first batch)", self.what,
                     now - self.start)
        self.last = now
        if now - self.last_log >= 10 or self.done == self.total:
            self.last_log = now
            bar = "#" * int(fraction * 30)
            rate = self.done / max(now - self.start, 1e-9)
            log.info("%s [%-30s] %d/%d images (%.0f%%), %.1f images/s; by node: %s", self.what, bar, self.done,
                     self.total, 100 * fraction, rate, self.nodes())

    def summary(self) -> str:
        """Start-up (until the first result) and the steady rate after it: the two numbers
        that tell whether a slow task waited for Ray and the models or for the images."""
        if self.first is None:
            return f"no results in {time.monotonic() - self.start:.1f} s"
        first_at, first_count = self.first
        steady = (self.done - first_count) / max(self.last - first_at, 1e-9)
        return (f"{self.done} images in {self.last - self.start:.1f} s: first result after "
                f"{first_at - self.start:.1f} s, then {steady:.1f} images/s")

    def nodes(self) -> str:
        return ", ".join(f"{node[:8]} {count}" for node, count in self.per_node.most_common())


def read_candidates(env: EnvConfig) -> list[str]:
    """The candidate images, each once, checked before any work (a bad index fails in
    seconds, before Ray starts)."""
    pairs = read_index(env.input.candidate_index_file, "candidate", with_annotations=False)
    images = list(dict.fromkeys(p for p, _ in pairs))  # a repeated line is one image
    if len(images) < len(pairs):
        log.warning("candidate index repeats %d lines; each image is processed once", len(pairs) - len(images))
    check_unique_basenames(images, "candidate")
    return images


def prepare_model(env: EnvConfig, params: InferParams) -> ModelBundle:
    """The model stage, checked: the driver's work that needs torch and mmengine, run while
    Ray starts (``ray_session``). Its imports (torch, mmengine, Ray Data: about 2 s on 2
    cores) are made here, in that thread, not at the module's import."""
    from ray_app.infer import pipeline  # noqa: F401  (Ray Data, for the pipeline that follows)
    from ray_app.infer.model import load_stage

    return load_stage(params, env.input.models_dir)


def diverse_ranking(scores: list[tuple[str, float]], features: np.ndarray, weight: float) -> list[tuple[str, float]]:
    """The scores to write for the diverse order of ``ray_app.mining.diversity``."""
    from ray_app.mining.diversity import diverse_scores

    started = time.monotonic()
    keys = diverse_scores(np.array([s for _, s in scores]), features, weight)
    log.info("diverse ranking of %d images (diversity %g) in %.1f s", len(scores), weight, time.monotonic() - started)
    return [(path, float(key)) for (path, _), key in zip(scores, keys)]


def run_inference(env: EnvConfig, monitor: Monitor) -> None:
    """Mining, infer, or both (one pass), over the candidate index."""
    params = inference_params(env)
    algorithm = getattr(params, "mining_algorithm", None) if env.run_mining else None
    gpu_ids = check_gpus(params)
    what = " + ".join(t for t, on in (("mining", env.run_mining), ("infer", env.run_infer)) if on)

    detections: dict[str, list[Annotation]] = {}
    scores: list[tuple[str, float]] = []
    features: list[np.ndarray] = []  # one array per batch, in the order of ``scores`` (diversity > 0)
    bad = Issues()
    started = time.monotonic()  # start-up counts from here: Ray's start, the model actors' and the first batch
    images = read_candidates(env)
    session = ray_session(params.ray_address, gpu_ids, params.ray_auth_token.get_secret_value(),
                          prepare=lambda: prepare_model(env, params))
    with session as bundle:
        log.info("%s of %d images (%s)", what, len(images), algorithm or "boxes only")
        from ray_app.infer.pipeline import stream_results  # imported by prepare_model: already loaded

        progress = Progress(monitor, len(images), what, started)
        for batch in stream_results(images, bundle, params, algorithm, gpu_ids, env.task_id):
            for path, dets, score, error, height, width in zip(batch["path"], batch["detections"], batch["score"],
                                                               batch["error"], batch["height"], batch["width"]):
                path = str(path)
                if error:
                    bad.add("unreadable_candidate", f"{path} ({error})")
                if env.run_infer:
                    detections[path] = to_annotations(str(dets), bundle.class_names, int(width), int(height)) if not error else []
                scores.append((path, float(score)))
            if "feature" in batch:
                features.append(np.asarray(batch["feature"]))
            progress.add([str(n) for n in batch["node"]])
    log.info("%s: %s", what, progress.summary())
    log.info("model actors ran on %d node(s): %s", len(progress.per_node),
             ", ".join(f"{node[:8]}: {count} images" for node, count in progress.per_node.most_common()))
    bad.warn("candidate set")
    if bad.counts["unreadable_candidate"] == len(images):  # a missing mount, not a few bad files
        raise YmirError(ErrorCode.DATASET, f"the candidate set has no readable image ({len(images)} listed), e.g. "
                                           + "; ".join(bad.examples["unreadable_candidate"]))
    missing = set(images) - {p for p, _ in scores}
    if missing:  # never expected: Ray retries lost work; fail rather than write a partial ranking
        raise YmirError(ErrorCode.DATASET, f"{len(missing)} candidates got no result, e.g. {sorted(missing)[:3]}")
    if env.run_mining:
        if features:
            scores = diverse_ranking(scores, np.concatenate(features), params.diversity)
        write_mining_result(env.output.mining_result_file, scores, env.output.root_dir)
        log.info("mining result: %s", env.output.mining_result_file)
    if env.run_infer:
        write_infer_result(env.output.infer_result_file, detections, env.output.root_dir, env.protocol_at_least_1)
        log.info("infer result: %s (%d boxes)", env.output.infer_result_file,
                 sum(len(v) for v in detections.values()))
