"""Model files named in ``config.yaml`` (``pretrained_model_params``, ``model_params_path``).

The platform gives them as ``STAGE/FILE`` relative to ``input.models_dir`` (it unpacks
only the chosen stage); an absolute path works too.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

WEIGHT_SUFFIXES = (".pth", ".pt")
_BEST = re.compile(r"^(best_|bbox_mAP_)")
_PERIODIC = re.compile(r"^(epoch_|iter_)")


def resolve(entries: list[str], models_dir: str | os.PathLike) -> list[Path]:
    """Each entry as a path: absolute as given, else under ``models_dir``."""
    return [Path(e) if os.path.isabs(e) else Path(models_dir) / e for e in entries]


def pick_weights(paths: list[Path]) -> Path | None:
    """The weights to load, as the original executor chose: the newest ``best_*`` /
    ``bbox_mAP_*`` file, else the newest ``epoch_*`` / ``iter_*``, else the newest weights
    file. Newest by modification time, then by name; only files that exist count."""
    weights = [p for p in paths if p.suffix in WEIGHT_SUFFIXES and p.is_file()]
    for group in ([p for p in weights if _BEST.match(p.name)], [p for p in weights if _PERIODIC.match(p.name)], weights):
        if group:
            return max(group, key=lambda p: (p.stat().st_mtime, p.name))
    return None


def pick_config(paths: list[Path]) -> Path | None:
    """The mmengine config saved with the stage (the ``.py`` file), if any."""
    configs = [p for p in paths if p.suffix == ".py" and p.is_file()]
    return configs[0] if configs else None
