"""The export of the best stage (``deploy_formats``): every family's graph computes what
mmyolo's own decoding keeps before NMS, ONNX Runtime agrees with torch, the trained stage's
file gives the executor's own detections, and a failed export loses nothing."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from conftest import CLASS_NAMES, REPO, best_stage_files

from ray_app.export.formats import FORMATS
from ray_app.export.task import ExportPlan, export_best_stage, export_stage, plan_exports
from ray_app.model_config.zoo import FAMILIES
from ray_app.protocol.env import EnvConfig
from ray_app.protocol.errors import ErrorCode, YmirError
from ray_app.protocol.hyperparams import TrainingParams, load_template

sys.path.insert(0, str(REPO / "bench"))
import common  # noqa: E402

SIZE = 96  # every family's smallest model builds at this size (yolov6's minimum)


def untrained_detector(model_name: str):
    return common.untrained_detector(model_name, SIZE)


def pixels(batch: int, seed: int) -> torch.Tensor:
    return common.noise_pixels(batch, SIZE, seed)


@pytest.mark.parametrize("model_name", [f.smallest for f in FAMILIES.values()])
def test_every_family_decodes_as_mmyolo_and_exports_to_onnx(model_name):
    """The graph's outputs are every (prior, class) pair mmyolo's ``predict_by_feat`` keeps
    with no threshold and no NMS, box for box; its ONNX file runs in ONNX Runtime, at another
    batch size than it was traced at, with the outputs of torch."""
    from mmdet.structures import DetDataSample
    from mmengine.config import ConfigDict

    from ray_app.export.decode import DecodedDetector

    model, bundle = untrained_detector(model_name)
    detector = DecodedDetector(model)
    images = pixels(2, seed=1)
    meta = dict(ori_shape=(SIZE, SIZE), img_shape=(SIZE, SIZE), scale_factor=(1.0, 1.0))
    with torch.no_grad():
        boxes, scores = detector(images.float())
        data = model.data_preprocessor({"inputs": list(images), "data_samples": [DetDataSample(metainfo=meta)] * 2},
                                       False)
        outs = model.bbox_head(model.extract_feat(data["inputs"]))
        results = model.bbox_head.predict_by_feat(
            *outs, batch_img_metas=[meta] * 2, rescale=False, with_nms=False,
            cfg=ConfigDict(multi_label=True, score_thr=-1.0, nms_pre=10 ** 9, max_per_img=10 ** 9))
    classes = scores.shape[-1]
    for k, result in enumerate(results):
        ours = boxes[k].clamp(0, SIZE)  # predict_by_feat clamps to the image
        for c in range(classes):
            theirs = result.labels == c
            expected = torch.cat([result.scores[theirs, None], result.bboxes[theirs]], dim=1).numpy()
            got = torch.cat([scores[k, :, c, None], ours], dim=1).numpy()
            order = lambda rows: rows[np.lexsort(rows.T[::-1])]  # noqa: E731  by score, then box
            assert got.shape == expected.shape
            np.testing.assert_allclose(order(got), order(expected), rtol=1e-5, atol=1e-4)
    assert 0.001 < float(boxes[..., 2:].max()) and float(boxes.abs().max()) < 100 * SIZE  # trained-like magnitudes

    data, box_error, score_error = export_stage(FORMATS["onnx"], detector, bundle, "epoch_1", opset=11)
    assert box_error < 0.01 and score_error < 1e-4, (box_error, score_error)
    import onnx

    exported = onnx.load_from_string(data)
    assert [i.name for i in exported.graph.input] == ["images"]
    assert [o.name for o in exported.graph.output] == ["boxes", "scores"]
    props = {p.key: p.value for p in exported.metadata_props}
    assert json.loads(props["class_names"]) == ["c0", "c1", "c2"]
    assert props["stage"] == "epoch_1" and "test_pipeline" in props and "test_cfg" in props
    got_boxes, got_scores = FORMATS["onnx"].run(data, pixels(3, seed=2).numpy().astype(np.float32))
    assert got_boxes.shape == (3, boxes.shape[1], 4) and got_scores.shape == (3, boxes.shape[1], classes)


def test_a_head_that_decodes_otherwise_is_refused():
    """A head that does not use YOLOv5Head's decoding would be exported wrongly: 300004."""
    from ray_app.export.decode import DecodedDetector

    class Other(torch.nn.Module):
        bbox_head = torch.nn.Identity()

    with pytest.raises(YmirError) as error:
        DecodedDetector(Other())
    assert error.value.code == ErrorCode.MODEL and "Identity" in error.value.message


def params(**values) -> TrainingParams:
    return TrainingParams.model_validate({**load_template("training"), "class_names": ["a"], **values})


def test_the_template_exports_onnx_at_opset_11():
    plan = plan_exports(params())
    assert [f.name for f in plan.formats] == ["onnx"] and plan.opset == 11


@pytest.mark.parametrize("formats, names", [("", []), (None, []), ("ONNX, onnx", ["onnx"]), (["onnx"], ["onnx"])])
def test_deploy_formats_are_read_as_a_comma_list(formats, names):
    assert [f.name for f in plan_exports(params(deploy_formats=formats)).formats] == names


@pytest.mark.parametrize("values, says", [
    (dict(deploy_formats="onnx, tensorrt"), "tensorrt is not a format this image exports to; known: onnx"),
    (dict(opset=21), "opset 21: the onnx export takes opsets 11 to 20"),
    (dict(opset=9), "opset 9: the onnx export takes opsets 11 to 20"),
])
def test_a_format_or_opset_no_exporter_takes_is_a_config_error(values, says):
    with pytest.raises(YmirError) as error:
        plan_exports(params(**values))
    assert error.value.code == ErrorCode.CONFIG and says in error.value.message


def test_an_image_without_the_format_s_packages_trains_without_it(monkeypatch, caplog):
    """A custom image built without onnxruntime: the plan leaves ONNX out with one warning."""
    monkeypatch.setitem(FORMATS, "onnx", dataclasses.replace(FORMATS["onnx"], modules=("onnx", "no_such_runtime")))
    with caplog.at_level(logging.WARNING, logger="ray_app.export.task"):
        plan = plan_exports(params())
    assert plan.formats == ()
    assert "this image has no no_such_runtime, so the stages will have no .onnx file" in caplog.text


def test_the_trained_stage_s_onnx_file_finds_what_the_executor_finds(trained, sample, tmp_path):
    """Training (the session's run, through the entry) lists ``<best>.onnx`` in its best stage.
    Served as docs/export.md says (the test pipeline, ONNX Runtime, then
    ``ray_app.export.postprocess``), it gives the boxes, scores and labels of the executor's own
    inference on the candidate images."""
    from types import SimpleNamespace

    import onnx

    from ray_app.export.postprocess import detections
    from ray_app.infer.actors import Preprocess
    from ray_app.infer.images import read_batch
    from ray_app.infer.model import Detector, inference_pipeline, load_stage

    models, files = best_stage_files(trained)
    best = files[0].split("/")[0]
    assert files[-1] == f"{best}/{best}.onnx", files
    data = (models / files[-1]).read_bytes()
    props = {p.key: p.value for p in onnx.load_from_string(data).metadata_props}
    assert json.loads(props["class_names"]) == CLASS_NAMES
    assert f"exported stage {best} to {best}.onnx" in trained.output

    task = SimpleNamespace(model_params_path=[f for f in files if not f.endswith(".onnx")], class_names=CLASS_NAMES,
                           img_size=0, cfg_options="", conf_threshold=0.05, iou_threshold=0.5)
    bundle = load_stage(task, str(models))
    paths = [line for line in sample.candidate_index.read_text().splitlines() if line]
    for k, (width, height) in enumerate([(200, 120), (90, 160), (301, 77)]):  # letterboxed: scaled and padded
        with Image.open(paths[k]) as image:
            image.resize((width, height)).save(tmp_path / f"wide-{k}.png")
        paths.append(str(tmp_path / f"wide-{k}.png"))
    batch = read_batch({"path": np.array(paths, dtype=object)})
    packed = Preprocess(inference_pipeline(bundle.cfg), bundle.input_size).samples(batch["data"], list(batch["error"]))
    expected = Detector(bundle, "cpu").forward(packed).detections
    boxes, scores = FORMATS["onnx"].run(data, np.stack([p["inputs"].numpy() for p in packed]).astype(np.float32))
    test_cfg = bundle.cfg.model.test_cfg
    found = 0
    for k, sample_k in enumerate(packed):
        meta = sample_k["data_samples"].metainfo
        got = detections(boxes[k], scores[k], test_cfg.score_thr, test_cfg.nms.iou_threshold,
                         multi_label=test_cfg.multi_label, nms_pre=test_cfg.nms_pre,
                         max_per_img=test_cfg.max_per_img, scale_factor=meta["scale_factor"],
                         pad_param=meta.get("pad_param"), ori_shape=meta["ori_shape"])
        want_boxes, want_scores, want_labels = expected[k]
        order = np.argsort(-want_scores, kind="stable")
        assert len(got[0]) == len(want_boxes), f"image {k}: {len(got[0])} boxes, the executor {len(want_boxes)}"
        np.testing.assert_allclose(got[1], want_scores[order], atol=1e-4)
        np.testing.assert_array_equal(got[2], want_labels[order])
        np.testing.assert_allclose(got[0], want_boxes[order], atol=0.05)
        found += len(want_boxes)
    assert found >= len(packed), f"only {found} boxes on {len(packed)} images: the comparison says little"


def test_a_failed_export_keeps_the_stage_and_result_yaml(trained, tmp_path, caplog):
    """The export's file cannot be written (a folder stands where it goes): one warning line,
    the stage and result.yaml exactly as training left them, and the next format still tried."""
    out = tmp_path / "out"
    shutil.copytree(trained.out / "models", out / "models")
    result_file = out / "models" / "result.yaml"
    result = yaml.safe_load(result_file.read_text())
    best = result["best_stage_name"]
    files = result["model_stages"][best]["files"]
    (out / "models" / best / f"{best}.onnx").unlink()
    files.remove(f"{best}.onnx")
    result_file.write_text(yaml.safe_dump(result, sort_keys=False))
    (out / "models" / best / f"{best}.onnx" / "in-the-way").mkdir(parents=True)
    before = result_file.read_bytes()
    env = EnvConfig.model_validate({"output": {"root_dir": str(out), "models_dir": str(out / "models"),
                                               "training_result_file": str(result_file)}})
    plan = ExportPlan((FORMATS["onnx"],), opset=11)
    with caplog.at_level(logging.WARNING, logger="ray_app.export.task"):
        assert export_best_stage(env, plan, CLASS_NAMES) == []
    assert f"onnx export of the best stage {best} failed, the stage is kept without it" in caplog.text
    assert result_file.read_bytes() == before
    assert sorted(p.name for p in (out / "models" / best).iterdir()) == sorted([*files, f"{best}.onnx"])
    assert not list((out / "models" / best).glob(".*.tmp")), "a partial file was left"

    shutil.rmtree(out / "models" / best / f"{best}.onnx")  # the obstacle gone: the same call exports
    assert export_best_stage(env, plan, CLASS_NAMES) == [f"{best}.onnx"]
    assert yaml.safe_load(result_file.read_text())["model_stages"][best]["files"] == [*files, f"{best}.onnx"]
    assert Path(out / "models" / best / f"{best}.onnx").stat().st_size > 1_000_000


def test_an_export_that_computes_otherwise_is_refused():
    """A file whose scores are 0.01 off torch's (well beyond what rounding does to this
    model, which the float64 comparison measures) is refused: 300004, nothing returned."""
    from ray_app.export.decode import DecodedDetector

    model, bundle = untrained_detector("yolov8_n")
    onnx = FORMATS["onnx"]
    off = dataclasses.replace(onnx, run=lambda data, images: (lambda b, s: (b, s + 0.01))(*onnx.run(data, images)))
    with pytest.raises(YmirError) as error:
        export_stage(off, DecodedDetector(model), bundle, "epoch_1", opset=11)
    assert error.value.code == ErrorCode.MODEL
    assert "the onnx file computes other boxes or scores than torch: " in error.value.message
    assert error.value.message.endswith("and 0.01 apart")
