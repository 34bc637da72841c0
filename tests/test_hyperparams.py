"""Hyperparameters: template defaults, then config.yaml; bad values are error 300001."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from ray_app.protocol.env import EnvConfig
from ray_app.protocol.errors import ErrorCode, YmirError
from ray_app.protocol.hyperparams import (MiningParams, inference_params, load_template, template_dir,
                                          training_params)

REPO = Path(__file__).resolve().parents[1]


def env_with_config(tmp_path: Path, config: dict, mining=False, infer=False, training=False) -> EnvConfig:
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    return EnvConfig.model_validate({"task_id": "t", "run_training": training, "run_mining": mining, "run_infer": infer,
                                     "input": {"config_file": str(tmp_path / "config.yaml")}})


def test_templates_come_from_the_repo():
    assert template_dir() == REPO / "img-man"


@pytest.mark.parametrize("name", ["training", "mining", "infer"])
def test_every_template_key_has_a_comment(name):
    lines = (REPO / "img-man" / f"{name}-template.yaml").read_text().splitlines()
    keys = [i for i, line in enumerate(lines) if re.match(r"^[a-z_]+:", line)]
    assert keys
    for i in keys:
        assert lines[i - 1].startswith("#"), f"{name}: {lines[i]!r} has no comment above it"


def test_manifest_is_detection():
    assert yaml.safe_load((REPO / "img-man" / "manifest.yaml").read_text()) == {"object_type": 2}


def test_training_defaults_then_config(tmp_path):
    env = env_with_config(tmp_path, {"class_names": ["a", "b"], "max_epochs": 7, "gpu_id": 0}, training=True)
    params = training_params(env)
    template = load_template("training")
    assert params.max_epochs == 7
    assert params.model_name == template["model_name"] and params.img_size == template["img_size"] == 640
    assert params.gpu_id == "0" and params.gpu_ids == [0]
    assert params.ray_address == "" and params.cpu_num_workers == 1


def test_mining_and_infer_take_mining_thresholds(tmp_path):
    env = env_with_config(tmp_path, {"class_names": ["a"], "model_params_path": "s/w.pth"}, mining=True, infer=True)
    params = inference_params(env)
    assert isinstance(params, MiningParams)
    assert params.conf_threshold == load_template("mining")["conf_threshold"]
    assert params.model_params_path == ["s/w.pth"]
    infer_only = inference_params(env_with_config(tmp_path, {"class_names": ["a"], "model_params_path": ["w.pth"]},
                                                  infer=True))
    assert infer_only.conf_threshold == load_template("infer")["conf_threshold"]


@pytest.mark.parametrize("override,needle", [
    ({"max_epochs": "ten"}, "max_epochs"),
    ({"max_epochs": 0}, "max_epochs"),
    ({"samples_per_gpu": -2}, "samples_per_gpu"),
    ({"class_names": []}, "class_names"),
    ({"export_format": "coco"}, "export_format"),
    ({"max_keep_checkpoints": 0}, "max_keep_checkpoints"),
    ({"class_names": ["a", "a"]}, "unique"),
])
def test_bad_training_values(tmp_path, override, needle):
    env = env_with_config(tmp_path, {"class_names": ["a", "b"], **override}, training=True)
    with pytest.raises(YmirError) as error:
        training_params(env)
    assert error.value.code == ErrorCode.CONFIG
    assert needle in error.value.message and "\n" not in error.value.message


@pytest.mark.parametrize("override,needle", [
    ({"mining_algorithm": "magic"}, "mining_algorithm"),
    ({"conf_threshold": 1.5}, "conf_threshold"),
    ({"model_params_path": []}, "model_params_path"),
])
def test_bad_mining_values(tmp_path, override, needle):
    env = env_with_config(tmp_path, {"class_names": ["a"], "model_params_path": ["w.pth"], **override}, mining=True)
    with pytest.raises(YmirError) as error:
        inference_params(env)
    assert error.value.code == ErrorCode.CONFIG and needle in error.value.message


def test_unreadable_config_is_300001(tmp_path):
    (tmp_path / "config.yaml").write_text("class_names: [a\n")
    env = EnvConfig.model_validate({"run_training": True, "input": {"config_file": str(tmp_path / "config.yaml")}})
    with pytest.raises(YmirError) as error:
        training_params(env)
    assert error.value.code == ErrorCode.CONFIG and "not valid YAML" in error.value.message


def test_token_is_never_shown(tmp_path):
    """``ray_auth_token`` is a secret: hidden in repr and in validation messages."""
    token = "s3cr3t-token-value"
    env = env_with_config(tmp_path, {"class_names": ["a"], "model_params_path": ["w.pth"],
                                     "ray_auth_token": token}, mining=True)
    params = inference_params(env)
    assert params.ray_auth_token.get_secret_value() == token
    assert token not in repr(params) and token not in str(params.model_dump())
    env = env_with_config(tmp_path, {"class_names": ["a"], "model_params_path": ["w.pth"],
                                     "ray_auth_token": ["s3cr3t", "list"]}, mining=True)
    with pytest.raises(YmirError) as error:
        inference_params(env)
    assert "ray_auth_token" in error.value.message and "s3cr3t" not in error.value.message


def test_what_users_of_the_sister_executors_type(tmp_path):
    """``class_distribution_scores`` as comma text, ``ymir_saved_file_patterns`` as the SDK's
    comma-separated regular expressions, ``cfg_options`` and ``img_size: 0`` for infer/mining."""
    mining = inference_params(env_with_config(tmp_path, {"class_names": ["a", "b"], "model_params_path": ["w.pth"],
                                                         "class_distribution_scores": "1.0, 2.5"}, mining=True))
    assert mining.class_distribution_scores == [1.0, 2.5]
    assert mining.img_size == 0 and mining.cfg_options == ""  # the templates' defaults: the stage's own size
    training = training_params(env_with_config(tmp_path, {"class_names": ["a"],
                                                          "ymir_saved_file_patterns": r".*\.log$, scalars\.json"},
                                               training=True))
    assert training.saved_file_patterns == (r".*\.log$", r"scalars\.json")
    with pytest.raises(YmirError) as error:
        training_params(env_with_config(tmp_path, {"class_names": ["a"], "ymir_saved_file_patterns": "ok, (unclosed"},
                                        training=True))
    assert error.value.code == ErrorCode.CONFIG and "'(unclosed' is not a regular expression" in error.value.message
    with pytest.raises(YmirError) as error:
        inference_params(env_with_config(tmp_path, {"class_names": ["a"], "model_params_path": ["w.pth"],
                                                    "img_size": 16}, infer=True))
    assert "must be 0 (the model's own size) or at least 32" in error.value.message


@pytest.mark.parametrize("weights,expected,padded", [("2.0", [2.0, 1.0, 1.0], True), ([0.5, 0], [0.5, 0.0, 1.0], True),
                                                     ("", [], False), ("1,2,3", [1.0, 2.0, 3.0], False)])
def test_short_class_weights_are_padded_with_one(tmp_path, caplog, weights, expected, padded):
    """As det-yolov5-tmi reads them (``ymir-protocol.md``): a short list weighs the rest 1.0."""
    mining = inference_params(env_with_config(tmp_path, {"class_names": ["a", "b", "c"], "model_params_path": ["w.pth"],
                                                         "class_distribution_scores": weights}, mining=True))
    assert mining.class_distribution_scores == expected
    warned = [r.getMessage() for r in caplog.records if "class_distribution_scores has" in r.getMessage()]
    assert len(warned) == padded


@pytest.mark.parametrize("weights,says", [("1,2,3,4", "has 4 values for 3 classes"),
                                          ("1,-2", "greater than or equal to 0")])
def test_too_many_or_negative_class_weights_are_300001(tmp_path, weights, says):
    with pytest.raises(YmirError) as error:
        inference_params(env_with_config(tmp_path, {"class_names": ["a", "b", "c"], "model_params_path": ["w.pth"],
                                                    "class_distribution_scores": weights}, mining=True))
    assert error.value.code == ErrorCode.CONFIG and says in error.value.message and "\n" not in error.value.message


def test_keys_no_task_reads_are_named_once(tmp_path, caplog):
    """A misspelt key would leave its field at the template's default without a word: it is
    named, with the field it resembles; the platform's own keys are not."""
    config = {"class_names": ["a"], "max_epoch": 3, "shm_size": "16G", "gpu_count": 0, "export_format": "ark:raw",
              "colour": "blue"}
    params = training_params(env_with_config(tmp_path, config, training=True))
    assert params.max_epochs == load_template("training")["max_epochs"]  # the misspelt key changed nothing
    warnings = [r.getMessage() for r in caplog.records if "does not read" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].endswith("ignored: colour, max_epoch (did you mean max_epochs?)")
    caplog.clear()
    inference_params(env_with_config(tmp_path, {"class_names": ["a"], "model_params_path": ["w.pth"], "task_id": "t",
                                                "gpu_id": "", "gpu_count": 0}, infer=True))
    assert not [r for r in caplog.records if "does not read" in r.getMessage()]
