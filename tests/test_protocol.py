"""The protocol writers and readers against the contract (shared/ymir-protocol.md)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from ray_app.protocol.atomic import atomic_write_text
from ray_app.protocol.env import load_env, version_tuple
from ray_app.protocol.errors import ErrorCode, YmirError, classify, describe
from ray_app.protocol.model_files import pick_config, pick_weights, resolve
from ray_app.protocol.monitor import Monitor, TaskState
from ray_app.protocol.writers import (Annotation, Box, ModelStage, TrainingResult, write_infer_result,
                                      write_mining_result, write_training_result)

CONTRACT_ENV = """
task_id: t0000001000002ebb7f11653630774
protocol_version: 1.1.0
run_training: false
run_mining: true
run_infer: true
input:  {root_dir: /in, assets_dir: /in/assets, annotations_dir: /in/annotations, models_dir: /in/models,
         training_index_file: '', val_index_file: '',
         candidate_index_file: /in/candidate-index.tsv, config_file: /in/config.yaml}
output: {root_dir: /out, models_dir: /out/models, tensorboard_dir: /out/tensorboard,
         training_result_file: /out/models/result.yaml, mining_result_file: /out/result.tsv,
         infer_result_file: /out/infer-result.json, monitor_file: /out/monitor.txt,
         executor_log_file: /out/ymir-executor-out.log}
manifest_file: /img-man/manifest.yaml
"""


def test_env_keeps_protocol_version(tmp_path):
    path = tmp_path / "env.yaml"
    path.write_text(CONTRACT_ENV)
    env = load_env(path)
    assert env.protocol_version == "1.1.0" and env.protocol_at_least_1
    assert env.run_mining and env.run_infer and not env.run_training
    assert env.input.candidate_index_file == "/in/candidate-index.tsv"
    assert env.output.executor_log_file == "/out/ymir-executor-out.log"


@pytest.mark.parametrize("version,expected", [("1.1.0", (1, 1, 0)), ("1.0.0", (1, 0, 0)), ("", (0,)),
                                              ("0.9", (0, 9)), ("2.0.0-rc1", (2, 0))])
def test_version_tuple(version, expected):
    assert version_tuple(version) == expected


@pytest.mark.parametrize("text,needle", [("", "mapping"), ("a: [1, 2", "not valid YAML"),
                                         ("run_training: maybe", "run_training")])
def test_env_errors_are_config_errors(tmp_path, text, needle):
    path = tmp_path / "env.yaml"
    path.write_text(text)
    with pytest.raises(YmirError) as error:
        load_env(path)
    assert error.value.code == ErrorCode.CONFIG and needle in error.value.message
    assert "\n" not in error.value.message


def test_monitor_lines(tmp_path):
    monitor = Monitor(tmp_path / "monitor.txt", "task-1", tmp_path)
    monitor.progress(0.25, force=True)
    task_id, timestamp, percent, state = (tmp_path / "monitor.txt").read_text().splitlines()[0].split("\t")
    assert (task_id, float(percent), int(state)) == ("task-1", 0.25, TaskState.RUNNING)
    assert float(timestamp) > 1.6e9
    monitor.done()
    assert (tmp_path / "monitor.txt").read_text().split("\t")[2:4] == ["1.0000", "3\n"]


def test_monitor_error_has_code_message_and_trace(tmp_path):
    monitor = Monitor(tmp_path / "monitor.txt", "t", tmp_path)
    monitor.error(ErrorCode.DATASET, "index\tfile\nmissing", "Traceback (most recent call last):\n  boom")
    lines = (tmp_path / "monitor.txt").read_text().splitlines()
    fields = lines[0].split("\t")
    assert fields[3:] == ["4", "300002", "index file missing"]
    assert lines[1].startswith("Traceback")


def test_monitor_spans_map_mining_and_infer(tmp_path):
    monitor = Monitor(tmp_path / "monitor.txt", "t", tmp_path, min_step=0)
    mining, infer = monitor.span(0, 0.5), monitor.span(0.5, 1)
    mining.progress(0.5)
    assert float((tmp_path / "monitor.txt").read_text().split("\t")[2]) == pytest.approx(0.25)
    infer.progress(0.5)
    assert float((tmp_path / "monitor.txt").read_text().split("\t")[2]) == pytest.approx(0.75)


def test_atomic_write_refuses_outside_root(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(ValueError):
        atomic_write_text(tmp_path / "out" / ".." / "escape.txt", "x", tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists()
    atomic_write_text(tmp_path / "out" / "a" / "b.txt", "ok", tmp_path / "out")
    assert (tmp_path / "out" / "a" / "b.txt").read_text() == "ok"
    assert [p.name for p in (tmp_path / "out" / "a").iterdir()] == ["b.txt"]  # no temp file left


def test_training_result_matches_contract_example(tmp_path):
    models = tmp_path / "models"
    (models / "epoch_20").mkdir(parents=True)
    for name in ("epoch_20.pth", "yolov8_n_config.py"):
        (models / "epoch_20" / name).write_text("x")
    stage = ModelStage(stage_name="epoch_20", files=["epoch_20.pth", "yolov8_n_config.py"], timestamp=1663840020,
                       mAP=0.5509)
    result = TrainingResult(best_stage_name="epoch_20", mAP=0.5509, evaluate_config={"iou_thr": 0.65, "conf_thr": 0.001},
                            model_stages={"epoch_20": stage})
    write_training_result(models / "result.yaml", result, tmp_path)
    parsed = yaml.safe_load((models / "result.yaml").read_text())
    assert parsed == {
        "best_stage_name": "epoch_20", "mAP": 0.5509, "evaluate_config": {"iou_thr": 0.65, "conf_thr": 0.001},
        "model_stages": {"epoch_20": {"stage_name": "epoch_20", "files": ["epoch_20.pth", "yolov8_n_config.py"],
                                      "timestamp": 1663840020, "mAP": 0.5509}}}


@pytest.mark.parametrize("bad", [dict(stage_name="20epoch"), dict(files=["../x.pth"]), dict(mAP=-1.0),
                                 dict(files=[])])
def test_invalid_stages_are_refused(bad):
    with pytest.raises(ValueError):
        ModelStage(**{**dict(stage_name="epoch_1", files=["a.pth"], timestamp=1, mAP=0.1), **bad})


def test_training_result_refuses_missing_files(tmp_path):
    stage = ModelStage(stage_name="epoch_1", files=["epoch_1.pth"], timestamp=1, mAP=0.1)
    result = TrainingResult(best_stage_name="epoch_1", mAP=0.1, model_stages={"epoch_1": stage})
    with pytest.raises(ValueError, match="missing"):
        write_training_result(tmp_path / "models" / "result.yaml", result, tmp_path)


@pytest.mark.parametrize("boxes_keyword", [True, False])
def test_infer_result_keyword_follows_protocol(tmp_path, boxes_keyword):
    detections = {"/in/assets/02/1c5c02.jpg": [Annotation(class_name="dog", score=0.91, box=Box(x=10, y=20, w=30, h=40))],
                  "/in/assets/03/empty.jpg": []}
    write_infer_result(tmp_path / "infer-result.json", detections, tmp_path, boxes_keyword)
    parsed = json.loads((tmp_path / "infer-result.json").read_text())
    key = "boxes" if boxes_keyword else "annotations"
    assert parsed == {"detection": {
        "1c5c02.jpg": {key: [{"class_name": "dog", "score": 0.91, "box": {"x": 10, "y": 20, "w": 30, "h": 40}}]},
        "empty.jpg": {key: []}}}


def test_mining_result_sorted_descending(tmp_path):
    write_mining_result(tmp_path / "result.tsv", [("/a.jpg", 0.1), ("/b.jpg", 0.9), ("/c.jpg", -1.0), ("/d.jpg", 0.5)],
                        tmp_path)
    lines = [line.split("\t") for line in (tmp_path / "result.tsv").read_text().splitlines()]
    assert [p for p, _ in lines] == ["/b.jpg", "/d.jpg", "/a.jpg", "/c.jpg"]
    assert [float(s) for _, s in lines] == [0.9, 0.5, 0.1, -1.0]


def test_model_files_resolve_and_pick(tmp_path):
    models = tmp_path / "models"
    (models / "s").mkdir(parents=True)
    for i, name in enumerate(["epoch_3.pth", "best_coco_bbox_mAP_epoch_2.pth", "other.pth", "cfg.py"]):
        (models / "s" / name).write_text("x")
        os.utime(models / "s" / name, (1000 + i, 1000 + i))
    absolute = str(models / "s" / "other.pth")
    paths = resolve(["s/epoch_3.pth", "s/best_coco_bbox_mAP_epoch_2.pth", absolute, "s/cfg.py"], models)
    assert paths[2] == Path(absolute)
    assert pick_weights(paths).name == "best_coco_bbox_mAP_epoch_2.pth"
    assert pick_weights([paths[0], paths[2]]).name == "epoch_3.pth"
    assert pick_weights([paths[2]]).name == "other.pth"
    assert pick_weights([models / "s" / "gone.pth"]) is None
    assert pick_config(paths).name == "cfg.py"


def test_classify_unexpected_errors():
    assert classify(RuntimeError("CUDA out of memory. Tried to allocate")) == ErrorCode.OUT_OF_MEMORY
    assert classify(RuntimeError("No CUDA GPUs are available")) == ErrorCode.NO_GPU
    assert classify(ValueError("something else")) == ErrorCode.CONFIG


def test_out_of_memory_says_what_to_try():
    """A CUDA OOM (as Ray Train re-raises it: wrapped, multi-line) is 300103 in one line that
    suggests a smaller samples_per_gpu."""
    wrapped = RuntimeError("Training failed.\nTraceback ...\ntorch.OutOfMemoryError: CUDA out of memory. "
                           "Tried to allocate 2.00 GiB" + " x" * 400)
    code, message = describe(wrapped)
    assert code == ErrorCode.OUT_OF_MEMORY and "\n" not in message
    assert message.endswith("(try a smaller samples_per_gpu (or img_size))") and len(message) < 600
    assert describe(ValueError("odd")) == (ErrorCode.CONFIG, "ValueError: odd")


def test_ymir_error_survives_ray():
    """Ray pickles an error raised in an actor or task; one raised while an actor starts
    reaches the driver only as traceback text. Both ways the code and message come back."""
    import pickle

    error = YmirError(ErrorCode.MODEL, "weights w.pth do not fit the config")
    again = pickle.loads(pickle.dumps(error))
    assert (again.code, again.message) == (ErrorCode.MODEL, "weights w.pth do not fit the config")
    wrapped = RuntimeError("The actor died because of an error raised in its creation task\nTraceback ...\n"
                           f"ray_app.protocol.errors.YmirError: {error}\n")
    assert describe(wrapped) == (ErrorCode.MODEL, "weights w.pth do not fit the config")
