"""The CPUs and GPUs this container has, and the device a model runs on.

The driver counts GPUs through NVML (the NVIDIA driver's management library, Ray's own
binding), which neither imports torch nor initialises CUDA: it used to do both, one after the
other, before it asked Ray to start, and a task that asks for a GPU now imports torch only
in the thread that runs beside Ray's start. Whether torch can use the GPU is checked where a
model runs on it (a model actor, a Ray Train worker): there an unusable GPU is 300102 with
its reason, where it used to be a silent run on the CPU.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ray_app.protocol.errors import ErrorCode, YmirError

#: where the image's CUDA build is chosen (``--build-arg CUDA_BUILD``): the answer to a driver
#: too old for the torch it has (``TORCH_INDEX_URL`` for a wheelhouse: docs/install.md)
CUDA_BUILD_DOC = "README, 'The image': CUDA_BUILD"


def container_cpus() -> int:
    """The CPUs this container may use, for the local Ray (or the node it joins as): those it
    may run on (``docker run --cpuset-cpus``, a ``taskset``), at most its CPU quota (``--cpus``,
    a Kubernetes limit: read from the cgroup by Ray's own detection, rounded down), at least 1.

    ``os.cpu_count()``, which Ray used to be given, counts the host's: in a container limited
    to 4 of 64 cores Ray had 64 CPUs, a CPU model actor ran 64 batches at once and a Train
    worker 64 torch threads, on 4 cores."""
    from ray._private.utils import get_num_cpus

    quota = int(get_num_cpus(override_docker_cpu_warning=True))
    return max(1, min(len(os.sched_getaffinity(0)), quota))


@contextmanager
def _nvml() -> Iterator[Any]:
    """Ray's NVML binding, initialised for the block; ``None`` when NVML cannot be used (no
    NVIDIA driver library in the container)."""
    import ray._private.thirdparty.pynvml as pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        yield None
        return
    try:
        yield pynvml
    finally:
        pynvml.nvmlShutdown()


def nvml_gpus() -> int | None:
    """How many GPUs this process may use, from NVML: the devices NVML sees, as many as
    ``CUDA_VISIBLE_DEVICES`` lists when it is set (as CUDA counts them); ``None`` without NVML."""
    with _nvml() as nvml:
        if nvml is None:
            return None
        count = nvml.nvmlDeviceGetCount()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        count = min(count, len([v for v in visible.split(",") if v.strip()]))
    return count


def container_gpus() -> int:
    """The GPUs this container has: NVML's count (no torch import and no CUDA initialisation
    on the driver before Ray starts), else, without NVML, torch's. Whether torch can use them
    is checked where a model runs (:func:`model_device`)."""
    count = nvml_gpus()
    if count is None:
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return count


def driver_cuda() -> tuple[str, str] | None:
    """The NVIDIA driver's version and the newest CUDA it runs (``("535.104.05", "12.2")``),
    from NVML; ``None`` without one."""
    with _nvml() as nvml:
        if nvml is None:
            return None
        driver = nvml.nvmlSystemGetDriverVersion()
        cuda = nvml.nvmlSystemGetCudaDriverVersion()  # e.g. 12020
    driver = driver.decode() if isinstance(driver, bytes) else str(driver)
    return driver, f"{cuda // 1000}.{cuda % 1000 // 10}"


def why_no_cuda(torch_version: str, torch_cuda: str | None, driver: tuple[str, str] | None) -> str:
    """Why torch cannot use a GPU, in words an operator can act on: a CPU-only torch, no
    driver in the container, or a driver older than the CUDA that torch was built for (a
    driver runs every CUDA of its own major version and older, so only the majors count)."""
    if torch_cuda is None:
        return f"this torch ({torch_version}) is a CPU-only build"
    if driver is None:
        return "no NVIDIA driver is visible in the container (is it run with --gpus?)"
    version, newest = driver
    if int(newest.split(".")[0]) < int(torch_cuda.split(".")[0]):
        return (f"the host's NVIDIA driver {version} runs CUDA up to {newest}, but this image's torch {torch_version} "
                f"is built for CUDA {torch_cuda}: update the driver, or use a build for CUDA "
                f"{newest.split('.')[0]} ({CUDA_BUILD_DOC})")
    return f"torch {torch_version} (CUDA {torch_cuda}) cannot initialise CUDA with driver {version}: see the warning above"


def model_device(use_gpu: bool) -> str:
    """``cuda:0`` (the GPU Ray gave this process) when a GPU is asked for, else ``cpu``. A GPU
    asked for that torch cannot use is 300102 with the reason (:func:`why_no_cuda`); it used
    to fall back to the CPU without a word, tens of times slower."""
    import torch

    if not use_gpu:
        return "cpu"
    if not torch.cuda.is_available():
        raise YmirError(ErrorCode.NO_GPU, "a GPU was asked for but torch cannot use one here: "
                        + why_no_cuda(torch.__version__, torch.version.cuda, driver_cuda()))
    return "cuda:0"
