"""``export_best_stage``: after training, the best stage in the formats ``deploy_formats``
names, each checked against torch, added to that stage in ``models/result.yaml``.

The entry runs it once training is done, on the machine that holds ``/out``, on its CPU.
What training published is never put at risk: a format that fails (an op its opset lacks, a
package the image was built without, a disagreement with torch) is left out with one
warning line naming the cause, and the task still ends done with its stages. A name or an
opset no format takes is a configuration error, found before training starts
(:func:`plan_exports`).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import ray_app
from ray_app.export.formats import FORMATS, ExportFormat
from ray_app.protocol.atomic import atomic_write_bytes
from ray_app.protocol.env import EnvConfig
from ray_app.protocol.errors import ErrorCode, YmirError
from ray_app.protocol.hyperparams import TrainingParams
from ray_app.protocol.model_files import pick_config, pick_weights
from ray_app.protocol.writers import read_training_result, write_training_result

log = logging.getLogger(__name__)

#: exported outputs must agree with torch's on the same input to this much: each box
#: coordinate to this fraction of the input size plus of its own size (0.64 px at 640 for a
#: box inside the image), scores to this much. Float rounding in the two runtimes stays far
#: below: on untrained models at 640, whose boxes reach 1,000 px (yolox_tiny's 350,000),
#: 0.02 px at most (yolox_tiny: 50 px, 1.4e-4 of the coordinate) and 3e-5 in score
#: (bench/export_bench.py's check); an export that computes something else is far above.
BOX_TOLERANCE = 1e-3
SCORE_TOLERANCE = 1e-3
#: the check runs a batch of this many images: the graph's batch axis is dynamic, and the
#: export traced one
CHECK_BATCH = 2


@dataclass(frozen=True)
class ExportPlan:
    """What to export, decided before training: the formats and the opset."""

    formats: tuple[ExportFormat, ...]
    opset: int


def plan_exports(params: TrainingParams) -> ExportPlan:
    """The formats of ``deploy_formats``: 300001 for a name or an ``opset`` no format takes
    (before any work); a format whose packages this image lacks is left out with a warning
    (the model still trains)."""
    unknown = [name for name in params.deploy_format_names if name not in FORMATS]
    if unknown:
        raise YmirError(ErrorCode.CONFIG, f"deploy_formats: {', '.join(unknown)} is not a format this image "
                                          f"exports to; known: {', '.join(FORMATS)} (empty: none)")
    formats = []
    for name in params.deploy_format_names:
        fmt = FORMATS[name]
        if params.opset not in fmt.opsets:
            raise YmirError(ErrorCode.CONFIG, f"opset {params.opset}: the {name} export takes opsets "
                                              f"{fmt.opsets.start} to {fmt.opsets.stop - 1}")
        missing = fmt.missing_modules()
        if missing:
            log.warning("deploy_formats %s: this image has no %s, so the stages will have no %s file",
                        name, " or ".join(missing), fmt.suffix)
            continue
        formats.append(fmt)
    return ExportPlan(tuple(formats), params.opset)


def metadata(bundle, stage: str, size: tuple[int, int]) -> dict[str, str]:
    """What a user of the file needs to feed it and read it, in its own metadata."""
    cfg = bundle.cfg
    pipeline = cfg.get("test_pipeline") or cfg.test_dataloader.dataset.pipeline
    return {
        "producer": f"ray_app {ray_app.__version__}",
        "stage": stage,
        "class_names": json.dumps(list(bundle.class_names)),
        "input": (f"images: float32 (batch, 3, {size[0]}, {size[1]}), pixel values 0-255 in the channel order "
                  "the test pipeline loads (BGR), resized and padded as test_pipeline says; the model's "
                  "normalisation is in the graph"),
        "outputs": ("boxes: (batch, N, 4) x1, y1, x2, y2 in input pixels; scores: (batch, N, classes) in [0, 1], "
                    "objectness folded in; one row per prior, no threshold and no NMS (test_cfg: the "
                    "thresholds and NMS the model was validated with)"),
        "test_pipeline": json.dumps(_plain(pipeline), default=str),
        "test_cfg": json.dumps(_plain(cfg.model.get("test_cfg", {})), default=str),
    }


def _plain(value):
    """A config value as plain lists and dicts (mmengine's ConfigDicts and tuples)."""
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def export_stage(fmt: ExportFormat, detector, bundle, stage: str, opset: int) -> tuple[bytes, float, float]:
    """``fmt``'s file of ``detector``, and how far its outputs are from torch's on a batch
    of noise images (boxes in px, scores). 300004 when they disagree beyond the tolerances
    and beyond what float rounding does to the model itself (:func:`rounding_allows`)."""
    import torch

    size = (bundle.input_size, bundle.input_size)
    data = fmt.export(detector, size, opset, metadata(bundle, stage, size))
    images = np.random.default_rng(0).uniform(0, 255, size=(CHECK_BATCH, 3, *size)).astype(np.float32)
    with torch.no_grad():
        boxes, scores = (t.numpy() for t in detector(torch.from_numpy(images)))
    got_boxes, got_scores = fmt.run(data, images)
    if got_boxes.shape != boxes.shape or got_scores.shape != scores.shape:
        raise YmirError(ErrorCode.MODEL, f"the {fmt.name} file gives shapes {got_boxes.shape} and {got_scores.shape}, "
                                         f"torch {boxes.shape} and {scores.shape}")
    box_gap = np.abs(got_boxes - boxes)
    box_error, score_error = float(box_gap.max()), float(np.abs(got_scores - scores).max())
    close = not (box_gap > BOX_TOLERANCE * (max(size) + np.abs(boxes))).any() and score_error <= SCORE_TOLERANCE
    if not close and not rounding_allows(detector, images, (boxes, scores), (got_boxes, got_scores)):
        raise YmirError(ErrorCode.MODEL, f"the {fmt.name} file computes other boxes or scores than torch: "
                                         f"{box_error:.3g} px and {score_error:.3g} apart")
    return data, box_error, score_error


def rounding_allows(detector, images: np.ndarray, ours: tuple[np.ndarray, np.ndarray],
                    exported: tuple[np.ndarray, np.ndarray]) -> bool:
    """Whether the export is as close to the model's exact outputs (float64 in torch) as
    torch's own float32 run is, within a factor of 2: a model can be so sensitive to
    rounding that float32 runs of it differ more than the tolerances (an untrained
    rtmdet_x at 640: 0.09 in score between a batch of 1 and of 2 in torch alone), and then
    only this comparison tells a faithful export from a wrong one. Runs only when the plain
    check fails."""
    import copy

    import torch

    with torch.no_grad():
        exact = [t.numpy() for t in copy.deepcopy(detector).double()(torch.from_numpy(images).double())]
    for own, other, reference in zip(ours, exported, exact):
        torch_gap = float(np.abs(own - reference).max())
        if float(np.abs(other - reference).max()) > 2 * torch_gap + SCORE_TOLERANCE:
            return False
    log.info("the model is as sensitive to float rounding as its export differs from torch: float32 torch is "
             "%.3g px and %.3g in score from float64", *(float(np.abs(o - e).max()) for o, e in zip(ours, exact)))
    return True


def export_best_stage(env: EnvConfig, plan: ExportPlan, class_names: list[str]) -> list[str]:
    """Export the best stage of ``result.yaml`` as ``plan`` says and list the new files in
    it; returns their names. Never raises for a format that fails (see the module docstring)."""
    if not plan.formats:
        return []
    result_file = Path(env.output.training_result_file)
    result = read_training_result(result_file)
    stage = result.model_stages[result.best_stage_name]
    stage_dir = result_file.parent / stage.stage_name
    paths = [stage_dir / name for name in stage.files]
    weights, config_file = pick_weights(paths), pick_config(paths)
    try:
        if weights is None or config_file is None:
            raise YmirError(ErrorCode.MODEL, f"stage {stage.stage_name} has no weights or no config file")
        from ray_app.export.decode import DecodedDetector
        from ray_app.infer.model import build_detector, read_stage

        bundle = read_stage(weights, config_file, class_names)
        detector = DecodedDetector(build_detector(bundle, "cpu"))
    except Exception as error:  # the stages stay as training left them
        log.warning("the best stage %s could not be prepared for export, it is kept without %s: %s",
                    stage.stage_name, " or ".join(f.name for f in plan.formats), error)
        return []
    added = []
    for fmt in plan.formats:
        name = f"{stage.stage_name}{fmt.suffix}"
        started = time.perf_counter()
        try:
            data, box_error, score_error = export_stage(fmt, detector, bundle, stage.stage_name, plan.opset)
            atomic_write_bytes(stage_dir / name, data, env.output.root_dir)
        except Exception as error:
            log.warning("%s export of the best stage %s failed, the stage is kept without it: %s: %s",
                        fmt.name, stage.stage_name, type(error).__name__, error)
            continue
        added.append(name)
        log.info("exported stage %s to %s in %.1f s (%.1f MB, opset %d): on the same %d images it gives the "
                 "boxes of torch to %.2g px and the scores to %.2g", stage.stage_name, name,
                 time.perf_counter() - started, len(data) / 1e6, plan.opset, CHECK_BATCH, box_error, score_error)
    if not added:
        return []
    stage.files = [f for f in stage.files if f not in added] + added
    try:
        write_training_result(result_file, result, env.output.root_dir)
    except (OSError, ValueError) as error:  # result.yaml as training left it (written atomically)
        log.warning("could not list %s in %s, which stays as training wrote it: %s", ", ".join(added),
                    result_file, error)
        return []
    return added
