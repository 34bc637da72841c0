"""The model zoo rule and the mmengine config built from hyperparameters."""

from __future__ import annotations

from pathlib import Path

import pytest

from ray_app.protocol.errors import ErrorCode, YmirError
from ray_app.protocol.hyperparams import TrainingParams, load_template
from ray_app.train.config import _walk, build_config, evaluate_config, parse_cfg_options, set_warmup
from ray_app.train.zoo import config_path, model_zoo

REQUIRED = ([f"yolov5_{s}" for s in "nsmlx"] + [f"yolov6_{s}" for s in "ntsml"] + ["yolov7_tiny", "yolov7_l", "yolov7_x"]
            + [f"yolov8_{s}" for s in "nsmlx"] + [f"yolox_{s}" for s in ("tiny", "s", "m", "l", "x")]
            + [f"rtmdet_{s}" for s in ("tiny", "s", "m", "l", "x")] + [f"ppyoloe_plus_{s}" for s in "smlx"])


def test_zoo_has_every_required_model():
    zoo = model_zoo()
    assert set(REQUIRED) <= set(zoo)
    assert zoo["yolov5_n"].name == "yolov5_n-v61_syncbn_fast_8xb16-300e_coco.py"
    assert zoo["yolox_s"].name == "yolox_s_fast_8xb8-300e_coco.py"  # not the rtmdet-hyp variant
    assert not any("mask" in name or "ins" in name for name in zoo)


def test_unknown_model_lists_valid_names():
    with pytest.raises(YmirError) as error:
        config_path("yolov9_q")
    assert error.value.code == ErrorCode.CONFIG and "yolov8_n" in error.value.message


def params(**override) -> TrainingParams:
    values = load_template("training")
    values.update(class_names=["a", "b", "c"], img_size=320, max_epochs=30, samples_per_gpu=4, workers_per_gpu=0)
    values.update(override)
    return TrainingParams.model_validate(values)


@pytest.mark.parametrize("model_name", ["yolov5_n", "yolov6_n", "yolov7_tiny", "yolov8_n", "yolox_tiny", "rtmdet_tiny",
                                        "ppyoloe_plus_s"])
def test_config_for_every_family(tmp_path, model_name):
    cfg = build_config(params(model_name=model_name), Path("/x/train.json"), Path("/x/val.json"), tmp_path)
    nodes = list(_walk(cfg._cfg_dict))
    assert {n["num_classes"] for n in nodes if "num_classes" in n} == {3}
    for loader, ann in (("train_dataloader", "/x/train.json"), ("val_dataloader", "/x/val.json")):
        datasets = [d for d in _walk(cfg[loader].dataset) if "ann_file" in d]
        assert datasets and all(d["ann_file"] == ann and d["metainfo"]["classes"] == ("a", "b", "c") for d in datasets)
    assert cfg.val_evaluator.ann_file == "/x/val.json"
    sizes = {n[k] for n in nodes for k in ("img_scale", "scale", "img_size") if k in n}
    assert sizes <= {320, (320, 320), (640, 640)}, sizes  # 640 = 2 x 320 (rtmdet's large-scale jitter)
    assert 320 in sizes or (320, 320) in sizes
    assert cfg.train_cfg.max_epochs == 30 and "dynamic_intervals" not in cfg.train_cfg
    assert cfg.train_dataloader.batch_size == 4
    for hook in [*cfg.default_hooks.values(), *cfg.get("custom_hooks", [])]:
        if "max_epochs" in hook:
            assert hook["max_epochs"] == 30
        if "switch_epoch" in hook:
            assert 0 < hook["switch_epoch"] <= 30
    schedulers = cfg.get("param_scheduler") or []
    for s in schedulers if isinstance(schedulers, list) else [schedulers]:
        if s.get("by_epoch", True) and "end" in s:
            assert s["end"] <= 30
    assert set(evaluate_config(cfg)) == {"iou_thr", "conf_thr"}


def test_learning_rate_and_cfg_options_applied_last(tmp_path):
    p = params(model_name="yolov8_n", learning_rate=0.05,
               cfg_options="optim_wrapper.optimizer.lr=0.003 model.backbone.frozen_stages=2 train_cfg.val_begin=2")
    cfg = build_config(p, Path("t.json"), Path("v.json"), tmp_path)
    assert cfg.optim_wrapper.optimizer.lr == 0.003
    assert cfg.model.backbone.frozen_stages == 2 and cfg.train_cfg.val_begin == 2
    assert build_config(params(learning_rate=0.05), Path("t"), Path("v"), tmp_path).optim_wrapper.optimizer.lr == 0.05


def test_cfg_options_parse_literals_without_code():
    options = parse_cfg_options("a.b=1 c=[1,2] d=__import__('os').getcwd()")
    assert options["a.b"] == 1 and options["c"] == [1, 2]
    assert isinstance(options["d"], str)  # kept as text, never evaluated
    with pytest.raises(YmirError) as error:
        parse_cfg_options("a.b")
    assert error.value.code == ErrorCode.CONFIG


def test_warmup_capped_for_small_runs(tmp_path):
    cfg = build_config(params(model_name="yolov5_n", max_epochs=10), Path("t"), Path("v"), tmp_path)
    set_warmup(cfg, 50)
    hook = cfg.default_hooks.param_scheduler
    assert hook.warmup_mim_iter == 5 and hook.warmup_epochs == 1
