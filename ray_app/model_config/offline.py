"""Keeping a model config off the network: the executor never downloads at run time.

Some mmyolo configs name weights by URL: rtmdet tiny/s start their backbone from an
ImageNet checkpoint (``model.backbone.init_cfg.checkpoint``), and mmengine would fetch it
when the Runner initialises the model. A YMIR host often has no network, and a download at
training time makes a run depend on a third party. Each URL is looked up by its file name
in the image's weights folder (``$RAY_APP_WEIGHTS``, default ``/weights``, where the image
bakes such files); where the file is not there, that part of the model starts from its
default initialisation and the run says so in one warning line.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from mmengine.config import Config

from ray_app.model_config.edit import walk
from ray_app.protocol.errors import ErrorCode, YmirError

log = logging.getLogger(__name__)

WEIGHTS_DIR_VARIABLE = "RAY_APP_WEIGHTS"
DEFAULT_WEIGHTS_DIR = "/weights"


def weights_dir() -> Path:
    """The folder of weights shipped with the image: ``$RAY_APP_WEIGHTS``, else ``/weights``."""
    return Path(os.environ.get(WEIGHTS_DIR_VARIABLE) or DEFAULT_WEIGHTS_DIR)


def is_url(value: object) -> bool:
    return isinstance(value, str) and "://" in value


def url_file_name(url: str) -> str:
    """The name a URL's file has in the weights folder: its last path part."""
    return url.rsplit("/", 1)[-1].split("?", 1)[0]


def local_copy(url: str, folder: Path | None = None) -> Path | None:
    """The file of ``url`` (by its name) in the weights folder, if it is there."""
    path = (folder or weights_dir()) / url_file_name(url)
    return path if path.is_file() else None


def _init_cfgs(node: dict) -> list[dict]:
    value = node.get("init_cfg")
    items = value if isinstance(value, list) else [value]
    return [item for item in items if isinstance(item, dict)]


def checkpoint_urls(cfg: Config) -> list[str]:
    """Every ``init_cfg`` checkpoint URL of ``cfg``: what mmengine would fetch, which the
    image bakes at build time (:mod:`ray_app.model_config.weights`) and
    :func:`localize_weights` looks up at run time."""
    urls = [init["checkpoint"] for node in walk(cfg._cfg_dict) for init in _init_cfgs(node)
            if is_url(init.get("checkpoint"))]
    return list(dict.fromkeys(urls))


def localize_weights(cfg: Config, name: str, folder: Path | None = None) -> None:
    """Point every ``init_cfg`` checkpoint URL of ``cfg`` at its file in the weights folder,
    or drop that ``init_cfg`` (default initialisation) with one warning line naming what is
    missing. A ``load_from`` URL (from cfg_options) with no local file is error 300001."""
    folder = folder or weights_dir()
    missing = []
    for node in walk(cfg._cfg_dict):
        for init in _init_cfgs(node):
            url = init.get("checkpoint")
            if not is_url(url):
                continue
            local = local_copy(url, folder)
            if local is not None:
                init["checkpoint"] = str(local)
                log.info("%s: %s starts from %s", name, init.get("type", "init_cfg"), local)
                continue
            missing.append(url_file_name(url))
            remaining = [i for i in (node["init_cfg"] if isinstance(node["init_cfg"], list) else []) if i is not init]
            node["init_cfg"] = remaining or None
    if missing:
        log.warning("%s: no %s in %s: those layers start from their default initialisation "
                    "(the executor never downloads weights at run time)", name, ", ".join(missing), folder)
    for key in [k for k, v in cfg.items() if k != "load_from" and is_url(v)]:
        cfg.pop(key)  # a variable already resolved into the init_cfg above: the saved config names no URL
    load_from = cfg.get("load_from")
    if is_url(load_from):
        local = local_copy(load_from, folder)
        if local is None:
            raise YmirError(ErrorCode.CONFIG, f"load_from {load_from} is a URL and the executor never downloads at "
                                              f"run time: put the file in {folder} or give "
                                              "pretrained_model_params")
        cfg.load_from = str(local)
