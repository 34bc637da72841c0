"""``env.yaml``: where the task's inputs are and where its outputs go.

The path sections reuse ``ymir_exc.env``'s models (the platform's own SDK); this module
adds what that old PyPI release drops: ``protocol_version`` (it decides the infer-result
keyword) and the executor log file.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from pydantic import ValidationError
from ymir_exc import env as ymir_env

from ray_app.protocol.atomic import ensure_under
from ray_app.protocol.errors import ErrorCode, YmirError
from ray_app.protocol.yaml_files import read_yaml_mapping

DEFAULT_ENV_FILE = "/in/env.yaml"
ENV_FILE_VARIABLE = "YMIR_ENV_FILE"
#: the ``output:`` paths this executor writes (``executor_log_file`` is written by the platform)
WRITTEN_OUTPUTS = ("monitor_file", "models_dir", "tensorboard_dir", "training_result_file", "mining_result_file",
                   "infer_result_file")


class EnvInput(ymir_env.EnvInputConfig):
    """``input:`` paths (absolute; index files not used by the task are ``''``)."""


class EnvOutput(ymir_env.EnvOutputConfig):
    """``output:`` paths, all under ``root_dir``."""

    executor_log_file: str = "/out/ymir-executor-out.log"


class EnvConfig(ymir_env.EnvConfig):
    """The whole ``env.yaml``."""

    protocol_version: str = ""
    input: EnvInput = EnvInput()
    output: EnvOutput = EnvOutput()
    manifest_file: str = "/img-man/manifest.yaml"

    @property
    def protocol_at_least_1(self) -> bool:
        """True for protocol 1.0.0 and later: infer results use ``boxes``, else ``annotations``."""
        return version_tuple(self.protocol_version) >= (1, 0, 0)


def version_tuple(version: str) -> tuple[int, ...]:
    """``'1.1.0'`` -> ``(1, 1, 0)``; an empty or odd version counts as ``(0,)`` (oldest)."""
    parts = []
    for piece in str(version or "").strip().split("."):
        if not piece.isdigit():
            break
        parts.append(int(piece))
    return tuple(parts) or (0,)


def env_file_path(explicit: str | None = None) -> Path:
    """The env file: ``explicit``, else ``$YMIR_ENV_FILE``, else ``/in/env.yaml``."""
    return Path(explicit or os.environ.get(ENV_FILE_VARIABLE) or DEFAULT_ENV_FILE)


def load_env(path: str | os.PathLike) -> EnvConfig:
    """Read and validate ``env.yaml``; every failure is a :class:`YmirError` (300001)."""
    raw = read_yaml_mapping(path, "env file", empty_ok=False)
    try:
        return EnvConfig.model_validate(raw)
    except ValidationError as e:
        raise YmirError(ErrorCode.CONFIG, f"env file {path}: {describe_validation_error(e)}") from None


def check_outputs(env: EnvConfig, names: Iterable[str] = WRITTEN_OUTPUTS) -> None:
    """Every output this executor writes must lie under ``output.root_dir`` (300001 if not).

    The writers refuse a path outside the root (``protocol/atomic.py``); learning it when a
    result is written would throw the whole run away, so it is checked before any work. A key
    left out of ``output:`` takes its default under /out, so a partial ``output:`` section
    with another root fails here, naming the key.
    """
    root = env.output.root_dir
    for name in names:
        path = getattr(env.output, name)
        try:
            ensure_under(path, root)
        except ValueError:
            raise YmirError(ErrorCode.CONFIG, f"env.yaml output.{name} {path} is not under output.root_dir {root}: "
                                              "every output must be written under it") from None


#: fields whose value never appears in a message (``monitor.txt`` and the log are shown to users)
SECRET_FIELDS = {"ray_auth_token"}


def describe_validation_error(error: ValidationError) -> str:
    """One readable line per pydantic error: ``field: message (got value)``, joined by '; '
    (the value of a secret field is never shown)."""
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "value"
        secret = bool(SECRET_FIELDS & {str(p) for p in item["loc"]})
        got = f" (got {item['input']!r})" if item["type"] != "missing" and "input" in item and not secret else ""
        parts.append(f"{where}: {item['msg']}{got}")
    return "; ".join(parts)
