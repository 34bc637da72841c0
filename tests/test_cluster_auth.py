"""Joining a Ray cluster that requires token authentication (Ray's default since 2.52 for
clusters started with ``RAY_AUTH_MODE=token``): a real cluster of a head and two worker nodes
on this machine, started with a generated token in a temporary ``HOME`` so that nothing
reaches this machine's ``~/.ray``; the executor given the token by the hyperparameter
``ray_auth_token`` or by ``RAY_AUTH_TOKEN`` in its environment."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from conftest import TRAIN_CONFIG, Run, best_stage_files, run_entry
from ray_app.data.sample import write_task
from test_cluster import assert_same_outputs, inference_task

pytestmark = pytest.mark.slow

#: a head and worker nodes in a process of their own, with the environment it was given;
#: prints the address, then runs until its standard input closes
CLUSTER_SCRIPT = """
import sys
from ray.cluster_utils import Cluster
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": int(sys.argv[1])})
for cpus in sys.argv[2:]:
    cluster.add_node(num_cpus=int(cpus))
cluster.wait_for_nodes()
print(cluster.address, flush=True)
sys.stdin.read()
cluster.shutdown()
"""


@dataclass
class AuthCluster:
    address: str
    token: str
    home: Path  # the HOME every process of these tests runs with

    def env(self, **extra: str) -> dict[str, str]:
        """The executor's environment: a HOME of its own (no ~/.ray/auth_token there), no token
        unless given (this machine's environment has none)."""
        return {"HOME": str(self.home), **extra}


@pytest.fixture(scope="module")
def auth_cluster(tmp_path_factory) -> Iterator[AuthCluster]:
    """Head (1 CPU) and two worker nodes (1 CPU each), token authentication on."""
    home = tmp_path_factory.mktemp("home")
    token = secrets.token_hex(24)
    env = {**os.environ, "HOME": str(home), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen([sys.executable, "-c", CLUSTER_SCRIPT, "1", "1", "1"], env=env, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        address = proc.stdout.readline().strip()
        assert re.fullmatch(r"[\d.]+:\d+", address), f"the cluster did not start: {address!r}"
        yield AuthCluster(address, token, home)
    finally:
        proc.stdin.close()
        proc.wait(timeout=120)
    for root in (home, Path.home()):  # the HOME these processes ran with (and this machine's): no token file
        token_file = root / ".ray" / "auth_token"
        assert not token_file.exists() or token not in token_file.read_text(), token_file


def never_shows(token: str, run: Run, *folders: Path) -> None:
    """The token is in no output line and in no file under /out (or ``folders``)."""
    assert token not in run.output
    for folder in (run.out, *folders):
        for path in folder.rglob("*"):
            if path.is_file():
                assert token.encode() not in path.read_bytes(), path


def test_inference_with_a_token_matches_one_node(tmp_path, sample, trained, auth_cluster):
    """Mining + infer on the authenticated cluster, the token given as the hyperparameter:
    the same outputs as a one-node run, and the token nowhere in the log or under /out."""
    one = run_entry(inference_task(tmp_path / "one", sample, trained, cpu_num_workers=1))
    assert one.returncode == 0, one.output[-3000:]
    task = inference_task(tmp_path / "auth", sample, trained, ray_address=auth_cluster.address,
                          ray_auth_token=auth_cluster.token)
    run = run_entry(task, extra_env=auth_cluster.env())
    assert run.returncode == 0, run.output[-3000:]
    assert "token authentication, token from ray_auth_token" in run.output
    assert "Ray cluster: 3 node(s)" in run.output
    assert_same_outputs(one.out, run.out, 12)
    never_shows(auth_cluster.token, run)


def test_training_on_two_nodes_with_the_token_from_the_environment(tmp_path, sample, trained, auth_cluster):
    """Training with its two workers on two nodes of the authenticated cluster, the token in
    ``RAY_AUTH_TOKEN`` (as an operator bakes it into a site image); none in any stage, log,
    monitor, saved config or Ray Train's storage."""
    models, files = best_stage_files(trained)
    shared = tmp_path / "shared-storage"
    config = {**TRAIN_CONFIG, "max_epochs": 2, "val_interval": 1, "pretrained_model_params": files,
              "ray_address": auth_cluster.address, "ray_storage_path": str(shared)}
    run = run_entry(write_task(tmp_path / "train", sample, run_training=True, models_dir=models, config=config),
                    extra_env=auth_cluster.env(RAY_AUTH_TOKEN=auth_cluster.token))
    assert run.returncode == 0, run.output[-5000:]
    assert "token authentication, token from RAY_AUTH_TOKEN" in run.output
    nodes = set(re.findall(r"\[rank \d\] Ray Train worker on node (\w+)", run.output))
    assert len(nodes) == 2, run.output[-3000:]
    result = yaml.safe_load((run.out / "models" / "result.yaml").read_text())
    assert "epoch_2" in result["model_stages"] and run.monitor()[3] == "3"
    never_shows(auth_cluster.token, run, shared)


@pytest.mark.parametrize(("token", "says"), [
    ("", "requires a token (token authentication): give it in the hyperparameter ray_auth_token"),
    ("not-the-token", "refused the token given in ray_auth_token: it is not this cluster's token"),
], ids=["no-token", "wrong-token"])
def test_missing_or_wrong_token_is_300301(tmp_path, sample, auth_cluster, token, says):
    """One line with 300301 saying what to give, refused before the executor joins or
    starts anything (no ``ray.init`` retrying for 20 s into a ConnectionError)."""
    config = {**TRAIN_CONFIG, "max_epochs": 1, "ray_address": auth_cluster.address, "ray_auth_token": token}
    run = run_entry(write_task(tmp_path, sample, run_training=True, config=config), extra_env=auth_cluster.env())
    assert run.returncode == 1, run.output[-3000:]
    fields = run.monitor()
    assert fields[3:5] == ["4", "300301"] and says in fields[5], fields
    assert "Ray cluster:" not in run.output and "joins the cluster as a Ray node" not in run.output
    if token:
        never_shows(token, run)
