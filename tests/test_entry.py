"""The real entry (``python -m ray_app``) on workspaces with something wrong: it must exit
non-zero and leave monitor.txt in state 4 with the right code and a readable message."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from conftest import REPO, run_entry
from ray_app.data.sample import write_task


def test_help_explains_the_env_file():
    proc = subprocess.run([sys.executable, "-m", "ray_app", "--help"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0
    assert "YMIR_ENV_FILE" in proc.stdout and "/in/env.yaml" in proc.stdout


def test_missing_env_file_exits_non_zero(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "ray_app"], capture_output=True, text=True, cwd=REPO,
                          env={"YMIR_ENV_FILE": str(tmp_path / "env.yaml"), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 1
    assert "300001" in proc.stderr and "does not exist" in proc.stderr


def edit_config(env_file, **changes):
    path = env_file.parent / "config.yaml"
    config = yaml.safe_load(path.read_text())
    config.update(changes)
    path.write_text(yaml.safe_dump(config))


def edit_env(env_file, **changes):
    env = yaml.safe_load(env_file.read_text())
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            env[section][field] = value
        else:
            env[section] = value
    env_file.write_text(yaml.safe_dump(env))


@pytest.mark.parametrize("change,code,needle", [
    (dict(model_name="no_such_model"), "300001", "valid names"),
    (dict(max_epochs="ten"), "300001", "max_epochs"),
    (dict(class_names=[]), "300001", "class_names"),
    (dict(cfg_options="a.b"), "300001", "cfg_options"),
    (dict(gpu_id="0"), "300102", "no GPU"),
])
def test_training_config_errors(tmp_path, sample, change, code, needle):
    env_file = write_task(tmp_path, sample, run_training=True, config=dict(model_name="yolov5_n", **{}))
    edit_config(env_file, **change)
    run = run_entry(env_file)
    assert run.returncode == 1, run.output
    fields = run.monitor()
    assert fields[3] == "4" and fields[4] == code, fields
    assert needle in fields[5]
    assert "Traceback" in (run.out / "monitor.txt").read_text()  # the trace sits below the first line


def test_unreadable_config_yaml(tmp_path, sample):
    env_file = write_task(tmp_path, sample, run_training=True)
    (env_file.parent / "config.yaml").write_text("class_names: [a, b\n  :::")
    run = run_entry(env_file)
    assert run.returncode == 1 and run.monitor()[3:5] == ["4", "300001"]
    assert "not valid YAML" in run.monitor()[5]


def test_missing_index_file_is_300002(tmp_path, sample):
    env_file = write_task(tmp_path, sample, run_training=True, config=dict(model_name="yolov5_n"))
    edit_env(env_file, input__training_index_file=str(tmp_path / "gone.tsv"))
    run = run_entry(env_file)
    assert run.returncode == 1 and run.monitor()[3:5] == ["4", "300002"]
    assert "gone.tsv" in run.monitor()[5]


def test_missing_model_file_is_300004(tmp_path, sample):
    env_file = write_task(tmp_path, sample, run_infer=True, config=dict(model_params_path=["s/missing.pth", "s/c.py"]))
    run = run_entry(env_file)
    assert run.returncode == 1 and run.monitor()[3:5] == ["4", "300004"]
    assert "missing.pth" in run.monitor()[5]


def test_nothing_to_do(tmp_path, sample):
    env_file = write_task(tmp_path, sample)
    run = run_entry(env_file)
    assert run.returncode == 1 and run.monitor()[3:5] == ["4", "300001"]
    assert "nothing to do" in run.monitor()[5]


def test_unknown_mining_algorithm(tmp_path, sample):
    env_file = write_task(tmp_path, sample, run_mining=True,
                          config=dict(model_params_path=["s/w.pth"], mining_algorithm="psychic"))
    run = run_entry(env_file)
    assert run.returncode == 1 and run.monitor()[3:5] == ["4", "300001"]
    assert "mining_algorithm" in run.monitor()[5]
