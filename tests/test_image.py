"""The Dockerfile agrees with the torch pin and with docker/cuda-builds.yaml (no Docker needed).

Each CUDA build of the table is a stage of the Dockerfile: its nvidia/cuda base image must have
the CUDA major.minor torch was built with (torch's extension builder refuses to compile mmcv's
ops across CUDA majors), it must take torch from the build's index, and its
TORCH_CUDA_ARCH_LIST may only name architectures that CUDA's nvcc compiles.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
TABLE = REPO / "docker" / "cuda-builds.yaml"
REQUIREMENTS = REPO / "requirements.txt"


@dataclass
class Stage:
    """One ``FROM`` of a Dockerfile: its base (an image, or an earlier stage) and its ENV."""

    base: str
    name: str | None
    env: dict[str, str] = field(default_factory=dict)


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments left out."""
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    found = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def expand(value: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), value)


def parse(text: str) -> tuple[dict[str, str], list[Stage]]:
    """The global ARG defaults (before the first FROM) and the stages."""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for word, rest in instructions(text):
        if word == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name] = default.strip('"')
        elif word == "FROM":
            parts = [p for p in rest.split() if not p.startswith("--")]
            stages.append(Stage(expand(parts[0], args), parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None))
        elif word == "ENV" and stages:
            for pair in shlex.split(rest):
                key, _, value = pair.partition("=")
                stages[-1].env[key] = value
    return args, stages


def cuda_of_image(image: str) -> str | None:
    """``nvidia/cuda:13.0.3-cudnn-devel-ubuntu22.04`` -> ``13.0``."""
    found = re.fullmatch(r"(?:[\w.-]+/)*cuda:(\d+)\.(\d+)(?:\.\d+)?-.*", image)
    return f"{found.group(1)}.{found.group(2)}" if found else None


def version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text))


def problems(dockerfile: str, requirements: str, table: dict) -> list[str]:
    """Every way the Dockerfile, the torch pin and the table disagree (empty: they agree)."""
    found = []
    pin = re.search(r"^torch==(\S+)", requirements, re.MULTILINE)
    if not pin or pin.group(1) != str(table["torch"]):
        found.append(f"requirements.txt pins torch {pin and pin.group(1)}, docker/cuda-builds.yaml is for "
                     f"torch {table['torch']}")
    args, stages = parse(dockerfile)
    names = {s.name for s in stages if s.name}
    by_index = {build["index"]: key for key, build in table["builds"].items()}
    seen = set()
    for stage in stages:
        if stage.base in names:
            continue  # FROM an earlier stage: that stage's CUDA
        index = stage.env.get("TORCH_INDEX_URL") or "pypi"
        key = by_index.get(index)
        if key is None:
            found.append(f"stage {stage.name}: torch from {index}, which no build of docker/cuda-builds.yaml uses")
            continue
        seen.add(key)
        build = table["builds"][key]
        if stage.name and stage.name in table["builds"] and stage.name != key:
            found.append(f"stage {stage.name} takes torch from {index}, the index of build {key}")
        cuda = cuda_of_image(stage.base)
        if cuda != build["cuda"]:
            found.append(f"{key}: base image {stage.base} has CUDA {cuda}, torch's {key} build has CUDA {build['cuda']}")
        oldest = table["oldest_arch"][build["cuda"].split(".")[0]]
        arch_list = stage.env.get("TORCH_CUDA_ARCH_LIST", "")
        if not arch_list:
            found.append(f"{key}: no TORCH_CUDA_ARCH_LIST")
        for arch in filter(None, re.split(r"[;\s]+", arch_list)):
            number = re.sub(r"a?(\+PTX)?$", "", arch)
            if version(number) < version(oldest):
                found.append(f"{key}: TORCH_CUDA_ARCH_LIST has {arch}, CUDA {build['cuda']}'s nvcc compiles "
                             f"{oldest} and up")
            needs = table["arch_needs_cuda"].get(number)
            if needs and version(build["cuda"]) < version(needs):
                found.append(f"{key}: TORCH_CUDA_ARCH_LIST has {arch}, which needs CUDA {needs}")
    for key in sorted(set(table["builds"]) - seen):
        found.append(f"no Dockerfile stage builds {key}")
    default = expand(stages[-1].base, args) if stages else None
    if default not in table["builds"] or default != table["default"]:
        found.append(f"the default build is {default}, docker/cuda-builds.yaml says {table['default']}")
    if not any("FORCE_CUDA" in s.env and s.env["FORCE_CUDA"] == "1" for s in stages):
        found.append("FORCE_CUDA=1 is not set: mmcv would be built without its CUDA ops")
    return found


def current() -> tuple[str, str, dict]:
    return DOCKERFILE.read_text(), REQUIREMENTS.read_text(), yaml.safe_load(TABLE.read_text())


def test_dockerfile_agrees_with_the_torch_pin_and_the_table():
    assert problems(*current()) == []


#: the image before docker/cuda-builds.yaml: PyPI's torch (CUDA 13.0) on a CUDA 12.8 base, 7.0 in the arch list
OLD_DOCKERFILE = """
ARG BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-devel-ubuntu22.04
FROM ${BASE_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 PYTHONUNBUFFERED=1 \\
    FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="7.0;7.5;8.0;8.6;8.9;9.0"
RUN PYTHON=python3.11 bash scripts/setup.sh
"""


def _edit(old: str, new: str, what: str = "dockerfile"):
    def apply(dockerfile: str, requirements: str, table: dict):
        if what == "requirements":
            return dockerfile, requirements.replace(old, new), table
        assert old in dockerfile, old
        return dockerfile.replace(old, new, 1), requirements, table
    return apply


@pytest.mark.parametrize(("change", "expected"), [
    (lambda d, r, t: (OLD_DOCKERFILE, r, t), "cu130: base image nvidia/cuda:12.8.1-cudnn-devel-ubuntu22.04 has CUDA 12.8"),
    (lambda d, r, t: (OLD_DOCKERFILE, r, t), "cu130: TORCH_CUDA_ARCH_LIST has 7.0"),
    (_edit("cuda:13.0.3-", "cuda:12.8.1-"), "cu130: base image nvidia/cuda:12.8.1-cudnn-devel-ubuntu22.04 has CUDA 12.8"),
    (_edit('TORCH_CUDA_ARCH_LIST="7.5;', 'TORCH_CUDA_ARCH_LIST="7.0;7.5;'), "cu130: TORCH_CUDA_ARCH_LIST has 7.0"),
    (_edit('"7.0;7.5;8.0;8.6;8.9;9.0"', '"7.0;7.5;8.0;8.6;8.9;9.0;12.0"'), "cu126: TORCH_CUDA_ARCH_LIST has 12.0, which needs CUDA 12.8"),
    (_edit("whl/cu126 ", "whl/cu129 "), "stage cu126 takes torch from https://download.pytorch.org/whl/cu129"),
    (_edit("torch==2.13.0", "torch==2.14.0", "requirements"), "requirements.txt pins torch 2.14.0"),
    (_edit("ARG CUDA_BUILD=cu130", "ARG CUDA_BUILD=cu126"), "the default build is cu126"),
    (_edit(" FORCE_CUDA=1", ""), "FORCE_CUDA=1 is not set"),
], ids=["old-dockerfile-cuda", "old-dockerfile-arch", "base-image", "arch-below", "arch-above", "index", "torch-pin",
        "default", "force-cuda"])
def test_a_disagreement_is_found(change, expected):
    found = problems(*change(*current()))
    assert any(p.startswith(expected) for p in found), found


def test_readme_names_each_build_and_its_driver():
    """The README says how to build each variant and which driver it needs, from the same table."""
    readme = (REPO / "README.md").read_text()
    table = yaml.safe_load(TABLE.read_text())
    for key, build in table["builds"].items():
        assert f"CUDA_BUILD={key}" in readme or key == table["default"], key
        assert f"{build['driver']}+" in readme, (key, build["driver"])


def test_the_image_bakes_coco_weights_from_the_metafiles():
    """COCO checkpoints come from the metafile-driven command, chosen by COCO_MODELS (default all)."""
    text = DOCKERFILE.read_text()
    assert "COCO_WEIGHTS" not in text
    assert re.search(r"^ARG COCO_MODELS=all$", text, re.MULTILINE)
    assert 'python -m ray_app.model_config.weights download --models "${COCO_MODELS}" --to /weights' in text


def test_ray_in_the_image_never_reports_usage():
    """``ray start`` reports usage statistics to Ray's makers by default (``ray.init`` of a
    release does not: ``tests/test_ray_session.py``). Operators start Ray nodes from this image
    too (KubeRay pods, ``ray up``), and the executor never reaches the network at run time:
    the image turns the reports off for every process in it."""
    _, stages = parse(DOCKERFILE.read_text())
    assert stages[-1].env.get("RAY_USAGE_STATS_ENABLED") == "0", stages[-1].env
