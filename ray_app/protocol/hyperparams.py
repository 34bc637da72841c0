"""Hyperparameters: the image's template defaults, then the task's ``config.yaml``.

The templates in ``img-man/`` are the ONE place defaults live (the platform shows them to
users); the pydantic models here only say what a valid value is. A wrong value becomes
one readable line with error 300001.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from ray_app.protocol.env import EnvConfig, describe_validation_error
from ray_app.protocol.errors import ErrorCode, YmirError
from ray_app.protocol.yaml_files import read_yaml_mapping

log = logging.getLogger(__name__)

TEMPLATE_DIR_VARIABLE = "RAY_APP_IMG_MAN"
#: what the platform adds to every config.yaml (``ymir-protocol.md``), read by a task or not:
#: never worth a warning
PLATFORM_KEYS = frozenset({"task_id", "gpu_id", "gpu_count", "class_names", "shm_size", "export_format",
                           "pretrained_model_params", "model_params_path"})
EXPORT_FORMATS = ("ark:raw", "det-ark:raw", "voc:raw", "det-voc:raw")


def comma_list(text: str) -> tuple[str, ...]:
    """The parts of a comma-separated value, blanks around them ignored, empty ones dropped."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


def saved_file_patterns(text: str) -> tuple[str, ...]:
    """``ymir_saved_file_patterns`` as the YMIR SDK reads it: regular expressions separated by
    commas (``'.*\\.log, .*\\.json'``), blanks around them ignored."""
    return comma_list(text)


def _table_key(value: Any, table: dict[str, Any]) -> str:
    """``value`` as a key of ``table`` (case and blanks ignored), else the keys it may be."""
    name = str(value).strip().lower()
    if name not in table:
        raise ValueError(f"must be one of {', '.join(table)}")
    return name


def _as_list(cls: type, value: Any) -> Any:
    """Model files are a list of ``STAGE/FILE``; tolerate one string, or nothing."""
    if value in (None, ""):
        return []
    return [value] if isinstance(value, str) else value


class CommonParams(BaseModel):
    """Fields every task reads. Unknown fields are kept (the platform adds its own)."""

    model_config = ConfigDict(extra="allow")

    task_id: str = ""
    gpu_id: str = ""
    class_names: list[str] = Field(min_length=1)
    img_size: int = Field(ge=32)
    samples_per_gpu: int = Field(ge=1)
    workers_per_gpu: int = Field(ge=0)
    cpu_num_workers: int = Field(ge=1)
    ray_address: str = ""
    #: the Ray cluster's token (sensitive: hidden from repr, logs and error messages)
    ray_auth_token: SecretStr = SecretStr("")

    @field_validator("ray_auth_token", mode="before")
    @classmethod
    def _token_text(cls, value: Any) -> Any:
        """Text as YAML gives it (a token of digits is an int there); nothing else is a token."""
        if value is None:
            return ""
        return str(value).strip() if isinstance(value, (str, int)) and not isinstance(value, bool) else value

    @field_validator("gpu_id", mode="before")
    @classmethod
    def _gpu_id_as_text(cls, value: Any) -> str:
        """The platform writes ``'0,1'``; a bare ``0`` in YAML is an int. None = CPU."""
        return "" if value is None else str(value).strip()

    @field_validator("class_names")
    @classmethod
    def _names_unique(cls, names: list[str]) -> list[str]:
        if len(set(names)) != len(names):
            raise ValueError("class names must be unique")
        if any(not str(n).strip() for n in names):
            raise ValueError("class names must not be empty")
        return names

    @property
    def gpu_ids(self) -> list[int]:
        """GPU indices as the container sees them (``'0,1'`` -> ``[0, 1]``); empty = CPU."""
        try:
            return [int(g) for g in self.gpu_id.replace(" ", "").split(",") if g != ""]
        except ValueError:
            raise YmirError(ErrorCode.CONFIG, f"gpu_id must be comma-separated integers, got {self.gpu_id!r}") from None


class TrainingParams(CommonParams):
    """``training-template.yaml`` plus what the platform adds for training."""

    model_name: str
    export_format: str
    max_epochs: int = Field(ge=1)
    val_interval: int = Field(ge=1)
    max_keep_checkpoints: int = Field(ge=-1)
    learning_rate: float = Field(ge=0)
    find_unused_parameters: bool = False
    #: mixed precision on GPUs (ignored on CPU)
    amp: bool = True
    cfg_options: str = ""
    args_options: str = ""
    ymir_saved_file_patterns: str = ""
    ray_storage_path: str = ""
    pretrained_model_params: list[str] = []
    #: formats the best stage is also exported to, comma-separated (``ray_app.export.formats``)
    deploy_formats: str = ""
    #: the ONNX opset of an ONNX export
    opset: int = 11

    @field_validator("export_format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        value = str(value).strip().lower()
        if value not in EXPORT_FORMATS:
            raise ValueError(f"must be one of {', '.join(EXPORT_FORMATS)}")
        return value

    @field_validator("max_keep_checkpoints")
    @classmethod
    def _not_zero(cls, value: int) -> int:
        if value == 0:
            raise ValueError("must be -1 (keep all) or at least 1")
        return value

    @field_validator("cfg_options", "args_options", "ymir_saved_file_patterns", mode="before")
    @classmethod
    def _none_is_empty_text(cls, value: Any) -> Any:
        return "" if value is None else value

    @field_validator("deploy_formats", mode="before")
    @classmethod
    def _formats_text(cls, value: Any) -> Any:
        """A comma string as the template has it; a YAML list or nothing are taken too."""
        if value is None:
            return ""
        return ",".join(str(v) for v in value) if isinstance(value, (list, tuple)) else value

    @field_validator("ymir_saved_file_patterns")
    @classmethod
    def _regular_expressions(cls, value: str) -> str:
        for pattern in saved_file_patterns(value):
            try:
                re.compile(pattern)
            except re.error as e:
                raise ValueError(f"{pattern!r} is not a regular expression: {e}") from None
        return value

    @property
    def saved_file_patterns(self) -> tuple[str, ...]:
        return saved_file_patterns(self.ymir_saved_file_patterns)

    @property
    def deploy_format_names(self) -> tuple[str, ...]:
        """``deploy_formats`` as names: ``'onnx'`` -> ``('onnx',)``; case and blanks ignored."""
        return tuple(dict.fromkeys(part.lower() for part in comma_list(self.deploy_formats)))

    _pretrained_as_list = field_validator("pretrained_model_params", mode="before")(_as_list)


class InferParams(CommonParams):
    """``infer-template.yaml`` plus the model stage the platform hands over."""

    #: 0: the input size recorded in the stage's config (the size it was trained at)
    img_size: int = Field(ge=0)
    conf_threshold: float = Field(ge=0, le=1)
    iou_threshold: float = Field(gt=0, le=1)
    model_params_path: list[str] = Field(min_length=1)
    #: mmengine overrides of the stage's config, as in training (``a.b=1 c=[1,2]``)
    cfg_options: str = ""
    #: what runs the network in CPU model actors (``ray_app.infer.runtimes.RUNTIMES``)
    cpu_runtime: str = "torch"

    @field_validator("cpu_runtime", mode="before")
    @classmethod
    def _known_runtime(cls, value: Any) -> str:
        from ray_app.infer.runtimes import RUNTIMES

        return _table_key(value, RUNTIMES)

    @field_validator("img_size")
    @classmethod
    def _own_size_or_at_least_32(cls, value: int) -> int:
        if 0 < value < 32:
            raise ValueError("must be 0 (the model's own size) or at least 32")
        return value

    @field_validator("cfg_options", mode="before")
    @classmethod
    def _no_options(cls, value: Any) -> Any:
        return "" if value is None else value

    _model_files_as_list = field_validator("model_params_path", mode="before")(_as_list)


class MiningParams(InferParams):
    """``mining-template.yaml``: the inference fields and the scoring algorithm."""

    mining_algorithm: str
    #: one weight >= 0 per class; a short list is padded with 1.0, as the sister executors do
    class_distribution_scores: list[Annotated[float, Field(ge=0)]] = []
    #: 0: rank by score alone; up to 1: weigh each score against the image's similarity to
    #: those ranked before it (``ray_app.mining.diversity``)
    diversity: float = Field(default=0.0, ge=0, le=1)

    @field_validator("mining_algorithm", mode="before")
    @classmethod
    def _known_algorithm(cls, value: Any) -> str:
        from ray_app.mining import ALGORITHMS

        return _table_key(value, ALGORITHMS)

    @field_validator("class_distribution_scores", mode="before")
    @classmethod
    def _list_or_comma_text(cls, value: Any) -> Any:
        """A list, or the sister executors' comma string ``'1.0,2.0'``; empty: all classes 1."""
        if value in (None, ""):
            return []
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _one_weight_per_class(self) -> MiningParams:
        """More weights than classes is an error; fewer are padded with 1.0 (det-yolov5-tmi's
        rule, ``ymir-protocol.md``), with one warning."""
        weights, classes = self.class_distribution_scores, len(self.class_names)
        if len(weights) > classes:
            raise ValueError(f"class_distribution_scores has {len(weights)} values for {classes} classes")
        if 0 < len(weights) < classes:
            log.warning("class_distribution_scores has %d values for %d classes: the last %d weigh 1.0",
                        len(weights), classes, classes - len(weights))
            self.class_distribution_scores = [*weights, *[1.0] * (classes - len(weights))]
        return self


def template_dir() -> Path:
    """``$RAY_APP_IMG_MAN``, else ``/img-man`` (in the image), else the repo's ``img-man/``."""
    explicit = os.environ.get(TEMPLATE_DIR_VARIABLE)
    if explicit:
        return Path(explicit)
    if Path("/img-man/training-template.yaml").is_file():
        return Path("/img-man")
    return Path(__file__).resolve().parents[2] / "img-man"


def load_template(name: str) -> dict[str, Any]:
    """The defaults of ``{name}-template.yaml`` (training, mining or infer)."""
    path = template_dir() / f"{name}-template.yaml"
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def read_config_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """The task's ``config.yaml`` as a mapping (empty file: no overrides); errors are 300001."""
    return read_yaml_mapping(path, "config file", empty_ok=True)


def merged_config(templates: list[str], config_file: str | os.PathLike) -> dict[str, Any]:
    """Template defaults (later templates win), then ``config.yaml`` on top."""
    merged: dict[str, Any] = {}
    for name in templates:
        merged.update(load_template(name))
    merged.update(read_config_yaml(config_file))
    return merged


def _validate(model: type[BaseModel], values: dict[str, Any], config_file: str) -> Any:
    """The task's hyperparameters, or 300001 with the first bad field. Keys the task does
    not read (and the platform did not add) are kept, as YMIR may add its own, but named in
    one warning, with the field a misspelt one most resembles (``max_epoch`` would otherwise
    leave ``max_epochs`` at the template's default without a word)."""
    try:
        params = model.model_validate(values)
    except ValidationError as e:
        raise YmirError(ErrorCode.CONFIG, f"{config_file}: {describe_validation_error(e)}") from None
    unread = sorted(set(params.model_extra or {}) - PLATFORM_KEYS)
    if unread:
        named = []
        for key in unread:
            like = difflib.get_close_matches(key, list(model.model_fields), n=1)
            named.append(f"{key} (did you mean {like[0]}?)" if like else key)
        log.warning("%s: keys this task does not read, ignored: %s", config_file, ", ".join(named))
    return params


def training_params(env: EnvConfig) -> TrainingParams:
    """Hyperparameters of a training task."""
    values = merged_config(["training"], env.input.config_file)
    return _validate(TrainingParams, values, env.input.config_file)


def inference_params(env: EnvConfig) -> InferParams | MiningParams:
    """Hyperparameters of a mining and/or infer task.

    With both flags set, the infer template's defaults are read first and the mining
    template's on top: one pass serves both, with mining's thresholds.
    """
    if env.run_mining:
        values = merged_config(["infer", "mining"], env.input.config_file)
        return _validate(MiningParams, values, env.input.config_file)
    values = merged_config(["infer"], env.input.config_file)
    return _validate(InferParams, values, env.input.config_file)
