"""Writers for what the platform reads back: ``result.yaml``, ``infer-result.json`` and
``result.tsv``. Each validates against the contract, then writes atomically under the
output root.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import yaml
from pydantic import BaseModel, Field, field_validator
from ymir_exc.result_writer import Annotation, Box

from ray_app.protocol.atomic import atomic_write_text

__all__ = ["Annotation", "Box", "ModelStage", "TrainingResult", "read_training_result", "write_training_result",
           "write_infer_result", "write_mining_result"]

STAGE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


class ModelStage(BaseModel):
    """One stage of a model package: everything needed to load it, as basenames."""

    stage_name: str
    files: list[str] = Field(min_length=1)
    timestamp: int
    mAP: float = Field(ge=0, le=1)

    @field_validator("stage_name")
    @classmethod
    def _identifier(cls, name: str) -> str:
        if not STAGE_NAME.match(name):
            raise ValueError(f"stage name {name!r} must be letters, digits and _, starting with a letter")
        return name

    @field_validator("files")
    @classmethod
    def _basenames(cls, files: list[str]) -> list[str]:
        for f in files:
            if os.path.basename(f) != f or f in ("", ".", ".."):
                raise ValueError(f"stage file {f!r} must be a plain file name")
        return files


class TrainingResult(BaseModel):
    """``models/result.yaml``."""

    best_stage_name: str
    mAP: float = Field(ge=0, le=1)
    evaluate_config: dict[str, float] = {}
    model_stages: dict[str, ModelStage]

    @field_validator("model_stages")
    @classmethod
    def _keys_match(cls, stages: dict[str, ModelStage]) -> dict[str, ModelStage]:
        for key, stage in stages.items():
            if key != stage.stage_name:
                raise ValueError(f"stage key {key!r} differs from its stage_name {stage.stage_name!r}")
        return stages


def write_training_result(path: str | os.PathLike, result: TrainingResult, root: str | os.PathLike) -> None:
    """Write ``result.yaml``; every listed file must exist beside it or in its stage folder."""
    if result.best_stage_name not in result.model_stages:
        raise ValueError(f"best stage {result.best_stage_name!r} is not among the stages")
    models_dir = Path(path).parent
    for stage in result.model_stages.values():
        for f in stage.files:
            if not ((models_dir / stage.stage_name / f).is_file() or (models_dir / f).is_file()):
                raise ValueError(f"stage {stage.stage_name}: file {f} is missing")
    text = yaml.safe_dump(result.model_dump(), sort_keys=False)
    atomic_write_text(path, text, root)


def read_training_result(path: str | os.PathLike) -> TrainingResult:
    """``result.yaml`` as written by :func:`write_training_result`, validated again."""
    return TrainingResult.model_validate(yaml.safe_load(Path(path).read_text(encoding="utf-8")))


def write_infer_result(
    path: str | os.PathLike,
    detections: Mapping[str, Iterable[Annotation]],
    root: str | os.PathLike,
    use_boxes_keyword: bool = True,
) -> None:
    """Write ``infer-result.json`` keyed by image basename.

    ``use_boxes_keyword``: ``boxes`` for protocol >= 1.0.0, ``annotations`` before.
    """
    key = "boxes" if use_boxes_keyword else "annotations"
    body = {
        os.path.basename(image): {key: [a.model_dump() for a in annotations]}
        for image, annotations in detections.items()
    }
    atomic_write_text(path, json.dumps({"detection": body}), root)


def write_mining_result(path: str | os.PathLike, scores: Iterable[tuple[str, float]], root: str | os.PathLike) -> None:
    """Write ``result.tsv``: ``<image path>\\t<score>`` sorted by score, highest first."""
    ranked = sorted(((str(p), float(s)) for p, s in scores), key=lambda item: -item[1])
    atomic_write_text(path, "".join(f"{p}\t{s!r}\n" for p, s in ranked), root)
