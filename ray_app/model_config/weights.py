"""Baking the image's weights folder when the image is built, from mmyolo's own metafiles.

``python -m ray_app.model_config.weights download --models all --to /weights`` is what the
Dockerfile runs (its ``COCO_MODELS`` build argument: ``all``, ``none``, or zoo names such as
``yolov8_n,yolov5_s``). For each chosen name it fetches

- the released COCO checkpoint: :func:`ray_app.model_config.zoo.checkpoint_url`, the
  ``Weights`` of the config's entry in the family's ``metafile.yml`` shipped in the mmyolo
  package (not a hand-kept list: a new mmyolo brings its own), and
- every checkpoint the config names by URL in an ``init_cfg`` (rtmdet tiny/s: an ImageNet
  CSPNeXt backbone), found by walking the config as
  :func:`ray_app.model_config.offline.localize_weights` does at run time.

Files keep their URL's file name: training finds a COCO checkpoint by that name
(:func:`ray_app.train.pretrained.coco_weights`) and a backbone by its URL's name
(:func:`ray_app.model_config.offline.local_copy`). This module is the only code that
downloads, and only at image build time: at run time the executor never does.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from ray_app.model_config.offline import checkpoint_urls, url_file_name, weights_dir
from ray_app.model_config.zoo import checkpoint_url, config_path, model_zoo
from ray_app.protocol.errors import ErrorCode, YmirError

#: OpenMMLab file names end with ``-<first hex digits of the file's sha256>.pth`` (torch.hub checks the same)
HASH_SUFFIX = re.compile(r"-([0-9a-f]{8,})\.pth$")
ATTEMPTS = 3
#: seconds without a byte before a download attempt is given up
TIMEOUT_S = 60


def select(models: str) -> list[str]:
    """``all`` (every zoo name), ``none`` or empty (nothing), or zoo names separated by commas
    or spaces; an unknown name is error 300001 listing the valid ones."""
    spec = models.strip().lower()
    if spec == "all":
        return list(model_zoo())
    if spec in ("", "none"):
        return []
    names = list(dict.fromkeys(n for n in re.split(r"[,\s]+", spec) if n))
    for name in names:
        config_path(name)  # raises for an unknown name
    return names


def weight_urls(names: list[str]) -> dict[str, list[str]]:
    """URL -> the names that need it: each name's COCO checkpoint, then the checkpoints its
    config's ``init_cfg`` names."""
    from mmengine.config import Config

    needed: dict[str, list[str]] = {}
    for name in names:
        for url in [checkpoint_url(name), *checkpoint_urls(Config.fromfile(str(config_path(name))))]:
            needed.setdefault(url, []).append(name)
    return needed


def fetch(url: str, folder: Path) -> Path:
    """``url`` into ``folder`` under its file name, unless it is there already. The file is
    written beside its target and renamed once complete and, where its name carries a sha256
    prefix, checked against it, so a broken download never leaves a file training would take."""
    target = folder / url_file_name(url)
    if target.is_file():
        return target
    expected = HASH_SUFFIX.search(target.name)
    error: Exception | None = None
    for attempt in range(ATTEMPTS):
        if attempt:
            time.sleep(5 * attempt)
        handle, partial = tempfile.mkstemp(dir=folder, prefix=f".{target.name}.")
        try:
            digest = hashlib.sha256()
            with os.fdopen(handle, "wb") as out, urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
                while chunk := response.read(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
            if expected and not digest.hexdigest().startswith(expected.group(1)):
                raise ValueError(f"sha256 {digest.hexdigest()[:12]}… does not start with {expected.group(1)}")
            os.replace(partial, target)
            return target
        except (OSError, ValueError) as e:  # URLError and timeouts are OSErrors
            error = e
        finally:
            Path(partial).unlink(missing_ok=True)
    raise YmirError(ErrorCode.NETWORK, f"downloading {url} failed {ATTEMPTS} times: {error}")


def check_checkpoint(path: Path) -> None:
    """The checkpoint loads the way training loads it (the safe loader of
    :mod:`ray_app.checkpoints`): a file it would refuse fails the image build, not a task."""
    from ray_app.checkpoints import load_checkpoint_file

    load_checkpoint_file(path)


def download(models: str, folder: Path) -> list[Path]:
    """Every file the chosen models need, in ``folder`` (see the module docstring)."""
    names = select(models)
    plan = weight_urls(names)
    coco = {checkpoint_url(name) for name in names}
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for url, users in plan.items():
        path = fetch(url, folder)
        if url in coco:
            check_checkpoint(path)
        print(f"weights: {path.name} ({path.stat().st_size / 1e6:.0f} MB) for {', '.join(users)}", flush=True)
        files.append(path)
    print(f"weights: {len(files)} files for {len(names)} models in {folder}", flush=True)
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ray_app.model_config.weights",
                                     description="Fill the image's weights folder (run at image build time only).")
    commands = parser.add_subparsers(dest="command", required=True)
    fetch_cmd = commands.add_parser("download", help="download the released COCO checkpoints and the backbones "
                                                     "their configs name")
    listing = commands.add_parser("list", help="print each URL and the names that need it (no download)")
    for command in (fetch_cmd, listing):
        command.add_argument("--models", default="all", help="all, none, or zoo names: yolov8_n,yolov5_s")
    fetch_cmd.add_argument("--to", type=Path, default=None, help="the weights folder (default: $RAY_APP_WEIGHTS, "
                                                                 "else /weights)")
    args = parser.parse_args(argv)
    try:
        if args.command == "list":
            for url, users in weight_urls(select(args.models)).items():
                print(f"{url}\t{','.join(users)}")
        else:
            download(args.models, args.to or weights_dir())
    except YmirError as error:
        print(f"weights: {error.message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
