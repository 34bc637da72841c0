"""``ray_app.devices``: the GPUs the driver counts without torch, and the device a model runs on."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from conftest import REPO
from ray_app.devices import container_gpus, model_device, why_no_cuda
from ray_app.protocol.errors import ErrorCode, YmirError


def test_a_driver_too_old_for_torch_names_both_and_the_way_out():
    """A cu13 torch on a host whose driver runs CUDA 12 at most (a driver before 580): the
    operator reads both versions and the two ways out, not "no GPU"."""
    text = why_no_cuda("2.13.0", "13.0", ("535.104.05", "12.2"))
    assert "535.104.05" in text and "12.2" in text and "CUDA 13.0" in text
    assert "update the driver" in text and "a build for CUDA 12" in text and "CUDA_BUILD" in text


@pytest.mark.parametrize("torch_cuda, driver, needle", [
    (None, ("580.82.07", "13.0"), "CPU-only build"),
    ("13.0", None, "no NVIDIA driver is visible"),
    ("12.8", ("580.82.07", "13.0"), "cannot initialise CUDA"),  # a newer driver runs an older CUDA
    ("13.0", ("580.82.07", "13.0"), "cannot initialise CUDA"),
])
def test_why_no_cuda(torch_cuda, driver, needle):
    assert needle in why_no_cuda("2.13.0", torch_cuda, driver)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine's torch can use a GPU")
def test_a_gpu_torch_cannot_use_is_300102_not_the_cpu():
    """A model actor or a Train worker that Ray gave a GPU which torch cannot use used to run
    on the CPU without a word; now it is 300102 with the reason."""
    assert model_device(False) == "cpu"
    with pytest.raises(YmirError) as raised:
        model_device(True)
    assert raised.value.code == ErrorCode.NO_GPU
    assert raised.value.message.startswith("a GPU was asked for but torch cannot use one here: ")


def test_the_driver_counts_gpus_as_torch_does_without_importing_it():
    """The driver's count (NVML; torch's only where NVML is missing, as on a CPU machine) is
    torch's; and a task's driver with NVML does not import torch to get it."""
    assert container_gpus() == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    probe = ("import sys; from ray_app.devices import nvml_gpus; n = nvml_gpus(); "
             "print(n, 'torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[1] == "False", proc.stdout
