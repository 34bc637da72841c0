"""Bad input through the real entry (issue 6): every case ends in a known, documented state.

Each case is a YMIR workspace with one thing wrong, run as the platform runs it
(``python -m ray_app`` with ``YMIR_ENV_FILE``). The table-driven cases fail before any
training or inference starts (seconds each); the few marked slow need a trained model.
docs/reliability.md lists every case, its outcome and the test that covers it, these and
the ones tested elsewhere (tests/test_entry.py, test_conversion.py, test_inference.py, ...).

What each case asserts: exit status 1; monitor.txt state 4 with the right code and the
same one-line message the log shows (or, when monitor.txt cannot be written, no monitor and
the line on stderr); and exactly which files are left under /out.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch
import yaml

from conftest import Run, best_stage_files, run_entry
from ray_app.data.sample import SampleData, write_task

#: a training config that would train quickly if a case ever got that far
QUICK_TRAIN = dict(model_name="yolov5_n", img_size=64, max_epochs=1, samples_per_gpu=4, workers_per_gpu=0,
                   cpu_num_workers=1, val_interval=1)
#: model files that do not exist: a candidate case reaching the model would fail with 300004
NO_MODEL = dict(model_params_path=["s/w.pth", "s/c.py"])


# --- building broken workspaces -------------------------------------------------------------

def training(tmp_path: Path, sample: SampleData, **config) -> Path:
    return write_task(tmp_path, sample, run_training=True, config={**QUICK_TRAIN, **config})


def mining_infer(tmp_path: Path, sample: SampleData, **config) -> Path:
    return write_task(tmp_path, sample, run_mining=True, run_infer=True, config={**NO_MODEL, **config})


def edit_env(env_file: Path, change: Callable[[dict], object]) -> Path:
    env = yaml.safe_load(env_file.read_text())
    change(env)
    env_file.write_text(yaml.safe_dump(env))
    return env_file


def with_index(env_file: Path, key: str, text: str | None) -> Path:
    """Point ``input.<key>`` at a new index holding ``text`` (None: a file that does not exist)."""
    index = env_file.parent / f"{key}.tsv"
    if text is not None:
        index.write_bytes(text.encode())
    return edit_env(env_file, lambda env: env["input"].__setitem__(key, str(index)))


def pairs(index: Path) -> list[tuple[str, str]]:
    return [tuple(line.split("\t")) for line in index.read_text().splitlines() if line]


def with_annotations(tmp_path: Path, sample: SampleData, text: str) -> Path:
    """A training task whose every annotation file holds ``text``."""
    lines = []
    for i, (image, _) in enumerate(pairs(sample.train_index)):
        annotation = tmp_path / "annotations" / f"{i}.txt"
        annotation.parent.mkdir(parents=True, exist_ok=True)
        annotation.write_text(text)
        lines.append(f"{image}\t{annotation}\n")
    return with_index(training(tmp_path, sample), "training_index_file", "".join(lines))


def with_unreadable_images(tmp_path: Path, sample: SampleData) -> Path:
    """A training task whose images are, in turn: not an image, cut inside the header, and
    cut near the end (the header reads, the pixels do not decode)."""
    lines = []
    for i, (image, annotation) in enumerate(pairs(sample.train_index)):
        data = Path(image).read_bytes()
        bad = tmp_path / "assets" / f"{i}.jpg"
        bad.parent.mkdir(parents=True, exist_ok=True)
        bad.write_bytes([b"not an image", data[:200], data[:-10]][i % 3])
        lines.append(f"{bad}\t{annotation}\n")
    return with_index(training(tmp_path, sample), "training_index_file", "".join(lines))


def with_duplicate_basename(tmp_path: Path, sample: SampleData) -> Path:
    first = sample.candidate_index.read_text().split()[0]
    twin = tmp_path / "elsewhere" / Path(first).name
    twin.parent.mkdir()
    shutil.copy(first, twin)
    return with_index(mining_infer(tmp_path, sample), "candidate_index_file",
                      sample.candidate_index.read_text() + f"{twin}\n")


def output_root_is_a_file(tmp_path: Path, sample: SampleData) -> Path:
    env_file = training(tmp_path, sample)
    shutil.rmtree(tmp_path / "out")
    (tmp_path / "out").write_text("a file where the output folder should be\n")
    return env_file


def output_root_under_a_file(tmp_path: Path, sample: SampleData) -> Path:
    env_file = training(tmp_path, sample)
    (tmp_path / "file").write_text("not a folder\n")
    old, new = str(tmp_path / "out"), str(tmp_path / "file" / "out")
    return edit_env(env_file, lambda env: env.__setitem__(
        "output", {key: path.replace(old, new) for key, path in env["output"].items()}))


def needs_no(path: str) -> None:
    """Cases that fall back to the contract's default /in or /out paths need them absent here."""
    if Path(path).exists():
        pytest.skip(f"{path} exists on this machine")


def env_without_output(tmp_path: Path, sample: SampleData) -> Path:
    needs_no("/out")
    return edit_env(training(tmp_path, sample), lambda env: env.pop("output"))


def env_without_config_file(tmp_path: Path, sample: SampleData) -> Path:
    needs_no("/in")
    return edit_env(training(tmp_path, sample), lambda env: env["input"].pop("config_file"))


def config_text(text: str) -> Callable[[Path, SampleData], Path]:
    def make(tmp_path: Path, sample: SampleData) -> Path:
        env_file = training(tmp_path, sample)
        (env_file.parent / "config.yaml").write_text(text)
        return env_file
    return make


def env_text(text: str) -> Callable[[Path, SampleData], Path]:
    def make(tmp_path: Path, sample: SampleData) -> Path:
        env_file = training(tmp_path, sample)
        env_file.write_text(text)
        return env_file
    return make


# --- the table ------------------------------------------------------------------------------

@dataclass
class Case:
    make: Callable[[Path, SampleData], Path]  # builds the workspace under tmp_path, returns env.yaml
    code: int | None  # monitor.txt error code; None: monitor.txt cannot be written, stderr only
    says: str  # a fragment of the one-line message
    left: tuple[str, ...] = ("monitor.txt",)  # every file left under /out afterwards
    warns: tuple[str, ...] = ()  # fragments of the warnings the log must show too


CONVERTED_TRAIN = ("monitor.txt", "ray_app/data/train.json")
CONVERTED_BOTH = (*CONVERTED_TRAIN, "ray_app/data/val.json")

CASES = {
    # env.yaml
    "env-empty": Case(env_text(""), None, "is empty: it must be a YAML mapping", ()),
    "env-not-yaml": Case(env_text("task_id: [a\n :::\n"), None, "is not valid YAML: expected ',' or ']'", ()),
    "env-not-a-mapping": Case(env_text("- run_training\n"), None, "must be a YAML mapping, got list", ()),
    "env-wrong-type": Case(lambda t, s: edit_env(training(t, s), lambda e: e.__setitem__("run_training", "maybe")),
                           None, "run_training: Input should be a valid boolean", ()),
    "env-no-run-flags": Case(lambda t, s: edit_env(training(t, s), lambda e: [e.pop(k) for k in
                                                   ("run_training", "run_mining", "run_infer")]),
                             300001, "nothing to do"),
    "env-no-config-file-key": Case(env_without_config_file, 300001, "config file /in/config.yaml does not exist"),
    "env-no-index-key": Case(lambda t, s: edit_env(training(t, s), lambda e: e["input"].pop("training_index_file")),
                             300002, "no training index file was given in env.yaml"),
    "env-no-infer-result-key": Case(lambda t, s: edit_env(mining_infer(t, s),
                                                          lambda e: e["output"].pop("infer_result_file")),
                                    300001, "output.infer_result_file /out/infer-result.json is not under "
                                            "output.root_dir"),
    "env-no-monitor-key": Case(lambda t, s: edit_env(training(t, s), lambda e: e["output"].pop("monitor_file")),
                               None, "output.monitor_file /out/monitor.txt is not under output.root_dir", ()),
    "env-no-output-section": Case(env_without_output, None, "output root_dir /out is not a folder", ()),
    # config.yaml
    "config-empty": Case(config_text(""), 300001, "class_names: Field required"),
    "config-class-names-not-a-list": Case(lambda t, s: training(t, s, class_names="square"), 300001,
                                          "class_names: Input should be a valid list"),
    "config-max-epochs-zero": Case(lambda t, s: training(t, s, max_epochs=0), 300001,
                                   "max_epochs: Input should be greater than or equal to 1 (got 0)"),
    "config-samples-negative": Case(lambda t, s: training(t, s, samples_per_gpu=-2), 300001,
                                    "samples_per_gpu: Input should be greater than or equal to 1 (got -2)"),
    "config-img-size-zero": Case(lambda t, s: training(t, s, img_size=0), 300001,
                                 "img_size: Input should be greater than or equal to 32 (got 0)"),
    "config-img-size-not-multiple": Case(lambda t, s: training(t, s, img_size=100), 300001,
                                         "img_size 100 does not fit yolov5_n: it must be a multiple of 32"),
    "config-img-size-below-family": Case(lambda t, s: training(t, s, model_name="yolov6_n", img_size=64), 300001,
                                         "at least 96 for yolov6 models"),
    "config-conf-threshold-negative": Case(lambda t, s: mining_infer(t, s, conf_threshold=-0.1), 300001,
                                           "conf_threshold: Input should be greater than or equal to 0"),
    "config-mining-no-class-names": Case(lambda t, s: mining_infer(t, s, class_names=[]), 300001,
                                         "class_names: List should have at least 1 item"),
    # index files
    "candidate-index-missing": Case(lambda t, s: with_index(mining_infer(t, s), "candidate_index_file", None),
                                    300002, "candidate_index_file.tsv does not exist"),
    "candidate-index-empty": Case(lambda t, s: with_index(mining_infer(t, s), "candidate_index_file", ""),
                                  300002, "candidate_index_file.tsv lists no images"),
    "candidate-index-blank-lines-only": Case(lambda t, s: with_index(mining_infer(t, s), "candidate_index_file",
                                                                     "\n\r\n  \t\n"),
                                             300002, "candidate_index_file.tsv lists no images"),
    "training-index-empty": Case(lambda t, s: with_index(training(t, s), "training_index_file", ""),
                                 300002, "training_index_file.tsv lists no images"),
    "validation-index-empty": Case(lambda t, s: with_index(training(t, s), "val_index_file", ""),
                                   300002, "val_index_file.tsv lists no images"),
    "training-images-do-not-exist": Case(
        lambda t, s: with_index(training(t, s), "training_index_file",
                                "".join(f"{t}/nope{i}.jpg\t{t}/nope{i}.txt\n" for i in range(3))),
        300002, "the training set has no readable image (3 listed)", warns=("nope0.jpg: FileNotFoundError",)),
    "validation-images-do-not-exist": Case(
        lambda t, s: with_index(training(t, s), "val_index_file", f"{t}/nope.jpg\t{t}/nope.txt\n"),
        300002, "the validation set has no readable image (1 listed)", CONVERTED_TRAIN),
    "candidate-duplicate-basename": Case(with_duplicate_basename, 300002, "two images with the basename"),
    # annotations and images
    "annotations-all-malformed-or-out-of-range": Case(
        lambda t, s: with_annotations(t, s, "x, 1, 2, 3, 4\n0, 1, 2\n7, 1, 1, 9, 9\n0; 1; 1; 9; 9\n"),
        300002, "the training set has no usable box in 48 images", CONVERTED_BOTH,
        warns=("training set: 144 malformed annotation lines (skipped)",
               "training set: 48 boxes whose class is not in class_names (skipped)")),
    "training-set-without-boxes": Case(lambda t, s: with_annotations(t, s, ""), 300002,
                                       "the training set has no usable box in 48 images: nothing to learn",
                                       CONVERTED_BOTH),
    "training-images-truncated-or-not-images": Case(
        with_unreadable_images, 300002, "the training set has no readable image (48 listed)",
        warns=("48 images that are missing, not images, or truncated (image skipped), e.g. ",
               "2.jpg: TruncatedImageError")),
    # /out
    "output-root-is-a-file": Case(output_root_is_a_file, None, "is not a folder: it must exist and be writable", ()),
    "output-root-under-a-file": Case(output_root_under_a_file, None, "is not a folder", ()),
}


def out_files(out: Path) -> set[str]:
    """Every file under the out dir, relative; an out that is itself a file counts as nothing."""
    if not out.is_dir():
        return set()
    return {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}


def failure_line(run: Run) -> tuple[int, str]:
    """The entry's one error line on stderr: ``task failed (CODE): MESSAGE``."""
    lines = re.findall(r"ERROR ray_app: task failed \((\d+)\): (.*)", run.output)
    assert len(lines) == 1, run.output[-3000:]
    return int(lines[0][0]), lines[0][1]


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_fails_before_any_work(tmp_path, sample, name):
    case = CASES[name]
    env_file = case.make(tmp_path, sample)
    before = (tmp_path / "out").read_bytes() if (tmp_path / "out").is_file() else None
    run = run_entry(env_file, out=tmp_path / "out")
    assert run.returncode == 1, run.output[-3000:]
    code, message = failure_line(run)
    assert case.says in message and "Traceback" not in message, message
    assert "starting a local Ray" not in run.output  # failed before any work
    if case.code is None:  # nowhere to write monitor.txt: the log line is the report
        assert code == 300001
    else:
        fields = run.monitor()
        assert fields[3:5] == ["4", str(case.code)] and code == case.code, fields
        assert fields[5] == message  # monitor.txt says what the log says, on one line
        assert "Traceback" in (run.out / "monitor.txt").read_text()  # the trace below it
    for warning in case.warns:
        assert warning in run.output, run.output[-3000:]
    assert out_files(run.out) == set(case.left), out_files(run.out)
    if before is not None:
        assert (tmp_path / "out").read_bytes() == before  # the file in the way is left alone


def test_unwritable_output_root_for_a_non_root_user(tmp_path, monkeypatch):
    """A read-only /out as a non-root user sees it (root writes anyway, so the denial is
    simulated where the monitor's temporary file is created): a YmirError naming the file and
    the reason, which the entry reports on stderr only."""
    from ray_app.cli import open_monitor
    from ray_app.protocol import ErrorCode, YmirError
    from ray_app.protocol.env import EnvConfig

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / ".monitor.txt.tmp"))

    monkeypatch.setattr("ray_app.protocol.atomic.tempfile.mkstemp", denied)
    env = EnvConfig.model_validate({"task_id": "t", "output": {"root_dir": str(tmp_path),
                                                               "monitor_file": str(tmp_path / "monitor.txt")}})
    with pytest.raises(YmirError) as error:
        open_monitor(env)
    assert error.value.code == ErrorCode.CONFIG
    assert error.value.message == (f"cannot write the monitor file {tmp_path / 'monitor.txt'}: Permission denied "
                                   f"(output root_dir {tmp_path} must be writable)")
    assert not (tmp_path / "monitor.txt").exists()


# --- cases that need a trained model ---------------------------------------------------------

def copy_stage(trained: Run, to: Path) -> tuple[Path, list[str]]:
    """The best stage copied to ``to`` (a models_dir), so that a test may damage it."""
    models, files = best_stage_files(trained)
    for entry in files:
        (to / entry).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(models / entry, to / entry)
    return to, files


def stage_file(models: Path, files: list[str], suffix: str) -> Path:
    return next(models / f for f in files if f.endswith(suffix))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def drop_tensors(path: Path) -> None:
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["state_dict"] = dict(list(checkpoint["state_dict"].items())[::2])
    torch.save(checkpoint, path)


#: name -> (damage done to the copied stage, config changes, message fragment with {weights}: the .pth
#: file's name, {weights_path}: its path)
MODEL_CASES = {
    "weights-truncated": (lambda m, f: truncate(stage_file(m, f, ".pth")), {},
                          "{weights} is damaged or not a PyTorch checkpoint"),
    "weights-not-a-checkpoint": (lambda m, f: stage_file(m, f, ".pth").write_text("not weights\n"), {},
                                 "{weights_path} is damaged or not a PyTorch checkpoint"),
    "config-damaged": (lambda m, f: stage_file(m, f, ".py").write_text("model = dict(type=\n"), {},
                       "cannot be read"),
    "classes-differ-in-number": (lambda m, f: None, {"class_names": ["square", "disc"]}, "was trained on 3 classes"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MODEL_CASES))
def test_bad_model_is_300004(tmp_path, sample, trained, name):
    damage, config, says = MODEL_CASES[name]
    models, files = copy_stage(trained, tmp_path / "models")
    damage(models, files)
    env_file = write_task(tmp_path / "task", sample, run_mining=True, run_infer=True, models_dir=models,
                          config=dict(model_params_path=files, img_size=128, cpu_num_workers=1, **config))
    run = run_entry(env_file)
    assert run.returncode == 1, run.output[-3000:]
    code, message = failure_line(run)
    assert run.monitor()[3:5] == ["4", "300004"] and code == 300004, run.monitor()
    weights = stage_file(models, files, ".pth")
    assert says.format(weights=weights.name, weights_path=weights) in message, message
    assert run.monitor()[5] == message
    assert out_files(run.out) == {"monitor.txt"}  # no partial result.tsv or infer-result.json


@pytest.mark.slow
def test_weights_that_do_not_fit_the_config(tmp_path, sample, trained):
    """A checkpoint that loads but lacks half the model's tensors: found when the model
    actors build the detector, reported as a model error naming the file."""
    models, files = copy_stage(trained, tmp_path / "models")
    drop_tensors(stage_file(models, files, ".pth"))
    env_file = write_task(tmp_path / "task", sample, run_infer=True, models_dir=models,
                          config=dict(model_params_path=files, img_size=128, cpu_num_workers=1))
    run = run_entry(env_file)
    assert run.returncode == 1, run.output[-3000:]
    code, message = failure_line(run)
    assert run.monitor()[3:5] == ["4", "300004"] and code == 300004, (run.monitor(), message)
    assert "do not fit the config" in message and len(message) < 600, message
    assert out_files(run.out) == {"monitor.txt"}


@pytest.mark.slow
def test_infer_img_size_off_the_model_stride_is_300001(tmp_path, sample, trained):
    """An img_size the network cannot take (not a multiple of its largest stride, 32 here)
    is a config error on the driver, not a tensor-shape error in every model actor."""
    models, files = copy_stage(trained, tmp_path / "models")
    env_file = write_task(tmp_path / "task", sample, run_mining=True, run_infer=True, models_dir=models,
                          config=dict(model_params_path=files, img_size=100, cpu_num_workers=1))
    run = run_entry(env_file)
    assert run.returncode == 1, run.output[-3000:]
    code, message = failure_line(run)
    assert run.monitor()[3:5] == ["4", "300001"] and code == 300001, (run.monitor(), message)
    assert "img_size 100" in message and "multiple of 32 (e.g. 96 or 128)" in message, message
    assert "model actor" not in run.output and out_files(run.out) == {"monitor.txt"}


@pytest.mark.slow
def test_messy_candidate_index_and_reordered_classes(tmp_path, sample, trained):
    """The run goes on: a candidate index with CRLF line ends, blank lines and a repeated
    line gives one result per image, keyed by the clean basename; a task whose class_names
    list the model's classes in another order gets a warning and boxes named by the model."""
    images = sample.candidate_index.read_text().split()
    messy = tmp_path / "candidates.tsv"
    messy.write_bytes(("\r\n".join(["", images[0], "", *images, "  ", images[1]]) + "\r\n").encode())
    data = SampleData(sample.root, sample.train_index, sample.val_index, messy, sample.class_names)
    models, files = best_stage_files(trained)
    env_file = write_task(tmp_path / "task", data, run_mining=True, run_infer=True, models_dir=models,
                          config=dict(model_params_path=files, img_size=128, cpu_num_workers=1,
                                      class_names=["triangle", "square", "disc"]))
    run = run_entry(env_file)
    assert run.returncode == 0, run.output[-3000:]
    assert run.monitor()[2:4] == ["1.0000", "3"]
    assert "candidate index repeats 2 lines; each image is processed once" in run.output
    assert "differ from the task's" in run.output and "boxes are named by the model's" in run.output
    ranked = [line.split("\t")[0] for line in (run.out / "result.tsv").read_text().splitlines()]
    assert sorted(ranked) == sorted(images)  # each image once, no '\r' in any path
    detection = json.loads((run.out / "infer-result.json").read_text())["detection"]
    assert set(detection) == {os.path.basename(p) for p in images}
    names = {box["class_name"] for entry in detection.values() for box in entry["boxes"]}
    assert names and names <= {"square", "disc", "triangle"}
