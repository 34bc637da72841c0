"""Inference and mining through the real entry, with a model trained by the tests."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import best_stage_files, run_entry, tree_state
from ray_app.data.sample import SampleData

pytestmark = pytest.mark.slow


def candidates(sample: SampleData) -> list[str]:
    return [line for line in sample.candidate_index.read_text().splitlines() if line]


def read_tsv(out: Path) -> list[tuple[str, float]]:
    return [(p, float(s)) for p, s in (line.split("\t") for line in (out / "result.tsv").read_text().splitlines())]


def check_infer_result(out: Path, images: list[str], key: str = "boxes") -> dict:
    result = json.loads((out / "infer-result.json").read_text())["detection"]
    assert set(result) == {os.path.basename(p) for p in images}  # every candidate, by basename
    for name, entry in result.items():
        assert list(entry) == [key]
        for box in entry[key]:
            assert box["class_name"] in ("square", "disc", "triangle") and 0 <= box["score"] <= 1
            b = box["box"]
            assert all(isinstance(b[k], int) for k in "xywh") and b["w"] > 0 and b["h"] > 0
            assert b["x"] >= 0 and b["y"] >= 0 and b["x"] + b["w"] <= 128 and b["y"] + b["h"] <= 128
    return result


def test_infer_alone(infer_task, sample):
    run = run_entry(infer_task(run_mining=False, run_infer=True))
    assert run.returncode == 0, run.output[-3000:]
    assert run.monitor()[2:4] == ["1.0000", "3"]
    result = check_infer_result(run.out, candidates(sample))
    assert sum(len(e["boxes"]) for e in result.values()) > 0, "the trained model found nothing"
    assert not (run.out / "result.tsv").exists()
    assert "[##############################] 12/12 images" in run.output  # the progress bar
    assert re.search(r"local Ray up in [\d.]+ s", run.output), run.output[-3000:]


def test_infer_old_protocol_uses_annotations(infer_task, sample):
    env_file = infer_task(run_mining=False, run_infer=True)
    env = yaml.safe_load(env_file.read_text())
    env.pop("protocol_version")
    env_file.write_text(yaml.safe_dump(env))
    run = run_entry(env_file)
    assert run.returncode == 0, run.output[-3000:]
    check_infer_result(run.out, candidates(sample), key="annotations")


@pytest.mark.parametrize("algorithm", ["random", "entropy", "aldd", "cald"])
def test_mining_alone(infer_task, sample, algorithm):
    run = run_entry(infer_task(run_mining=True, run_infer=False, mining_algorithm=algorithm))
    assert run.returncode == 0, run.output[-3000:]
    ranked = read_tsv(run.out)
    assert sorted(p for p, _ in ranked) == sorted(candidates(sample))
    scores = [s for _, s in ranked]
    assert scores == sorted(scores, reverse=True)
    assert all(s >= 0 for s in scores) and len(set(scores)) > 1, scores
    assert not (run.out / "infer-result.json").exists()


def test_mining_and_infer_in_one_pass(infer_task, sample, trained):
    env_file = infer_task(run_mining=True, run_infer=True, mining_algorithm="entropy")
    models = best_stage_files(trained)[0]  # the task's /in/models: another task's output, read-only here
    before = tree_state(env_file.parent, sample.root, models)
    run = run_entry(env_file)
    assert run.returncode == 0, run.output[-3000:]
    assert tree_state(env_file.parent, sample.root, models) == before, "wrote under /in or into the dataset"
    ranked = dict(read_tsv(run.out))
    result = check_infer_result(run.out, candidates(sample))
    assert run.output.count("mining + infer of 12 images") == 1  # one pass, not two
    # the same detections feed both outputs: each image's score is the entropy of its boxes
    from ray_app.mining.entropy import score as entropy

    names = list(sample.class_names)
    assert any(entry["boxes"] for entry in result.values())  # the check below compares something
    for path, score in ranked.items():
        boxes = result[os.path.basename(path)]["boxes"]
        expected = entropy(np.array([b["score"] for b in boxes]), np.array([names.index(b["class_name"]) for b in boxes]),
                           0.0, None)
        assert score == pytest.approx(expected, abs=1e-4), (path, score, boxes)


def test_bad_images_cost_only_themselves(infer_task, sample, tmp_path):
    data = SampleData(tmp_path / "data", sample.train_index, sample.val_index, tmp_path / "candidates.tsv",
                      sample.class_names)
    (tmp_path / "data").mkdir()
    good = candidates(sample)[:4]
    truncated = tmp_path / "data" / "truncated.jpg"
    truncated.write_bytes(Path(good[0]).read_bytes()[:300])
    not_image = tmp_path / "data" / "notes.jpg"
    not_image.write_text("this is not an image")
    missing = tmp_path / "data" / "missing.jpg"
    bad = [str(truncated), str(not_image), str(missing)]
    data.candidate_index.write_text("\n".join(good[:2] + bad + good[2:]) + "\n")
    run = run_entry(infer_task(run_mining=True, run_infer=True, data=data))
    assert run.returncode == 0, run.output[-3000:]
    ranked = read_tsv(run.out)
    assert [p for p, _ in ranked[-3:]] and set(p for p, _ in ranked[-3:]) == set(bad)  # ranked last
    assert all(s < min(s2 for p2, s2 in ranked if p2 in good) for p, s in ranked if p in bad)
    result = check_infer_result(run.out, good + bad)
    assert all(result[os.path.basename(p)]["boxes"] == [] for p in bad)
    assert "candidate set: 3 images that cannot be read or decoded" in run.output and "missing.jpg" in run.output
    assert run.monitor()[3] == "3"


def test_no_readable_candidate_is_300002(infer_task, sample, tmp_path):
    """Every candidate unreadable (a mount that is not there) is a dataset error, as a
    training set with no readable image is, not a 'done' with every score -1 and no box."""
    data = SampleData(tmp_path / "data", sample.train_index, sample.val_index, tmp_path / "candidates.tsv",
                      sample.class_names)
    data.candidate_index.write_text("".join(f"{tmp_path}/gone/{i}.jpg\n" for i in range(3)))
    run = run_entry(infer_task(run_mining=True, run_infer=True, data=data))
    assert run.returncode == 1, run.output[-3000:]
    assert run.monitor()[3:5] == ["4", "300002"], run.monitor()
    assert run.monitor()[5].startswith("the candidate set has no readable image (3 listed), e.g. ")
    assert not (run.out / "result.tsv").exists() and not (run.out / "infer-result.json").exists()


def test_killed_model_actor_loses_no_image(tmp_path, trained):
    """SIGKILL the model actor while a batch is in flight (it pauses after its first batch,
    see ``ray_app.pause``): Ray Data restarts it and retries the batch; every candidate gets
    its result and none is reported unreadable."""
    import signal

    from conftest import Holds, start_entry
    from ray_app.data.sample import make_dataset, write_task

    data = make_dataset(tmp_path / "data", n_train=0, n_val=0, n_candidates=60, image_size=128, seed=7)
    models, files = best_stage_files(trained)
    env_file = write_task(tmp_path / "task", data, run_mining=True, run_infer=True, models_dir=models,
                          config=dict(model_params_path=files, img_size=128, samples_per_gpu=2, cpu_num_workers=1,
                                      mining_algorithm="aldd"))
    holds = Holds(tmp_path / "holds")
    holds.hold("model_batch_done")
    log = tmp_path / "log.txt"
    try:
        proc = start_entry(env_file, log, holds.env)
        (paused,) = holds.wait("model_batch_done", proc, log=log)
        os.kill(paused["pid"], signal.SIGKILL)
        holds.release()
        assert proc.wait(timeout=600) == 0, log.read_text()[-5000:]
    finally:
        holds.release()
    out = tmp_path / "task" / "out"
    ranked = read_tsv(out)
    assert len(ranked) == 60 and all(score >= 0 for _, score in ranked)
    check_infer_result(out, [line for line in data.candidate_index.read_text().split()])
    text = log.read_text()
    assert "worker died or was killed" in text and "60/60 images" in text  # killed, and finished


def test_gpu_and_cpu_layouts_give_the_same_results(sample, trained, capsys):
    """The GPU layout (a preprocessing stage, then the model actor) and the CPU layout (the
    model actor decodes its own images) give the same boxes and scores; and the CPU actor,
    called from two threads at once as Ray Data calls it, gives what it gives serially."""
    import dataclasses
    from concurrent.futures import ThreadPoolExecutor
    from types import SimpleNamespace

    import numpy as np
    import ray

    from ray_app.infer.actors import DetectorActor, DetectorSpec, PreprocessActor
    from ray_app.infer.images import read_batch
    from ray_app.infer.model import inference_pipeline, load_stage

    models, files = best_stage_files(trained)
    params = SimpleNamespace(model_params_path=files, class_names=sample.class_names, img_size=128, cfg_options="",
                             conf_threshold=0.05, iou_threshold=0.65)
    bundle = load_stage(params, str(models))
    steps = inference_pipeline(bundle.cfg)
    paths = candidates(sample) + [str(sample.root / "missing.jpg")]
    batches = [read_batch({"path": np.array(paths[i:i + 4], dtype=object)}) for i in range(0, len(paths), 4)]
    ray.init(num_cpus=1, include_dashboard=False, address="local")
    try:
        spec = DetectorSpec(bundle=bundle, task_id="t1", algorithm="entropy", conf_threshold=0.05)
        gpu_layout = DetectorActor(spec)  # fed by the Preprocess stage
        preprocess = PreprocessActor(steps, 128)  # the GPU layout's stage, as Ray Data builds it
        ready = re.search(r"preprocessing actor ready on node \w+: process [\d.]+ s, imports [\d.]+ s, pipeline [\d.]+ s",
                          capsys.readouterr().out)
        assert ready, "the preprocessing actor says where its start went"
        separate = [gpu_layout(preprocess(batch)) for batch in batches]
        cpu_layout = DetectorActor(dataclasses.replace(spec, preprocess_steps=tuple(steps)))
        serial = [cpu_layout(batch) for batch in batches]
        reading = [cpu_layout({"path": batch["path"]}) for batch in batches]  # one node: no read stage
        with ThreadPoolExecutor(2) as pool:
            threaded = list(pool.map(cpu_layout, batches * 3))
    finally:
        ray.shutdown()

    def rows(results):
        out = {}
        for r in results:
            for path, dets, score, error in zip(r["path"], r["detections"], r["score"], r["error"]):
                out[str(path)] = (np.array(json.loads(dets)).reshape(-1, 6), float(score), bool(error))
        return out

    reference = rows(separate)
    assert len(reference) == len(paths) and reference[paths[-1]][2] and reference[paths[-1]][1] == -1
    assert sum(len(d) for d, _, _ in reference.values()) > 0, "the trained model finds boxes"
    for other in (rows(serial), rows(threaded), rows(reading)):
        assert set(other) == set(reference)
        for path, (dets, score, error) in reference.items():
            assert other[path][2] == error
            assert other[path][0].shape == dets.shape, path
            np.testing.assert_allclose(other[path][0], dets, atol=1e-3)
            assert abs(other[path][1] - score) < 1e-6


def test_actors_skip_training_only_imports():
    """Inside a Ray actor, mmdet and mmengine find neither scikit-learn, albumentations, torch's
    ZeroRedundancyOptimizer nor mmengine's FSDP strategy (optional imports for tracking, the Albu
    augmentation and distributed training), mmengine's FSDP wrapper is a placeholder, so torch's
    FSDP modules are never loaded (2.55 -> 0.94 s of imports, bench/actor_imports.py), and the inference
    pipeline and the model's modules still import; a process that is no actor keeps them all."""
    import importlib

    import ray

    from ray_app.infer.actors import TRAINING_ONLY_IMPORTS, TRAINING_ONLY_STUBS, skip_training_only_imports

    def importable() -> dict[str, bool]:
        found = {}
        for name in TRAINING_ONLY_IMPORTS:
            try:
                importlib.import_module(name)
                found[name] = True
            except ImportError:
                found[name] = False
        return found

    @ray.remote(num_cpus=0)
    class Probe:
        def __init__(self) -> None:
            skip_training_only_imports()

        def check(self) -> tuple[dict[str, bool], bool, bool, str]:
            from mmdet.datasets.transforms import transforms

            from ray_app.infer.model import import_model_modules

            import_model_modules()
            from mmengine.model import MMFullyShardedDataParallel
            try:
                MMFullyShardedDataParallel(module=None)
                refused = ""
            except RuntimeError as e:
                refused = str(e)
            return importable(), transforms.albumentations is None, "torch.distributed.fsdp" in sys.modules, refused

    ray.init(num_cpus=1, include_dashboard=False, address="local")
    try:
        found, albu_off, fsdp_loaded, refused = ray.get(Probe.remote().check.remote())
        skip_training_only_imports()  # the driver is no actor: nothing changes
        here = importable()
    finally:
        ray.shutdown()
    assert found == dict.fromkeys(TRAINING_ONLY_IMPORTS, False) and albu_off
    assert not fsdp_loaded
    assert "is for training" in refused and list(TRAINING_ONLY_STUBS)[0] in refused
    assert here == dict.fromkeys(TRAINING_ONLY_IMPORTS, True)
    assert "torch.distributed.fsdp" in sys.modules  # the real modules, here


def test_model_size_by_default_and_cfg_options(tmp_path, sample, trained):
    """``img_size: 0`` (the templates' default) serves the stage at the size it was trained at
    (128 here, not the 640 of the zoo config), and ``cfg_options`` edit the stage's test config
    (at most one box per image)."""
    from ray_app.data.sample import write_task

    models, files = best_stage_files(trained)
    env_file = write_task(tmp_path / "task", sample, run_mining=True, run_infer=True, models_dir=models,
                          config=dict(model_params_path=files, cpu_num_workers=1, samples_per_gpu=4,
                                      cfg_options="model.test_cfg.max_per_img=1"))
    run = run_entry(env_file)
    assert run.returncode == 0, run.output[-3000:]
    assert "input 128 px (the size it was trained at: img_size 0)" in run.output
    assert "cfg_options applied: {'model.test_cfg.max_per_img': 1}" in run.output
    result = json.loads((run.out / "infer-result.json").read_text())["detection"]
    boxes = [len(entry["boxes"]) for entry in result.values()]
    assert len(boxes) == 12 and max(boxes) == 1, boxes


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine's torch can use a GPU")
def test_a_gpu_torch_cannot_use_is_300102_in_the_model_actor(sample, trained):
    """A model actor that Ray gives a GPU torch cannot use (here a Ray that declares one GPU on
    a CPU machine, as a node with a broken driver would) ends the task with 300102 and the
    reason; it used to run the model on the CPU without a word."""
    import ray

    from ray_app.infer.model import load_stage
    from ray_app.infer.pipeline import stream_results
    from ray_app.protocol.errors import ErrorCode, describe
    from ray_app.protocol.hyperparams import InferParams

    models, files = best_stage_files(trained)
    params = InferParams.model_validate(dict(class_names=sample.class_names, gpu_id="0", model_params_path=files,
                                             img_size=128, samples_per_gpu=4, workers_per_gpu=1, cpu_num_workers=1,
                                             conf_threshold=0.05, iou_threshold=0.65))
    bundle = load_stage(params, str(models))
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, address="local")
    try:
        with pytest.raises(Exception) as raised:
            list(stream_results(candidates(sample), bundle, params, None, [0], "t1"))
    finally:
        ray.shutdown()
    code, message = describe(raised.value)
    assert code == ErrorCode.NO_GPU, (code, message)
    assert message.startswith("a GPU was asked for but torch cannot use one here: "), message


def test_a_local_ray_s_pipeline_starts_no_autoscaling_coordinator(sample, trained):
    """On a local Ray, Ray Data learns what it may use from the node itself
    (``ray_app.infer.local_autoscaler``): no ``AutoscalingCoordinator`` actor, a process of its
    own, is started. On a joined cluster (``ray_address``) Ray Data's own autoscaler starts it,
    since a cluster autoscaler may act on its requests. Both give the same results, and Ray
    Data's own autoscaler is in place again once the local pipeline is done."""
    import ray
    from ray.data._internal.execution import streaming_executor

    from ray_app.infer.model import load_stage
    from ray_app.infer.pipeline import stream_results
    from ray_app.protocol.hyperparams import InferParams

    ray_datas = streaming_executor.create_cluster_autoscaler
    models, files = best_stage_files(trained)
    params = InferParams.model_validate(dict(class_names=sample.class_names, model_params_path=files, img_size=128,
                                             samples_per_gpu=4, workers_per_gpu=1, cpu_num_workers=1,
                                             conf_threshold=0.05, iou_threshold=0.65))
    bundle = load_stage(params, str(models))

    def run(run_params: InferParams) -> tuple[dict[str, str], set[str]]:
        results = {}
        for batch in stream_results(candidates(sample), bundle, run_params, None, [], "t1"):
            results.update(zip(map(str, batch["path"]), map(str, batch["detections"])))
        return results, {actor["name"] for actor in ray.util.list_named_actors(all_namespaces=True)}

    ray.init(num_cpus=2, include_dashboard=False, address="local")
    try:
        local, local_actors = run(params)
        restored = streaming_executor.create_cluster_autoscaler is ray_datas
        joined, joined_actors = run(params.model_copy(update={"ray_address": ray.get_runtime_context().gcs_address}))
    finally:
        ray.shutdown()
    assert "AutoscalingCoordinator" not in local_actors, local_actors
    assert "AutoscalingCoordinator" in joined_actors, joined_actors
    assert restored
    assert len(local) == len(candidates(sample)) and local == joined


def test_a_ray_data_without_the_hook_keeps_its_own_autoscaler(monkeypatch, caplog):
    """A Ray Data whose executor does not build its autoscaler where ``local_autoscaler`` looks
    (not the pinned release) keeps its own, after one warning line, instead of failing the task."""
    from ray.data._internal.execution import streaming_executor

    from ray_app.infer.local_autoscaler import local_cluster_autoscaler

    monkeypatch.delattr(streaming_executor, "create_cluster_autoscaler")
    with caplog.at_level("WARNING", logger="ray_app.infer.local_autoscaler"), local_cluster_autoscaler():
        assert not hasattr(streaming_executor, "create_cluster_autoscaler")
    assert "builds its cluster autoscaler elsewhere: its own runs, with its coordinator" in caplog.text


def test_the_onnx_runtime_network_gives_the_torch_network_s_results(sample, trained):
    """``cpu_runtime: onnxruntime``: the network exported when the actor starts and run in ONNX
    Runtime gives, on every pass the mining scores make (plain, flipped, brighter, with
    features), torch's detections, class maps and features."""
    from types import SimpleNamespace

    from ray_app.infer.actors import Preprocess
    from ray_app.infer.images import read_batch
    from ray_app.infer.model import Detector, inference_pipeline, load_stage

    models, files = best_stage_files(trained)
    params = SimpleNamespace(model_params_path=files, class_names=sample.class_names, img_size=0, cfg_options="",
                             conf_threshold=0.05, iou_threshold=0.65)
    bundle = load_stage(params, str(models))
    batch = read_batch({"path": np.array(candidates(sample), dtype=object)})
    packed = Preprocess(inference_pipeline(bundle.cfg), bundle.input_size).samples(batch["data"], list(batch["error"]))
    eager, exported = Detector(bundle, "cpu"), Detector(bundle, "cpu", "onnxruntime")
    assert type(exported.network).__name__ == "OnnxNetwork" and type(eager.network).__name__ == "TorchNetwork"
    boxes = 0
    for flip, brightness in ((False, 1.0), (True, 1.0), (False, 1.3)):
        want = eager.forward(packed, flip=flip, brightness=brightness, features=True)
        got = exported.forward(packed, flip=flip, brightness=brightness, features=True)
        for (w_boxes, w_scores, w_labels), (g_boxes, g_scores, g_labels) in zip(want.detections, got.detections):
            assert len(g_boxes) == len(w_boxes)
            np.testing.assert_allclose(g_boxes, w_boxes, atol=0.05)
            np.testing.assert_allclose(g_scores, w_scores, atol=1e-4)
            np.testing.assert_array_equal(g_labels, w_labels)
            boxes += len(w_boxes)
        for w_map, g_map in zip(want.class_logits, got.class_logits):
            np.testing.assert_allclose(g_map.numpy(), w_map.numpy(), atol=1e-3)
        assert (got.objectness is None) == (want.objectness is None)
        np.testing.assert_allclose(got.features, want.features, atol=1e-4)
        assert got.input_size == want.input_size
    assert boxes >= len(packed), f"only {boxes} boxes: the comparison says little"


def test_mining_and_infer_with_onnx_runtime_give_torch_s_outputs(infer_task, sample, trained):
    """The entry with ``cpu_runtime: onnxruntime`` (aldd, the diverse ranking, infer in the same
    pass) writes what the same task writes with torch: the same ranking and scores, the same boxes."""
    config = dict(mining_algorithm="aldd", diversity=0.5, conf_threshold=0.05)
    outputs = {}
    for runtime in ("torch", "onnxruntime"):
        run = run_entry(infer_task(run_mining=True, run_infer=True, cpu_runtime=runtime, **config))
        assert run.returncode == 0, run.output[-3000:]
        assert ("network in ONNX Runtime" in run.output) == (runtime == "onnxruntime")
        # the ready line says where the actor's start went, naming the runtime that serves
        ready = re.search(r"model actor ready on node \w+ \([^)]*\): process [\d.]+ s, imports [\d.]+ s, mmdet/mmyolo [\d.]+ s, "
                          r"model [\d.]+ s, (\w+) [\d.]+ s", run.output)
        assert ready and ready.group(1) == runtime, run.output[-3000:]
        outputs[runtime] = (read_tsv(run.out), check_infer_result(run.out, candidates(sample)))
    (torch_ranked, torch_boxes), (onnx_ranked, onnx_boxes) = outputs["torch"], outputs["onnxruntime"]
    assert [p for p, _ in onnx_ranked] == [p for p, _ in torch_ranked]
    np.testing.assert_allclose([s for _, s in onnx_ranked], [s for _, s in torch_ranked], rtol=1e-3, atol=1e-6)
    assert any(entry["boxes"] for entry in torch_boxes.values())
    for name, entry in torch_boxes.items():
        got = onnx_boxes[name]["boxes"]
        assert [b["class_name"] for b in got] == [b["class_name"] for b in entry["boxes"]], name
        for g, w in zip(got, entry["boxes"]):
            assert all(abs(g["box"][k] - w["box"][k]) <= 1 for k in "xywh")
            assert g["score"] == pytest.approx(w["score"], abs=1e-4)


def test_a_network_onnx_runtime_cannot_serve_runs_in_torch(sample, trained, monkeypatch, caplog):
    """An export that fails (or disagrees with torch) costs nothing: one warning, torch serves."""
    import logging
    from types import SimpleNamespace

    from ray_app.infer import runtimes
    from ray_app.infer.model import Detector, load_stage

    class Unexportable(runtimes.OnnxNetwork):
        def __init__(self, model, input_size):
            raise ValueError("ONNX Runtime's maps are 3 from torch's")

    monkeypatch.setitem(runtimes.RUNTIMES, "onnxruntime", Unexportable)
    models, files = best_stage_files(trained)
    params = SimpleNamespace(model_params_path=files, class_names=sample.class_names, img_size=0, cfg_options="",
                             conf_threshold=0.05, iou_threshold=0.65)
    with caplog.at_level(logging.WARNING, logger="ray_app.infer.model"):
        detector = Detector(load_stage(params, str(models)), "cpu", "onnxruntime")
    assert isinstance(detector.network, runtimes.TorchNetwork)
    assert "cpu_runtime onnxruntime cannot serve" in caplog.text and "torch runs the network instead" in caplog.text
