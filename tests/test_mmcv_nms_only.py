"""``bench/mmcv_nms_only.py``: the stubs that stand for the CUDA launchers a GPU check's mmcv
leaves out. The build itself needs nvcc and minutes; here the mechanism is checked: a stub
named by a linker symbol alone is called through the real C++ signature and raises."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import mmcv_nms_only  # noqa: E402

CALLER = r'''
#include <stdexcept>
#include <string>
#include <vector>
std::vector<float> LaunchSomethingCUDAKernelLauncher(const std::vector<float> &input, int width, float scale);
extern "C" int call(char *message, int size) {
  try {
    LaunchSomethingCUDAKernelLauncher(std::vector<float>(3, 1.0f), 4, 0.5f);
  } catch (const std::runtime_error &error) {
    std::string text = error.what();
    text.copy(message, size - 1);
    return 1;
  }
  return 0;
}
'''


@pytest.mark.skipif(not shutil.which("g++") or not shutil.which("nm"), reason="needs g++ and nm")
def test_a_stub_named_by_its_symbol_raises_when_called(tmp_path):
    (tmp_path / "caller.cpp").write_text(CALLER)
    subprocess.run(["g++", "-shared", "-fPIC", "-o", str(tmp_path / "caller.so"), str(tmp_path / "caller.cpp")],
                   check=True)
    (needed,) = mmcv_nms_only.missing_symbols(tmp_path / "caller.so", [])  # what a trimmed build lacks
    assert mmcv_nms_only.demangle([needed])[0].startswith("LaunchSomethingCUDAKernelLauncher(")
    (tmp_path / "stubs.cpp").write_text(mmcv_nms_only.stubs_source([needed]))
    subprocess.run(["g++", "-shared", "-fPIC", "-o", str(tmp_path / "both.so"), str(tmp_path / "caller.cpp"),
                    str(tmp_path / "stubs.cpp")], check=True)
    assert mmcv_nms_only.missing_symbols(tmp_path / "both.so", []) == []
    message = ctypes.create_string_buffer(300)
    assert ctypes.CDLL(str(tmp_path / "both.so")).call(message, 300) == 1
    assert message.value.decode().startswith("LaunchSomethingCUDAKernelLauncher has no CUDA kernel in this build")


def test_the_committed_symbols_are_global_cxx_functions():
    symbols = mmcv_nms_only.SYMBOLS.read_text().split()
    assert len(symbols) == len(set(symbols)) > 90
    assert all(s.startswith("_Z") and s[2].isdigit() for s in symbols)
    names = mmcv_nms_only.demangle(symbols)
    assert not any(name.startswith("nms_cuda(") or "NMSCUDAKernelLauncher(" in name for name in names)  # kept
