"""Every model family trains through the entry on CPU, offline, and its best stage then
serves mining + infer: the smallest model of each family (``model_config.zoo.FAMILIES``),
one epoch at the family's smallest input size, on a small generated dataset."""

from __future__ import annotations

import json

import pytest
import yaml

from conftest import Run, best_stage_files, run_entry
from ray_app.data.sample import SampleData, make_dataset, write_task
from ray_app.model_config.zoo import FAMILIES

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> SampleData:
    """16 train, 8 val and 6 candidate images of 96 px."""
    return make_dataset(tmp_path_factory.mktemp("families"), n_train=16, n_val=8, n_candidates=6, image_size=96,
                        seed=11)


@pytest.mark.parametrize("family", list(FAMILIES.values()), ids=list(FAMILIES))
def test_family_trains_then_mines_and_infers(tmp_path, small, family, monkeypatch):
    weights = tmp_path / "weights"  # an image without baked weights: nothing to start from
    weights.mkdir()
    monkeypatch.setenv("RAY_APP_WEIGHTS", str(weights))
    size = family.min_img_size
    config = dict(model_name=family.smallest, img_size=size, max_epochs=1, val_interval=1, samples_per_gpu=4,
                  workers_per_gpu=0, cpu_num_workers=1, max_keep_checkpoints=1)
    trained = run_entry(write_task(tmp_path / "train", small, run_training=True, config=config))
    assert trained.returncode == 0, trained.output[-5000:]
    assert trained.monitor()[3] == "3"
    assert "[FailurePolicy]" not in trained.output  # no restart
    assert "by http backend" not in trained.output and "Downloading" not in trained.output  # never the network
    warned = [line for line in trained.output.splitlines() if "never downloads weights at run time" in line]
    assert len(warned) <= 1, warned  # rtmdet's ImageNet backbone: one line when it is not in the weights folder
    result = yaml.safe_load((trained.out / "models" / "result.yaml").read_text())
    assert result["model_stages"] == {"epoch_1": result["model_stages"]["epoch_1"]}

    models, files = best_stage_files(trained)
    mined = run_entry(write_task(tmp_path / "mine", small, run_mining=True, run_infer=True, models_dir=models,
                                 config=dict(model_params_path=files, img_size=size, samples_per_gpu=2,
                                             cpu_num_workers=1, mining_algorithm="aldd")))
    assert mined.returncode == 0, mined.output[-5000:]
    ranked = [line.split("\t") for line in (mined.out / "result.tsv").read_text().splitlines()]
    assert len(ranked) == 6 and all(float(score) >= 0 for _, score in ranked)
    detections = json.loads((mined.out / "infer-result.json").read_text())["detection"]
    assert len(detections) == 6


def test_rtmdet_backbone_comes_from_the_weights_folder(tmp_path, small, monkeypatch):
    """With the ImageNet backbone file in the weights folder (named as the config's URL, keyed
    ``backbone.*`` as the released classifier checkpoints are), rtmdet's backbone is loaded
    from it by mmengine, with no warning."""
    import torch
    from mmengine.config import Config
    from mmyolo.registry import MODELS
    from mmyolo.utils import register_all_modules

    from ray_app.model_config.zoo import config_path

    register_all_modules()
    cfg = Config.fromfile(str(config_path("rtmdet_tiny")))
    url = cfg.model.backbone.init_cfg.checkpoint
    cfg.model.backbone.init_cfg = None
    tensors = MODELS.build(cfg.model.backbone).state_dict()
    weights = tmp_path / "weights"
    weights.mkdir()
    backbone = weights / url.rsplit("/", 1)[-1]
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in tensors.items()}}, backbone)
    monkeypatch.setenv("RAY_APP_WEIGHTS", str(weights))
    config = dict(model_name="rtmdet_tiny", img_size=FAMILIES["rtmdet"].min_img_size, max_epochs=1, val_interval=1,
                  samples_per_gpu=4, workers_per_gpu=0, cpu_num_workers=1)
    run: Run = run_entry(write_task(tmp_path / "train", small, run_training=True, config=config))
    assert run.returncode == 0, run.output[-5000:]
    assert f"starts from {backbone}" in run.output
    assert f"Loads checkpoint by local backend from path: {backbone}" in run.output  # mmengine read it
    assert "never downloads weights at run time" not in run.output
