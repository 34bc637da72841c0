"""Reading the platform's YAML files (``env.yaml``, ``config.yaml``) with errors a user reads."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from ray_app.protocol.errors import ErrorCode, YmirError


def read_yaml_mapping(path: str | os.PathLike, what: str, empty_ok: bool) -> dict[str, Any]:
    """The mapping in ``path``; a missing, unreadable, non-YAML or non-mapping file is
    error 300001 naming ``what`` (e.g. 'env file') and the path. An empty file is ``{}``
    when ``empty_ok``."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise YmirError(ErrorCode.CONFIG, f"{what} {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise YmirError(ErrorCode.CONFIG, f"{what} {path} cannot be read: {e}") from None
    except yaml.YAMLError as e:
        raise YmirError(ErrorCode.CONFIG, f"{what} {path} is not valid YAML: {yaml_problem(e)}") from None
    if raw is None:
        if empty_ok:
            return {}
        raise YmirError(ErrorCode.CONFIG, f"{what} {path} is empty: it must be a YAML mapping")
    if not isinstance(raw, dict):
        raise YmirError(ErrorCode.CONFIG, f"{what} {path} must be a YAML mapping, got {type(raw).__name__}")
    return raw


def yaml_problem(error: yaml.YAMLError) -> str:
    """PyYAML's message is several lines quoting the source; a user needs what and where:
    ``expected ',' or ']', but got ':' (line 2, column 4)``."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None)
    if problem and mark is not None:
        return f"{problem} (line {mark.line + 1}, column {mark.column + 1})"
    return " ".join(str(error).split())
