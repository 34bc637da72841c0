"""``model_name`` -> an mmyolo COCO config shipped inside the mmyolo package.

The names are derived from the config file names by a rule, not kept by hand:
``<family>/<name>[-vNN]_(syncbn|fast)..._coco.py`` gives ``<name>`` with ``-`` as ``_``,
e.g. ``yolov5/yolov5_n-v61_syncbn_fast_8xb16-300e_coco.py`` -> ``yolov5_n`` and
``yolov5_n-p6-v62_...`` -> ``yolov5_n_p6``. Where several files give one name, the
``fast`` variant with the shortest file name wins (the plain recipe, not a variant).
Instance-segmentation recipes (``-ins``, ``mask-refine``) need masks and are left out.
"""

from __future__ import annotations

import importlib.util
import re
from functools import lru_cache
from pathlib import Path

from ray_app.protocol.errors import ErrorCode, YmirError

FAMILIES = ("yolov5", "yolov6", "yolov7", "yolov8", "yolox", "rtmdet", "ppyoloe")
_NEEDS_MASKS = re.compile(r"(-ins_|mask-refine)")
_RECIPE_START = re.compile(r"_(?:syncbn|fast)")
_VERSION_TAG = re.compile(r"-v\d+")


def configs_root() -> Path:
    """``mmyolo/.mim/configs`` of the installed mmyolo (found without importing it)."""
    spec = importlib.util.find_spec("mmyolo")
    if spec is None or not spec.submodule_search_locations:
        raise YmirError(ErrorCode.CONFIG, "mmyolo is not installed in this image")
    return Path(list(spec.submodule_search_locations)[0]) / ".mim" / "configs"


def model_name_of(config_file: Path) -> str:
    """The ``model_name`` a config file is known by (see the module docstring)."""
    head = _RECIPE_START.split(config_file.stem, maxsplit=1)[0]
    return _VERSION_TAG.sub("", head).replace("-", "_")


@lru_cache(maxsize=1)
def model_zoo() -> dict[str, Path]:
    """Every ``model_name`` with its config file."""
    best: dict[str, tuple[tuple, Path]] = {}
    root = configs_root()
    for family in FAMILIES:
        for path in sorted((root / family).glob("*_coco.py")):
            if _NEEDS_MASKS.search(path.name):
                continue
            name = model_name_of(path)
            rank = ("_fast" not in path.stem, len(path.name), path.name)
            if name not in best or rank < best[name][0]:
                best[name] = (rank, path)
    return {name: path for name, (_, path) in sorted(best.items())}


def config_path(model_name: str) -> Path:
    """The config of ``model_name``; an unknown name is error 300001 listing the valid ones."""
    zoo = model_zoo()
    name = str(model_name).strip().lower()
    if name not in zoo:
        raise YmirError(ErrorCode.CONFIG,
                        f"unknown model_name {model_name!r}; valid names: {', '.join(zoo)}")
    return zoo[name]
