"""The install scripts' checks that need neither the network nor nvcc: the CUDA agreement test
that setup.sh runs before compiling mmcv (scripts/check_cuda.py), and the wheelhouse checks
that stop setup.sh and wheelhouse.sh with one line before they install or download anything.
The install itself is checked by `make wheelhouse-check` (minutes, network)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
import check_cuda  # noqa: E402
from check_cuda import CudaMismatch, check, nvcc_release  # noqa: E402

NVCC_12_8 = """nvcc: NVIDIA (R) Cuda compiler driver
Copyright (c) 2005-2025 NVIDIA Corporation
Built on Fri_Feb_21_20:23:50_PST_2025
Cuda compilation tools, release 12.8, V12.8.93
Build cuda_12.8.r12.8/compiler.35583870_0"""
NVCC_13_0 = NVCC_12_8.replace("release 12.8, V12.8.93", "release 13.0, V13.0.88")


def test_nvcc_release_read_from_its_output():
    assert nvcc_release(NVCC_12_8) == "12.8"
    assert nvcc_release(NVCC_13_0) == "13.0"
    assert nvcc_release("release 12.8") == "12.8"
    assert nvcc_release("command not found") is None


def test_major_versions_that_differ_stop_with_both_and_what_to_do():
    with pytest.raises(CudaMismatch) as e:
        check(NVCC_12_8, "2.13.0", "13.0", force_cuda="1")
    msg = str(e.value)
    assert "\n" not in msg
    assert "nvcc is CUDA 12.8 but torch 2.13.0 is built for CUDA 13.0" in msg
    assert "TORCH_INDEX_URL=https://download.pytorch.org/whl/cu129" in msg  # a build of docker/cuda-builds.yaml
    assert "cu128" not in msg  # torch 2.13.0 has no CUDA 12.8 build
    with pytest.raises(CudaMismatch, match="nvcc is CUDA 13.0 but torch 2.13.0\\+cu128 is built for CUDA 12.8"):
        check(NVCC_13_0, "2.13.0+cu128", "12.8", force_cuda=None)


def test_same_major_builds_cuda_ops():
    assert "for CUDA" in check(NVCC_12_8, "2.13.0+cu128", "12.8", force_cuda="1")
    assert "for CUDA" in check("release 12.4", "2.13.0+cu128", "12.8", force_cuda="1")  # minor may differ


def test_cpu_torch():
    # nvcc present, nothing forced: CPU ops (this is the dev machine: nvcc 13.0, CPU torch).
    assert "for CPU" in check(NVCC_13_0, "2.13.0+cpu", None, force_cuda=None)
    assert "for CPU" in check("", "2.13.0+cpu", None, force_cuda=None)
    assert "for CPU" in check(None, "2.13.0+cpu", None, force_cuda="0")
    with pytest.raises(CudaMismatch, match="FORCE_CUDA=1 but torch 2.13.0\\+cpu is a CPU build \\(nvcc is CUDA 12.8\\)"):
        check(NVCC_12_8, "2.13.0+cpu", None, force_cuda="1")


def test_forced_cuda_without_nvcc_or_unreadable_nvcc():
    with pytest.raises(CudaMismatch, match="FORCE_CUDA=1 but no nvcc was found"):
        check("", "2.13.0", "13.0", force_cuda="1")
    with pytest.raises(CudaMismatch, match="cannot read a CUDA version"):
        check("nvcc: something else", "2.13.0", "13.0", force_cuda="1")


def _check_cuda_cli(*args: str, force_cuda: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "FORCE_CUDA"}
    if force_cuda is not None:
        env["FORCE_CUDA"] = force_cuda
    return subprocess.run([sys.executable, check_cuda.__file__, *args], env=env, capture_output=True, text=True,
                          timeout=60)


def test_cli_one_line_and_exit_status():
    bad = _check_cuda_cli(NVCC_12_8, "--torch-version", "2.13.0", "--torch-cuda", "13.0", force_cuda="1")
    assert bad.returncode == 1
    assert bad.stdout == ""
    assert bad.stderr.count("\n") == 1
    assert bad.stderr.startswith("setup: nvcc is CUDA 12.8 but torch 2.13.0 is built for CUDA 13.0: ")
    cpu = _check_cuda_cli(NVCC_12_8, "--torch-version", "2.13.0+cpu", "--torch-cuda", "none", force_cuda="1")
    assert cpu.returncode == 1 and "is a CPU build" in cpu.stderr
    ok = _check_cuda_cli("", "--torch-version", "2.13.0+cpu", "--torch-cuda", "none")
    assert ok.returncode == 0 and ok.stdout.startswith("setup: mmcv ops for CPU")


def _script(name: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    """Run scripts/<name> with a venv and cache under tmp_path (never .venv) and ``env`` on top."""
    full = {k: v for k, v in os.environ.items() if k not in ("WHEELHOUSE", "SYSTEM_TORCH", "TORCH", "TORCH_INDEX_URL")}
    full.update(VENV=str(tmp_path / "venv"), RAY_APP_CACHE=str(tmp_path / "cache"), **env)
    return subprocess.run(["bash", str(REPO / "scripts" / name)], env=full, capture_output=True, text=True,
                          timeout=120)


def _manifest(folder: Path, **fields: str) -> Path:
    pins = subprocess.run(f"cat {REPO}/requirements.txt {REPO}/constraints.txt | sha256sum", shell=True,
                          capture_output=True, text=True, check=True).stdout.split()[0]
    values = {"python": f"{sys.version_info[0]}.{sys.version_info[1]}", "platform": "manylinux_2_35_x86_64",
              "torch_source": "default", "torch": "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl",
              "torch_cuda": "none", "pins": pins, **fields}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ray_app-wheelhouse.txt").write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    return folder


@pytest.mark.parametrize("case, expected", [
    ("missing", "is not a folder"),
    ("no manifest", "has no ray_app-wheelhouse.txt"),
    ("other pins", "was made for other pins"),
    ("other python", "was made for python 3.9"),
    ("no torch", "has no torch (TORCH=none)"),
])
def test_setup_stops_on_a_wheelhouse_it_cannot_use(tmp_path, case, expected):
    folder = tmp_path / "wheelhouse"
    if case == "no manifest":
        folder.mkdir()
    elif case == "other pins":
        _manifest(folder, pins="0" * 64)
    elif case == "other python":
        _manifest(folder, python="3.9")
    elif case == "no torch":
        _manifest(folder, torch="none")
    # PYTHON: the interpreter this venv was made from (setup.sh looks for a torch there).
    base = Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    has_torch = subprocess.run([str(base), "-c", "import torch"], capture_output=True).returncode == 0
    if case == "no torch" and has_torch:
        pytest.skip("the base python has torch: setup.sh would reuse it")
    run = _script("setup.sh", tmp_path, WHEELHOUSE=str(folder), PYTHON=str(base))
    assert run.returncode == 1
    assert expected in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert not (tmp_path / "venv").exists()  # stopped before making anything


def test_setup_refuses_a_system_torch_it_does_not_have(tmp_path):
    base = Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    run = _script("setup.sh", tmp_path, SYSTEM_TORCH="1.0.0", PYTHON=str(base))
    assert run.returncode == 1
    assert run.stderr.startswith("setup: SYSTEM_TORCH=1.0.0 but ")
    assert not (tmp_path / "venv").exists()


def test_wheelhouse_refuses_to_mix_two_targets(tmp_path):
    folder = _manifest(tmp_path / "wheelhouse", platform="manylinux_2_28_x86_64")
    run = _script("wheelhouse.sh", tmp_path, WHEELHOUSE=str(folder), PLATFORM="manylinux_2_35_x86_64", PYTHON="3.11",
                  TORCH="none")
    assert run.returncode == 1
    assert "was made for python=3.11 platform=manylinux_2_28_x86_64 torch_source=default, not " in run.stderr
    assert "platform=manylinux_2_35_x86_64 torch_source=none" in run.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["ray_app-wheelhouse.txt"]  # nothing downloaded
