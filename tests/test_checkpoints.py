"""Model files load without executing pickled code; damaged ones are error 300004."""

from __future__ import annotations

import io
import os
import pickle

import pytest
import torch

from ray_app.checkpoints import load_checkpoint_file, resume_checkpoint, stage_checkpoint, to_bytes
from ray_app.protocol.errors import ErrorCode, YmirError


class Exploit:
    """Unpickling this creates ``marker``: what a malicious model file would do (run a command)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _raw_pickle(protocol):
    return lambda obj, path: path.write_bytes(pickle.dumps(obj, protocol=protocol))


#: every way a file can carry a pickle: torch's zip format, its legacy format (which torch
#: unpickles with the ``pickle_module``'s own ``load`` first) and a bare pickle of any protocol
WRITERS = {"torch-zip": torch.save,
           "torch-legacy": lambda obj, path: torch.save(obj, path, _use_new_zipfile_serialization=False),
           **{f"raw-pickle-{n}": _raw_pickle(n) for n in (2, 4, 5)}}


@pytest.mark.parametrize("writer", list(WRITERS))
def test_malicious_pickle_runs_nothing(tmp_path, writer):
    """No format reaches an unrestricted unpickler. A raw pickle did until 2026-11-27: the
    loader retried refused files with ``weights_only=False`` and a ``pickle_module`` whose
    ``load`` was plain ``pickle.load``, which torch calls first on a file that is no zip."""
    marker, path = tmp_path / "pwned", tmp_path / "evil.pth"
    WRITERS[writer]({"state_dict": {"w": torch.zeros(1)}, "payload": Exploit(marker)}, path)
    with pytest.raises(YmirError) as error:
        load_checkpoint_file(path)
    assert error.value.code == ErrorCode.MODEL and "evil.pth" in error.value.message
    assert "\n" not in error.value.message and "weights_only" not in error.value.message
    assert not marker.exists()
    if writer.startswith("torch"):  # the first global refused is named (in a raw pickle, the tensor's)
        assert "pickled posix.system, which is not allowed" in error.value.message


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", None])
def test_damaged_or_missing_file_is_300004(tmp_path, content):
    path = tmp_path / "epoch_3.pth"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(YmirError) as error:
        load_checkpoint_file(path)
    assert error.value.code == ErrorCode.MODEL and "epoch_3.pth" in error.value.message
    says = "does not exist" if content is None else "is damaged or not a PyTorch checkpoint"
    assert says in error.value.message and "\n" not in error.value.message


def test_truncated_checkpoint_is_300004(tmp_path):
    path = tmp_path / "w.pth"
    path.write_bytes(to_bytes({"state_dict": {"w": torch.ones(1000)}, "meta": {}})[:500])
    with pytest.raises(YmirError, match="w.pth"):
        load_checkpoint_file(path)


def test_mmengine_checkpoint_with_message_hub_loads(tmp_path):
    import numpy as np
    from mmengine.logging import HistoryBuffer

    buffer = HistoryBuffer()
    buffer.update(1.5)
    checkpoint = {"meta": {"epoch": 3, "seed": np.int64(7)}, "state_dict": {"w": torch.ones(2)},
                  "message_hub": {"log_scalars": {"train/loss": buffer}, "runtime_info": {}, "resumed_keys": {}}}
    path = tmp_path / "mm.pth"
    torch.save(checkpoint, path)
    loaded = load_checkpoint_file(path)
    assert loaded["meta"]["epoch"] == 3 and torch.equal(loaded["state_dict"]["w"], torch.ones(2))
    stage = torch.load(io.BytesIO(to_bytes(stage_checkpoint(loaded))), weights_only=True)
    assert stage["meta"] == {"epoch": 3, "seed": 7} and set(stage) == {"meta", "state_dict"}
    resume = torch.load(io.BytesIO(to_bytes(resume_checkpoint(loaded))), weights_only=True)
    assert resume["message_hub"] == {"log_scalars": {}, "runtime_info": {}, "resumed_keys": {}}


def test_bare_state_dict_is_accepted(tmp_path):
    path = tmp_path / "bare.pth"
    torch.save({"w": torch.zeros(3)}, path)
    assert set(load_checkpoint_file(path)["state_dict"]) == {"w"}


def test_stage_config_is_read_as_data(tmp_path):
    """A dumped mmengine config (what every stage holds) loads to the same values as
    ``Config.fromfile``, without running it."""
    from mmengine.config import Config

    from ray_app.config_files import load_config_safely
    from ray_app.model_config.zoo import config_path

    dumped = tmp_path / "stage_config.py"
    reference = Config.fromfile(str(config_path("yolov8_n")))
    dumped.write_text(reference.pretty_text)
    safe = load_config_safely(dumped)
    assert safe.to_dict() == Config.fromfile(str(dumped)).to_dict()
    assert safe.model.type == "YOLODetector" and safe.test_pipeline[0]["type"] == "LoadImageFromFile"


@pytest.mark.parametrize("code", [
    "import os\nos.system('touch {marker}')\n",
    "model = dict(type=__import__('os').system('touch {marker}'))\n",
    "x = [f() for f in ()]\nmodel = open('{marker}', 'w')\n",
    "_base_ = ['../other.py']\n",
])
def test_config_with_code_is_refused(tmp_path, code):
    """A model config that would execute anything is 300004, and nothing ran."""
    from ray_app.config_files import UnsafeConfig, load_config_safely

    marker = tmp_path / "ran"
    config = tmp_path / "evil_config.py"
    config.write_text(code.format(marker=marker))
    with pytest.raises(UnsafeConfig):
        load_config_safely(config)
    assert not marker.exists()
