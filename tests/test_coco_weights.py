"""COCO weights: every zoo name has a released checkpoint in mmyolo's metafiles, the image's
build-time download takes them from there, and training starts from one, its class layers
re-initialised for the task's classes with one warning line."""

from __future__ import annotations

import hashlib
import io
import re
from pathlib import Path

import pytest
import torch
import yaml

from conftest import run_entry
from ray_app.model_config import weights
from ray_app.model_config.zoo import (FAMILIES, checkpoint_url, config_path, configs_root, model_name_of, model_zoo,
                                      released_checkpoints)
from ray_app.protocol.errors import ErrorCode, YmirError
from ray_app.train.pretrained import coco_weights, fit_message, fit_to_model

#: the names the templates, tests and benchmarks use
USED = ["yolov5_n", "yolov6_n", "yolov7_tiny", "yolov8_n", "yolox_tiny", "rtmdet_tiny", "ppyoloe_plus_s"]


def test_every_zoo_name_resolves_to_a_metafile_url():
    zoo = model_zoo()
    assert set(USED) <= set(zoo) and {f.smallest for f in FAMILIES.values()} <= set(zoo)
    for name, config in zoo.items():
        url = checkpoint_url(name)
        assert re.fullmatch(r"https://download\.openmmlab\.com/mmyolo/v0/\S+\.pth", url), (name, url)
        assert weights.HASH_SUFFIX.search(url), url  # the download can check it
        family = config.parent.name
        metafile = yaml.safe_load((configs_root() / family / "metafile.yml").read_text())
        assert url in [m.get("Weights") for m in metafile["Models"]], (name, url)


def test_zoo_rule_prefers_configs_with_released_weights():
    zoo = model_zoo()
    for size in "nst":  # released for the 400-epoch configs only
        assert zoo[f"yolov6_{size}"].name == f"yolov6_{size}_syncbn_fast_8xb32-400e_coco.py"
    assert zoo["ppyoloe_plus_l"].name == "ppyoloe_plus_l_fast_8xb8-80e_coco.py"  # metafile spells it ..._L_...
    assert zoo["yolox_tiny"].name == "yolox_tiny_fast_8xb8-300e_coco.py"  # not the rtmdet-hyp variant
    # a name none of whose configs has released weights is not offered
    released = released_checkpoints()
    offered = set(zoo.values())
    for family in FAMILIES:
        for path in (configs_root() / family).glob("*_coco.py"):
            if model_name_of(path) not in zoo and "-ins_" not in path.name and "mask-refine" not in path.name:
                assert path.name.lower() not in released, path
            if path in offered:
                assert path.name.lower() in released
    assert "yolov6_v3_n" not in zoo and "yolox_nano" not in zoo


def test_selecting_models():
    assert weights.select("all") == list(model_zoo())
    assert weights.select("none") == [] and weights.select(" ") == []
    assert weights.select("yolov8_n, yolov5_s,yolov8_n") == ["yolov8_n", "yolov5_s"]
    with pytest.raises(YmirError) as error:
        weights.select("yolov8_n,yolov6_v3_n")
    assert error.value.code == ErrorCode.CONFIG and "yolov6_v3_n" in error.value.message


def test_backbones_come_from_walking_the_configs():
    plan = weights.weight_urls(["rtmdet_tiny", "yolov8_n"])
    names = {url.rsplit("/", 1)[-1]: users for url, users in plan.items()}
    assert names.pop("cspnext-tiny_imagenet_600e.pth") == ["rtmdet_tiny"]
    assert set(names) == {checkpoint_url(n).rsplit("/", 1)[-1] for n in ("rtmdet_tiny", "yolov8_n")}


def _serve(monkeypatch, files: dict[str, bytes]) -> list[str]:
    """``urllib.request.urlopen`` answering from ``files``; returns the URLs asked for."""
    asked = []

    def urlopen(url, timeout=None):
        asked.append(url)
        if url not in files:
            raise OSError(f"no route to {url}")
        return io.BytesIO(files[url])

    monkeypatch.setattr(weights.urllib.request, "urlopen", urlopen)
    monkeypatch.setattr(weights.time, "sleep", lambda s: None)
    return asked


def _checkpoint_bytes() -> bytes:
    buffer = io.BytesIO()
    torch.save({"state_dict": {"w": torch.ones(2)}, "meta": {}}, buffer)
    return buffer.getvalue()


def test_fetch_checks_the_hash_in_the_name_and_keeps_no_partial_file(tmp_path, monkeypatch):
    data = _checkpoint_bytes()
    good = f"https://example.invalid/m/x_20230101-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    bad = "https://example.invalid/m/y_20230101-00000000.pth"
    asked = _serve(monkeypatch, {good: data, bad: data})
    assert weights.fetch(good, tmp_path).read_bytes() == data
    assert weights.fetch(good, tmp_path) == tmp_path / good.rsplit("/", 1)[-1] and asked.count(good) == 1  # kept
    with pytest.raises(YmirError) as error:
        weights.fetch(bad, tmp_path)
    assert error.value.code == ErrorCode.NETWORK and "sha256" in error.value.message
    assert asked.count(bad) == weights.ATTEMPTS
    assert sorted(p.name for p in tmp_path.iterdir()) == [good.rsplit("/", 1)[-1]]  # no partial file left


def test_download_fetches_the_plan_and_checks_each_checkpoint(tmp_path, monkeypatch, capsys):
    fetched = []

    def fetch(url, folder):
        fetched.append(url)
        path = folder / url.rsplit("/", 1)[-1]
        path.write_bytes(_checkpoint_bytes() if "imagenet" not in url else b"backbone")
        return path

    monkeypatch.setattr(weights, "fetch", fetch)
    files = weights.download("rtmdet_tiny", tmp_path / "weights")
    assert fetched == list(weights.weight_urls(["rtmdet_tiny"])) and len(files) == 2
    assert "weights: 2 files for 1 models" in capsys.readouterr().out
    assert weights.main(["download", "--models", "none", "--to", str(tmp_path / "none")]) == 0
    assert (tmp_path / "none").is_dir() and not list((tmp_path / "none").iterdir())
    assert weights.main(["download", "--models", "no_such_model", "--to", str(tmp_path / "x")]) == 1


def test_coco_weights_found_by_the_released_name_or_the_config_stem(tmp_path):
    config = config_path("yolox_tiny")  # released as yolox_tiny_8xb8-..., not <config stem>...
    released = tmp_path / checkpoint_url("yolox_tiny").rsplit("/", 1)[-1]
    assert not released.name.startswith(config.stem)
    assert coco_weights(config, tmp_path) is None
    by_hand = tmp_path / f"{config.stem}_20230101-fake0000.pth"
    by_hand.write_bytes(b"x")
    assert coco_weights(config, tmp_path) == by_hand
    released.write_bytes(b"x")
    assert coco_weights(config, tmp_path) == released


def test_fit_to_model_replaces_only_tensors_of_another_shape():
    model = {"backbone.conv.weight": torch.zeros(4, 3), "bbox_head.cls_preds.0.2.weight": torch.zeros(3, 4),
             "bbox_head.cls_preds.0.2.bias": torch.zeros(3)}
    state = {"backbone.conv.weight": torch.ones(4, 3), "bbox_head.cls_preds.0.2.weight": torch.ones(80, 4),
             "bbox_head.cls_preds.0.2.bias": torch.ones(80), "extra.weight": torch.ones(1)}
    replaced = fit_to_model(state, model)
    assert replaced == ["bbox_head.cls_preds.0.2.weight", "bbox_head.cls_preds.0.2.bias"]
    assert state["backbone.conv.weight"].sum() == 12 and state["bbox_head.cls_preds.0.2.bias"].shape == (3,)
    assert state["bbox_head.cls_preds.0.2.weight"].sum() == 0 and "extra.weight" in state
    message = fit_message(replaced, state, model)
    assert message.startswith("starting weights: 2 tensors of bbox_head.cls_preds have other shapes")
    assert "1 of the model's 3 tensors are loaded" in message


def _fake_coco_checkpoint(model_name: str, folder: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """A COCO-shaped (80-class) checkpoint of ``model_name`` built from its config, named as
    released checkpoints are: ``<config stem>_<date>-<hash>.pth``."""
    from mmengine.config import Config
    from mmyolo.registry import MODELS
    from mmyolo.utils import register_all_modules

    register_all_modules()
    cfg = Config.fromfile(str(config_path(model_name)))
    assert cfg.model.bbox_head.head_module.num_classes == 80
    torch.manual_seed(1234)
    state = {k: v.clone() for k, v in MODELS.build(cfg.model).state_dict().items()}
    path = folder / f"{config_path(model_name).stem}_20230101-fake0000.pth"
    torch.save({"state_dict": state, "meta": {}}, path)
    return path, state


@pytest.mark.slow
def test_training_starts_from_the_image_coco_weights(tmp_path):
    """yolov8_n without pretrained_model_params: it starts from the COCO checkpoint of the
    weights folder, loads its backbone and neck, and re-initialises the class layers for 3
    classes with one warning line instead of mmengine's size-mismatch dump."""
    from ray_app.data.sample import make_dataset, write_task

    folder = tmp_path / "weights"
    folder.mkdir()
    fake, state = _fake_coco_checkpoint("yolov8_n", folder)
    data = make_dataset(tmp_path / "data", n_train=8, n_val=4, n_candidates=1, image_size=64, seed=5)
    config = dict(model_name="yolov8_n", img_size=64, max_epochs=1, val_interval=1, samples_per_gpu=4,
                  workers_per_gpu=0, cpu_num_workers=1, max_keep_checkpoints=1)
    run = run_entry(write_task(tmp_path / "train", data, run_training=True, config=config),
                    extra_env={"RAY_APP_WEIGHTS": str(folder)})
    assert run.returncode == 0, run.output[-5000:]
    assert f"starting from {fake} (the image's COCO weights)" in run.output

    fitted = [line for line in run.output.splitlines() if "starting weights:" in line]
    assert len(fitted) == 1, fitted
    # yolov8_n's class branch is max(64, classes) wide: every tensor of it but BN's counters differs
    cls_keys = [k for k in state if k.startswith("bbox_head.head_module.cls_preds.") and state[k].dim()]
    assert f"{len(cls_keys)} tensors of bbox_head.head_module.cls_preds have other shapes" in fitted[0]
    assert "WARNING" in fitted[0]
    assert "size mismatch" not in run.output and "do not match exactly" not in run.output
    assert "missing keys" not in run.output and "unexpected key" not in run.output

    models = run.out / "models"
    stage = yaml.safe_load((models / "result.yaml").read_text())["model_stages"]["epoch_1"]
    (weights_file,) = [models / "epoch_1" / f for f in stage["files"] if f.endswith(".pth")]
    trained = torch.load(weights_file, weights_only=True)["state_dict"]
    # backbone and neck: one epoch at a warm-up learning rate moves them little from the file
    # they were loaded from (a model not loaded from it would differ by ~sqrt(2) of their norm)
    convs = [k for k, v in state.items() if k.startswith(("backbone.", "neck.")) and v.dim() == 4]
    assert len(convs) > 20
    for key in convs:
        drift = float((trained[key] - state[key]).norm() / state[key].norm())
        assert drift < 0.2, (key, drift)
    # the class layers: for 3 classes now
    final = [k for k in cls_keys if re.fullmatch(r"bbox_head\.head_module\.cls_preds\.\d+\.2\.(weight|bias)", k)]
    assert final and all(trained[k].shape[0] == 3 and state[k].shape[0] == 80 for k in final)
