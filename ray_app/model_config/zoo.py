"""``model_name`` -> an mmyolo COCO config shipped inside the mmyolo package.

The names are derived from the config file names by a rule, not kept by hand:
``<family>/<name>[-vNN]_(syncbn|fast)..._coco.py`` gives ``<name>`` with ``-`` as ``_``,
e.g. ``yolov5/yolov5_n-v61_syncbn_fast_8xb16-300e_coco.py`` -> ``yolov5_n`` and
``yolov5_n-p6-v62_...`` -> ``yolov5_n_p6``. Instance-segmentation recipes (``-ins``,
``mask-refine``) need masks and are left out.

Only a config with a released COCO checkpoint gives a name: the ``Weights`` of its entry in
the family's ``metafile.yml``, also shipped in the package (see :func:`released_checkpoints`).
That checkpoint is what training starts from when the task gives no weights (the image bakes
it, see :mod:`ray_app.model_config.weights`), and it is upstream's evidence that the recipe
was trained and reported. Where several configs give one name, one with released weights
wins over one without (``yolov6_n``: the 400-epoch config, whose weights were released, not
the 300-epoch one), then the ``fast`` variant, then the shortest file name (the plain recipe,
not a variant such as yolox's ``-rtmdet-hyp``). A name none of whose configs has released
weights (mmyolo 0.6.0: ``yolov6_v3_*``, ``yolox_nano``, ``yolov5_x_p6``, ``yolov7_d_p6``,
``yolov7_e2e_p6``, and ``ppyoloe_{s,m,l,x}``, which have only an ImageNet backbone) is not
offered: it would start from scratch, or from a backbone alone, which on a YMIR-sized dataset
learns little, and no released result shows its recipe works. Inference never looks a name
up here (a stage carries its own config), so stages trained under such a name still serve
mining and infer.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import yaml

from ray_app.protocol.errors import ErrorCode, YmirError

#: every input size is a multiple of this: the largest stride of every family's network
IMG_SIZE_STEP = 32


@dataclass(frozen=True)
class Family:
    """One mmyolo model family: its config folder, and what the rest of the code reads of it."""

    #: the folder of ``mmyolo/.mim/configs`` that holds its COCO configs
    folder: str
    #: its smallest model, which the tests and benchmarks train
    smallest: str
    #: the smallest ``img_size`` it trains at, measured with ``bench/min_img_size.py`` (one
    #: epoch and one validation of ``smallest`` at every multiple of 32 from 32 to 160, each in
    #: a fresh process; bench/results/min_img_size.json)
    min_img_size: int


#: The families, one entry each: adding a family is one line here (see ``Family``).
FAMILIES = {f.folder: f for f in (
    Family("yolov5", "yolov5_n", min_img_size=32),
    # yolov6's ATSS assigner takes the 9 nearest priors per level: the stride-32 level must
    # have 3 x 3 of them (at 64 px: "The size of tensor a (9) must match the size of tensor b (4)")
    Family("yolov6", "yolov6_n", min_img_size=96),
    Family("yolov7", "yolov7_tiny", min_img_size=32),
    Family("yolov8", "yolov8_n", min_img_size=32),
    Family("yolox", "yolox_tiny", min_img_size=32),
    Family("rtmdet", "rtmdet_tiny", min_img_size=32),
    Family("ppyoloe", "ppyoloe_plus_s", min_img_size=32),
)}
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
def released_checkpoints() -> dict[str, str]:
    """Config file name (lower case) -> the URL of its released COCO checkpoint, from each
    family's ``metafile.yml`` (every model entry has ``Config`` and ``Weights``). Matched
    without case: mmyolo's ppyoloe metafile spells one config ``ppyoloe_plus_L_...``."""
    released = {}
    for family in FAMILIES:
        metafile = configs_root() / family / "metafile.yml"
        if not metafile.is_file():
            raise YmirError(ErrorCode.CONFIG, f"{metafile} is missing: the model zoo is read from mmyolo's metafiles")
        for model in (yaml.safe_load(metafile.read_text()) or {}).get("Models") or []:
            if model.get("Config") and model.get("Weights"):
                released[Path(model["Config"]).name.lower()] = str(model["Weights"])
    return released


@lru_cache(maxsize=1)
def model_zoo() -> dict[str, Path]:
    """Every ``model_name`` with its config file (the rule: see the module docstring)."""
    best: dict[str, tuple[tuple, Path]] = {}
    root = configs_root()
    released = released_checkpoints()
    for family in FAMILIES:
        for path in sorted((root / family).glob("*_coco.py")):
            if _NEEDS_MASKS.search(path.name):
                continue
            name = model_name_of(path)
            rank = (path.name.lower() not in released, "_fast" not in path.stem, len(path.name), path.name)
            if name not in best or rank < best[name][0]:
                best[name] = (rank, path)
    return {name: path for name, (rank, path) in sorted(best.items()) if not rank[0]}


def config_path(model_name: str) -> Path:
    """The config of ``model_name``; an unknown name is error 300001 listing the valid ones."""
    zoo = model_zoo()
    name = str(model_name).strip().lower()
    if name not in zoo:
        raise YmirError(ErrorCode.CONFIG,
                        f"unknown model_name {model_name!r}; valid names: {', '.join(zoo)}")
    return zoo[name]


def checkpoint_url(model_name: str) -> str:
    """The released COCO checkpoint of a zoo name (every name has one: see the module docstring)."""
    return released_checkpoints()[config_path(model_name).name.lower()]


def family_of(model_name: str) -> Family:
    """The family of a zoo name (its config's folder)."""
    return FAMILIES[config_path(model_name).parent.name]


def check_img_size(model_name: str, img_size: int) -> None:
    """300001 unless ``img_size`` is a multiple of 32 and at least the family's smallest
    trainable size (``Family.min_img_size``): checked before Ray starts, so a size the
    network cannot take fails in one line instead of a tensor-shape error in a worker."""
    family = family_of(model_name)
    if img_size % IMG_SIZE_STEP or img_size < family.min_img_size:
        raise YmirError(ErrorCode.CONFIG, f"img_size {img_size} does not fit {model_name}: it must be a multiple of "
                                          f"{IMG_SIZE_STEP}, at least {family.min_img_size} for {family.folder} "
                                          f"models (e.g. {family.min_img_size}, {family.min_img_size + 32}, ..., 640)")
