"""The cluster definitions in cluster/ agree with the image, Ray and each other (no Ray started)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parents[1]
CLUSTER = ROOT / "cluster"
DOCKERFILE = ROOT / "Dockerfile"


def _load(name: str) -> dict:
    data = yaml.safe_load((CLUSTER / name).read_text())
    assert isinstance(data, dict), f"{name} is not a YAML mapping"
    return data


@pytest.fixture(scope="module")
def kuberay() -> dict:
    return _load("kuberay-raycluster.yaml")


@pytest.fixture(scope="module")
def rayup() -> dict:
    return _load("ray-up.yaml")


@pytest.fixture(scope="module")
def readme() -> str:
    return (CLUSTER / "README.md").read_text()


def _dockerfile_image_tag() -> str:
    """The tag of `docker build -t <tag> .` in the Dockerfile's header comment."""
    for line in DOCKERFILE.read_text().splitlines():
        if not line.startswith("#"):
            break
        match = re.search(r"docker build\s+-t\s+(\S+)\s+\.\s*$", line)
        if match:
            return match.group(1)
    raise AssertionError("no `docker build -t <tag> .` line in the Dockerfile's header comment")


def _dockerfile_uid() -> int:
    match = re.search(r"useradd\b[^\n]*--uid\s+(\d+)", DOCKERFILE.read_text())
    assert match, "no `useradd --uid N` in the Dockerfile"
    return int(match.group(1))


def _same_image(image: str, tag: str) -> bool:
    """`image` is `tag`, possibly with a registry/namespace prefix an operator added."""
    return image == tag or image.endswith("/" + tag)


def _pod_specs(kuberay: dict) -> list[tuple[str, dict]]:
    spec = kuberay["spec"]
    pods = [("head", spec["headGroupSpec"]["template"]["spec"])]
    pods += [(group["groupName"], group["template"]["spec"]) for group in spec["workerGroupSpecs"]]
    return pods


def _containers(kuberay: dict) -> list[tuple[str, dict]]:
    return [(group, c) for group, pod in _pod_specs(kuberay) for c in pod["containers"]]


def _worker_groups(kuberay: dict) -> list[dict]:
    groups = kuberay["spec"]["workerGroupSpecs"]
    assert groups, "the RayCluster has no worker group"
    return groups


def _gpu_limit(group: dict) -> int:
    (container,) = [c for c in group["template"]["spec"]["containers"]]
    gpus = container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu")
    assert gpus is not None, f"worker group {group['groupName']} has no nvidia.com/gpu limit"
    assert isinstance(gpus, int) and not isinstance(gpus, bool) and gpus > 0, \
        f"worker group {group['groupName']}: nvidia.com/gpu limit {gpus!r} is not a positive integer"
    return gpus


def _gpu_node_types(rayup: dict) -> dict[str, dict]:
    types = {name: t for name, t in rayup["available_node_types"].items() if t["resources"].get("GPU", 0)}
    assert types, "ray-up.yaml has no node type with GPUs"
    return types


def test_both_files_are_the_expected_kinds(kuberay, rayup):
    assert kuberay["apiVersion"] == "ray.io/v1"
    assert kuberay["kind"] == "RayCluster"
    assert rayup["cluster_name"] == "ray-app"
    assert rayup["provider"]["type"]
    assert rayup["head_node_type"] in rayup["available_node_types"]


def test_ray_up_config_matches_the_autoscaler_schema(rayup):
    jsonschema = pytest.importorskip("jsonschema")
    spec = importlib.util.find_spec("ray")  # locates the package without importing Ray
    assert spec is not None and spec.origin
    schema = json.loads((Path(spec.origin).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(rayup, schema)


def test_images_are_the_dockerfile_image(kuberay, rayup):
    tag = _dockerfile_image_tag()
    images = [(f"kuberay {group}/{c['name']}", c["image"]) for group, c in _containers(kuberay)]
    images.append(("ray-up docker.image", rayup["docker"]["image"]))
    for key in ("head_image", "worker_image"):
        if key in rayup["docker"]:
            images.append((f"ray-up docker.{key}", rayup["docker"][key]))
    wrong = [(where, image) for where, image in images if not _same_image(image, tag)]
    assert not wrong, f"images other than the Dockerfile's {tag!r}: {wrong}"


def test_ray_version_is_the_installed_ray(kuberay):
    assert kuberay["spec"]["rayVersion"] == importlib.metadata.version("ray")


def test_head_exposes_gcs_and_dashboard(kuberay, rayup):
    head = kuberay["spec"]["headGroupSpec"]
    (container,) = head["template"]["spec"]["containers"]
    ports = {p["containerPort"] for p in container["ports"]}
    assert {6379, 8265} <= ports
    assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    assert head["rayStartParams"]["num-cpus"] == "0"
    # ray up: the head's GCS port is the one the workers join on, and the same as KubeRay's.
    head_cmd = " ".join(rayup["head_start_ray_commands"])
    worker_cmd = " ".join(rayup["worker_start_ray_commands"])
    gcs = re.search(r"ray start --head\b.*?--port=(\d+)", head_cmd)
    joined = re.search(r"ray start --address=\$RAY_HEAD_IP:(\d+)", worker_cmd)
    assert gcs and joined, "ray up start commands lack --head --port=N / --address=$RAY_HEAD_IP:N"
    assert int(gcs.group(1)) == int(joined.group(1)) == 6379
    assert "--dashboard-host=0.0.0.0" in head_cmd
    assert rayup["available_node_types"][rayup["head_node_type"]]["resources"] == {"CPU": 0}


def test_gpu_workers_request_gpus_consistently(kuberay, rayup):
    per_pod = set()
    for group in _worker_groups(kuberay):
        gpus = _gpu_limit(group)
        num_gpus = group.get("rayStartParams", {}).get("num-gpus")
        if num_gpus is not None:  # absent: KubeRay derives it from the limit
            assert int(num_gpus) == gpus, f"{group['groupName']}: num-gpus {num_gpus} != GPU limit {gpus}"
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        per_pod.add(gpus)
    per_node = {name: t["resources"]["GPU"] for name, t in _gpu_node_types(rayup).items()}
    assert set(per_node.values()) == per_pod, f"ray up GPUs per node {per_node} != KubeRay GPUs per pod {per_pod}"


def test_containers_run_as_the_image_user(kuberay, rayup):
    uid = _dockerfile_uid()
    for group, container in _containers(kuberay):
        ctx = container.get("securityContext", {})
        assert ctx.get("runAsUser") == uid, f"{group}/{container['name']} runAsUser {ctx.get('runAsUser')} != {uid}"
        assert ctx.get("runAsNonRoot") is True, f"{group}/{container['name']} lacks runAsNonRoot: true"
    autoscaler = kuberay["spec"].get("autoscalerOptions", {}).get("securityContext")
    if autoscaler is not None:
        assert autoscaler.get("runAsUser") == uid
    # ray up runs the image's default user, which must be that uid's user.
    user = re.findall(r"^USER\s+(\S+)", DOCKERFILE.read_text(), flags=re.M)
    useradd = re.search(r"useradd\b[^\n]*--uid\s+\d+\s+(\S+)", DOCKERFILE.read_text())
    assert user and useradd and user[-1] == useradd.group(1)
    docker = rayup["docker"]
    flags = " ".join(docker.get("run_options", []) + docker.get("head_run_options", [])
                     + docker.get("worker_run_options", []))
    override = re.search(r"(?:--user[ =]|-u )(\S+)", flags)
    assert override is None or override.group(1).split(":")[0] in (str(uid), useradd.group(1)), \
        f"ray up overrides the container user: {override.group(0)}"


def test_ray_up_docker_settings(rayup):
    docker = rayup["docker"]
    assert docker["container_name"] == "ray_app"
    assert "--ulimit nofile=65536:65536" in docker["run_options"]
    assert any(re.fullmatch(r"--shm-size=\d+[gG]", o) for o in docker["run_options"])
    for name, node_type in _gpu_node_types(rayup).items():
        assert node_type["min_workers"] <= node_type["max_workers"] <= rayup["max_workers"], name


def test_every_worker_pod_has_a_memory_backed_shm(kuberay):
    for group, pod in _pod_specs(kuberay):
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        (container,) = pod["containers"]
        mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
        assert "/dev/shm" in mounts, f"{group} mounts nothing at /dev/shm"
        assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory", group


def test_readme_mentions_ports_and_hyperparameters(kuberay, rayup, readme):
    ports = {p["containerPort"] for _, c in _containers(kuberay) for p in c.get("ports", [])}
    commands = " ".join(rayup["head_start_ray_commands"] + rayup["worker_start_ray_commands"])
    ports |= {int(p) for p in re.findall(r"(?:--port=|:)(\d{2,5})\b", commands)}
    assert {6379, 8265} <= ports
    missing = [p for p in sorted(ports) if not re.search(rf"(?<!\d){p}(?!\d)", readme)]
    assert not missing, f"cluster/README.md does not mention ports {missing}"
    for name in ("ray_address", "ray_auth_token", "ray_storage_path", "gpu_id", "cpu_num_workers"):
        assert f"`{name}" in readme, f"cluster/README.md does not mention {name}"


def test_both_clusters_require_a_token(kuberay, rayup, readme):
    """Token authentication is on in both files, every node of the `ray up` cluster reads the
    same token file, and the README says how to make, hand over and protect it."""
    assert kuberay["spec"]["authOptions"]["mode"] == "token"
    assert rayup["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"
    starts = [c for c in rayup["head_start_ray_commands"] + rayup["worker_start_ray_commands"] if "ray start" in c]
    assert len(starts) == 2 and all("export RAY_AUTH_MODE=token;" in c.split("ray start")[0] for c in starts), starts
    for needle in ("ray get-auth-token --generate", "authOptions", "`ray_auth_token", "300301",
                   "closed to every other machine"):
        assert needle in readme, f"cluster/README.md does not say {needle!r}"
