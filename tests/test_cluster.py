"""The executor on an existing Ray cluster: several Ray nodes on this machine
(``ray.cluster_utils.Cluster``), joined through ``ray_address`` as an operator would."""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from ray.cluster_utils import Cluster

from conftest import TRAIN_CONFIG, Holds, Run, best_stage_files, run_entry, start_entry
from ray_app.data.sample import SampleData, make_dataset, write_task

pytestmark = pytest.mark.slow


def read_tsv(out: Path) -> dict[str, float]:
    return {p: float(s) for p, s in (line.split("\t") for line in (out / "result.tsv").read_text().splitlines())}


def read_boxes(out: Path) -> dict[str, list[tuple]]:
    result = json.loads((out / "infer-result.json").read_text())["detection"]
    return {name: sorted((b["class_name"], b["box"]["x"], b["box"]["y"], b["box"]["w"], b["box"]["h"], b["score"])
                         for b in entry["boxes"]) for name, entry in result.items()}


def inference_task(root: Path, data: SampleData, trained: Run, **config) -> Path:
    models, files = best_stage_files(trained)
    base = dict(model_params_path=files, img_size=128, samples_per_gpu=2, cpu_num_workers=2)
    return write_task(root, data, run_mining=True, run_infer=True, models_dir=models,
                      config={**base, "mining_algorithm": "entropy", **config})


def staged_dirs() -> set[Path]:
    """The staged copies of training data on this machine (every node of a test cluster shares it)."""
    return set(Path(tempfile.gettempdir(), "ray_app").glob("staged-*"))


@contextmanager
def running_cluster(head_cpus: int, worker_cpus: list[int]) -> Iterator[Cluster]:
    """A head and worker nodes on this machine, shut down when the block ends, however it
    ends: also when a node fails to start or a step before the test's own ``try`` fails, so
    that no Ray of one test is left for the next."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": head_cpus})
    try:
        for cpus in worker_cpus:
            cluster.add_node(num_cpus=cpus)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        cluster.shutdown()


@contextmanager
def released(holds: Holds) -> Iterator[Holds]:
    """Every held pause point released when the block ends, however it ends."""
    try:
        yield holds
    finally:
        holds.release()


def test_inference_on_two_nodes_matches_one_node(tmp_path, sample, trained):
    """Mining + infer on a cluster whose head (the driver's node, which sees /in) offers no
    CPUs, as KubeRay advises for a head: the reads still run there, every image crosses to
    the model actors on the other node, and the outputs equal a one-node run's.
    The cluster is given by ``RAY_ADDRESS`` here (the hyperparameter in the other tests)."""
    one = run_entry(inference_task(tmp_path / "one", sample, trained, cpu_num_workers=1))
    assert one.returncode == 0, one.output[-3000:]
    with running_cluster(0, [2]) as cluster:
        head = cluster.head_node.node_id
        two = run_entry(inference_task(tmp_path / "two", sample, trained), extra_env={"RAY_ADDRESS": cluster.address})
    assert two.returncode == 0, two.output[-3000:]
    assert "joining the Ray cluster" in two.output and "Ray cluster: 2 node(s)" in two.output
    placed = set(re.findall(r"model actor ready on node (\w+)", two.output))
    assert len(placed) == 1 and head not in placed, placed  # both actors on the node with CPUs
    worked = re.search(r"model actors ran on 1 node\(s\): (\w+): 12 images", two.output)
    assert worked and not head.startswith(worked.group(1)), two.output[-3000:]
    assert_same_outputs(one.out, two.out, 12)


def assert_same_outputs(one: Path, two: Path, images: int) -> None:
    """The same boxes and mining scores, up to the float noise of other batchings."""
    boxes_one, boxes_two = read_boxes(one), read_boxes(two)
    assert boxes_one.keys() == boxes_two.keys() and len(boxes_one) == images
    for name in boxes_one:
        a, b = boxes_one[name], boxes_two[name]
        assert [x[:5] for x in a] == [x[:5] for x in b], name
        assert all(abs(x[5] - y[5]) < 1e-3 for x, y in zip(a, b)), name
    scores_one, scores_two = read_tsv(one), read_tsv(two)
    assert scores_one.keys() == scores_two.keys()
    assert all(abs(scores_one[p] - scores_two[p]) < 1e-3 for p in scores_one)


def test_training_on_two_nodes(tmp_path, sample, trained):
    """Train workers on two nodes: data staged through Ray to the node without /in, resume
    checkpoints in ``ray_storage_path``, stages in /out/models as on one machine. Without
    ``ray_storage_path`` a multi-node run is refused with 300001 before anything starts. A run
    that stops on an error after staging (a NaN loss) leaves no staged copy either: the
    driver has every node remove it."""
    models, files = best_stage_files(trained)
    config = {**TRAIN_CONFIG, "max_epochs": 2, "val_interval": 1, "pretrained_model_params": files}
    staged_before = staged_dirs()
    # one CPU per node: the two workers (1 CPU each) cannot share a node
    with running_cluster(1, [1, 1]) as cluster:
        refused = run_entry(write_task(tmp_path / "refused", sample, run_training=True, models_dir=models,
                                       config={**config, "ray_address": cluster.address}))
        shared = tmp_path / "shared-storage"
        run = run_entry(write_task(tmp_path / "train", sample, run_training=True, models_dir=models,
                                   config={**config, "ray_address": cluster.address,
                                           "ray_storage_path": str(shared)}))
        diverged = run_entry(write_task(tmp_path / "nan", sample, run_training=True, models_dir=models,
                                        config={**config, "ray_address": cluster.address, "learning_rate": 1e12,
                                                "ray_storage_path": str(tmp_path / "nan-storage")}))
    assert diverged.returncode == 1 and diverged.monitor()[3:5] == ["4", "300201"], diverged.output[-3000:]
    assert "staged " in diverged.output  # it got as far as staging, then stopped on its own error
    assert "removed the staged training data a stopped run left on" in diverged.output, diverged.output[-3000:]
    assert staged_dirs() <= staged_before
    assert refused.returncode == 1 and refused.monitor()[3:5] == ["4", "300001"]
    assert "needs ray_storage_path" in refused.monitor()[5]

    assert run.returncode == 0, run.output[-5000:]
    workers = set(re.findall(r"\[rank (\d)\] Ray Train worker on node (\w+)( \(another node)?", run.output))
    assert len({node for _, node, _ in workers}) == 2, run.output[-3000:]  # the two ranks on two nodes
    assert any(elsewhere for _, _, elsewhere in workers), workers  # at least one without /in and /out
    # the pretrained weights and the COCO files reached the other node through Ray
    assert re.search(r"checkpoint by local backend from path: \S+/staged-\S+/extra0-pretrained\.pth", run.output), \
        run.output[-3000:]
    result = yaml.safe_load((run.out / "models" / "result.yaml").read_text())
    reference = yaml.safe_load((trained.out / "models" / "result.yaml").read_text())
    assert "epoch_2" in result["model_stages"] and set(result["model_stages"]) <= {"epoch_1", "epoch_2"}
    def kinds(files: list[str]) -> list[str]:  # the export is the best stage's alone
        return sorted(Path(f).suffix for f in files if not f.endswith(".onnx"))

    for stage in result["model_stages"].values():  # the same kind of stage as a one-machine run
        assert kinds(stage["files"]) == kinds(reference["model_stages"][reference["best_stage_name"]]["files"])
        assert all((run.out / "models" / stage["stage_name"] / f).is_file() for f in stage["files"])
    best = result["best_stage_name"]  # exported on the driver's node, which holds /out, on a cluster too
    assert result["model_stages"][best]["files"][-1] == f"{best}.onnx", result["model_stages"][best]
    assert result["mAP"] > 0.5 * reference["mAP"]  # started from the pretrained stage, on both nodes
    assert run.monitor()[3] == "3"
    assert not list(shared.glob("ymir-*"))  # resume state removed once training is done
    # the other nodes' copies of the data (and their work dirs) removed too, once training ended
    assert staged_dirs() <= staged_before


def test_node_lost_during_inference_loses_no_image(tmp_path, trained, monkeypatch):
    """A worker node whose model actor has a batch in flight is removed: Ray restarts the
    actor on a remaining node, retries the lost batch, and every image gets its result.

    Deterministic: each model actor pauses after its first batch (``ray_app.pause``), so the
    node is removed while its batch is in flight, however fast the machine is."""
    holds = Holds(tmp_path / "holds")
    for name, value in holds.env.items():  # before the cluster starts: its workers inherit it
        monkeypatch.setenv(name, value)
    data = make_dataset(tmp_path / "data", n_train=0, n_val=0, n_candidates=200, image_size=128, seed=3)
    log = tmp_path / "log.txt"
    # the head offers no CPU: both model actors are on worker nodes
    with running_cluster(0, [2, 2]) as cluster, released(holds):
        workers = {node.node_id: node for node in cluster.worker_nodes}
        env_file = inference_task(tmp_path / "task", data, trained, ray_address=cluster.address)
        holds.hold("model_batch_done", count=2)
        proc = start_entry(env_file, log)
        paused = holds.wait("model_batch_done", proc, count=2, log=log)
        removed = paused[0]["node"]
        assert removed in workers, paused
        cluster.remove_node(workers[removed])
        holds.release()
        assert proc.wait(timeout=600) == 0, log.read_text()[-5000:]
    text = log.read_text()
    scores = read_tsv(tmp_path / "task" / "out")
    names = {Path(line).name for line in data.candidate_index.read_text().split()}
    assert set(map(lambda p: Path(p).name, scores)) == names and len(scores) == 200
    assert set(read_boxes(tmp_path / "task" / "out")) == names
    assert all(s >= 0 for s in scores.values())  # no image was reported unreadable
    assert "200/200 images" in text
    survivors = set(re.findall(r"model actor ready on node (\w+)", text)) - {removed}
    assert survivors, text[-3000:]  # the lost actor came back on a node that is still there


@pytest.mark.parametrize(("address", "code", "says"), [
    ("127.0.0.1:9", "300301", "cannot reach the Ray cluster at 127.0.0.1:9"),
    ("ray://127.0.0.1:10001", "300001", "is a Ray Client address"),
])
def test_unusable_cluster_address(tmp_path, sample, address, code, says):
    """A cluster that does not answer fails at once with 300301 (not minutes of retries);
    a Ray Client address is refused with 300001 and says what to give instead."""
    config = {**TRAIN_CONFIG, "max_epochs": 1, "ray_address": address}
    run = run_entry(write_task(tmp_path, sample, run_training=True, config=config))
    assert run.returncode == 1 and run.monitor()[3:5] == ["4", code], run.output[-2000:]
    assert says in run.monitor()[5]
    # refused at the probe: no Ray started or joined, so nothing was left to retry for minutes
    assert "joins the cluster as a Ray node" not in run.output and "starting a local Ray" not in run.output
    assert "Ray cluster:" not in run.output


@pytest.mark.parametrize("workers,nodes,expected", [(2, [16], 8), (3, [2], 0), (2, [1, 1], 1), (2, [4, 4, 16], 8),
                                                    (8, [4, 4, 16], 2), (3, [1, 1, 4], 1), (5, [0.5, 3, 2], 1)])
def test_cpus_per_worker_fit_the_nodes(workers, nodes, expected):
    """Each CPU worker's share never exceeds what a node has: the cluster's total split
    equally (the rule before 2026-11-27) gave 12 CPUs each for 2 workers on nodes of 4, 4
    and 16 CPUs, which no node holds."""
    from ray_app.train.task import cpus_per_worker

    assert cpus_per_worker(workers, nodes) == expected


def test_cpu_training_workers_can_be_placed_on_uneven_nodes():
    """On a real cluster of 1, 1 and 4 CPUs (6 in all), 2 CPU workers get 2 CPUs each (3,
    half of the total, fits no node) and Ray places both: a placement group of the same
    bundles is ready. Too many workers for the nodes is 300001 naming each node's CPUs."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    from ray_app.protocol.errors import ErrorCode, YmirError
    from ray_app.protocol.hyperparams import TrainingParams, load_template
    from ray_app.train.task import scaling

    def params(workers):
        return TrainingParams.model_validate({**load_template("training"), "class_names": ["a"],
                                              "cpu_num_workers": workers})

    with running_cluster(1, [1, 4]) as cluster:
        ray.init(address=cluster.address)
        try:
            config = scaling(params(2), [])
            assert config.num_workers == 2 and config.resources_per_worker == {"CPU": 2}
            group = placement_group([dict(config.resources_per_worker)] * config.num_workers)
            ray.get(group.ready(), timeout=60)
            remove_placement_group(group)
            with pytest.raises(YmirError) as error:
                scaling(params(7), [])
            assert error.value.code == ErrorCode.CONFIG
            assert "needs 7 CPUs but the Ray cluster has 6 over 3 nodes (4, 1, 1 CPUs)" in error.value.message
        finally:
            ray.shutdown()
