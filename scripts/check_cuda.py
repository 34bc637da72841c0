"""Before mmcv's ops are compiled: do nvcc and torch agree on CUDA?

scripts/setup.sh runs this with the venv's python, giving it what ``nvcc --version`` printed
(an empty string when no nvcc was found). A CUDA extension compiled by an nvcc whose major
version differs from the one torch was built with fails late and obscurely (or loads and
crashes at the first kernel), so we stop before the ~10 minute build with one line that says
both versions and what to do. Exit 0 when the build may go on (a note on stdout), 1 with the
one line on stderr when it may not.

    python scripts/check_cuda.py "$(nvcc --version)"          # torch: the one this python imports
    python scripts/check_cuda.py "release 12.8" --torch-version 2.13.0 --torch-cuda 13.0
"""

from __future__ import annotations

import argparse
import os
import re
import sys

INDEX = "https://download.pytorch.org/whl"
#: the torch builds this project supports, one per Dockerfile stage (the builds' one table)
BUILDS_TABLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docker", "cuda-builds.yaml")


def builds_for(major: str) -> list[str]:
    """The table's builds for a CUDA major (``cu129``, ``cu126`` for 12), read without PyYAML
    (setup.sh runs this before the stack is installed); none when the table is not there."""
    try:
        with open(BUILDS_TABLE) as table:
            return re.findall(rf"^\s+(cu{major}\d)\s*:", table.read(), flags=re.M)
    except OSError:
        return []


def suggest(nvcc: str) -> str:
    """A torch index for ``nvcc``'s CUDA major: a build of the table (torch publishes no build
    for every minor version: torch 2.13.0 has cu126 and cu129 but no cu128)."""
    builds = builds_for(nvcc.split(".")[0])
    return " or ".join(f"TORCH_INDEX_URL={INDEX}/{b}" for b in builds) or f"TORCH_INDEX_URL={INDEX}/cu{nvcc.replace('.', '')}"


class CudaMismatch(Exception):
    """nvcc and torch cannot build mmcv's ops together; the message is the one line to show."""


def nvcc_release(nvcc_output: str) -> str | None:
    """The CUDA version in ``nvcc --version``'s output ("... release 12.8, V12.8.93" -> "12.8")."""
    m = re.search(r"release (\d+)\.(\d+)", nvcc_output)
    return f"{m.group(1)}.{m.group(2)}" if m else None


def check(nvcc_output: str | None, torch_version: str, torch_cuda: str | None,
          force_cuda: str | None = None) -> str:
    """What mmcv's ops will be built for (a note), or ``CudaMismatch`` with the one line.

    ``nvcc_output``: ``nvcc --version``'s output, empty or None when there is no nvcc;
    ``torch_cuda``: ``torch.version.cuda`` (None for a CPU build); ``force_cuda``: $FORCE_CUDA.
    """
    forced = force_cuda == "1"
    nvcc_output = (nvcc_output or "").strip()
    if not nvcc_output:
        if forced:
            raise CudaMismatch("FORCE_CUDA=1 but no nvcc was found (PATH, $CUDA_HOME/bin, /usr/local/cuda/bin): "
                               "use a CUDA -devel image or set CUDA_HOME, or unset FORCE_CUDA for CPU-only ops")
        return f"mmcv ops for CPU (no nvcc; torch {torch_version})"
    nvcc = nvcc_release(nvcc_output)
    if nvcc is None:
        first = nvcc_output.splitlines()[-1][:80]
        raise CudaMismatch(f"cannot read a CUDA version from nvcc --version ({first!r}): check the nvcc on PATH or CUDA_HOME")
    suggestion = suggest(nvcc)
    if not torch_cuda:
        if forced:
            raise CudaMismatch(f"FORCE_CUDA=1 but torch {torch_version} is a CPU build (nvcc is CUDA {nvcc}): "
                               f"install a CUDA torch, e.g. {suggestion}, or unset FORCE_CUDA for CPU-only ops")
        return f"mmcv ops for CPU (torch {torch_version} is a CPU build; nvcc {nvcc} unused)"
    if nvcc.split(".")[0] != torch_cuda.split(".")[0]:
        raise CudaMismatch(f"nvcc is CUDA {nvcc} but torch {torch_version} is built for CUDA {torch_cuda}: "
                           f"use a base image with CUDA {torch_cuda.split('.')[0]}.x, or a torch for CUDA {nvcc.split('.')[0]}.x, "
                           f"e.g. {suggestion}")
    return f"mmcv ops for CUDA (nvcc {nvcc}, torch {torch_version} built for CUDA {torch_cuda})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("nvcc_output", help="what `nvcc --version` printed; empty when there is no nvcc")
    parser.add_argument("--torch-version", help="default: torch.__version__ of this python")
    parser.add_argument("--torch-cuda", help="default: torch.version.cuda of this python; 'none' for a CPU build")
    args = parser.parse_args(argv)
    if args.torch_version is None or args.torch_cuda is None:
        import torch  # only here: the tests pass both and need no torch

        args.torch_version = args.torch_version or torch.__version__
        args.torch_cuda = args.torch_cuda or torch.version.cuda or "none"
    try:
        note = check(args.nvcc_output, args.torch_version, None if args.torch_cuda == "none" else args.torch_cuda,
                     os.environ.get("FORCE_CUDA"))
    except CudaMismatch as e:
        print(f"setup: {e}", file=sys.stderr)
        return 1
    print(f"setup: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
