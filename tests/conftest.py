"""Shared fixtures: YMIR workspaces built in temp dirs, the real entry run as the platform
runs it (a subprocess with ``YMIR_ENV_FILE``), and a model trained once per session."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from ray_app.data.sample import SampleData, make_dataset, write_task

REPO = Path(__file__).resolve().parents[1]
CLASS_NAMES = ["square", "disc", "triangle"]

#: The image's weights folder (``$RAY_APP_WEIGHTS``, default /weights) is empty for the tests
#: unless a test gives one: a machine that has /weights (an image, a GPU host) would otherwise
#: start the session's training from its COCO checkpoints, and the tests would see another run.
if "RAY_APP_WEIGHTS" not in os.environ:
    os.environ["RAY_APP_WEIGHTS"] = _NO_WEIGHTS = tempfile.mkdtemp(prefix="ray_app-test-weights-")
else:
    _NO_WEIGHTS = ""


@dataclass
class Run:
    """One run of the entry: its exit code, output, and the task's out dir."""

    returncode: int
    output: str
    out: Path

    def monitor(self) -> list[str]:
        """The first line of monitor.txt, split on tabs."""
        return (self.out / "monitor.txt").read_text().splitlines()[0].split("\t")


def entry_env(env_file: Path, extra_env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment the entry runs with: this one, the env file, and what the test adds."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # only what the test gives
    env.update({"YMIR_ENV_FILE": str(env_file), "PYTHONUNBUFFERED": "1", **(extra_env or {})})
    return env


def processes_with(marker: str) -> list[str]:
    """The command lines of live processes whose environment holds ``marker``."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if marker.encode() in environ.read_bytes():
                found.append((environ.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()[:120])
        except OSError:  # ended meanwhile, or a zombie
            continue
    return found


def run_entry(env_file: Path, timeout: float = 600, extra_env: dict[str, str] | None = None,
              out: Path | None = None) -> Run:
    """``python -m ray_app`` with the env file, as /usr/bin/start.sh runs it. ``out``: the
    task's out dir, for an env file that cannot say it (a broken one).

    Every run is also checked to leave no process behind: the entry ends its local Ray
    without Ray's graceful shutdown (``ray_session.end_process``), so each process it
    started (marked through the environment they inherit) must be gone once it exits."""
    marker = f"{os.getpid()}-{time.monotonic_ns()}"
    env = entry_env(env_file, {"RAY_APP_TEST_RUN": marker, **(extra_env or {})})
    proc = subprocess.run([sys.executable, "-m", "ray_app"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)
    deadline = time.monotonic() + 60  # a SIGKILLed process may take a moment to go (a leak never does)
    while (left := processes_with(f"RAY_APP_TEST_RUN={marker}")) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, f"the entry left {len(left)} process(es) running: {left[:5]}"
    out = out or Path(yaml.safe_load(Path(env_file).read_text())["output"]["root_dir"])
    return Run(proc.returncode, proc.stdout + proc.stderr, out)


@pytest.fixture(autouse=True)
def ray_auth_mode_restored():
    """``ray.init`` of a new local Ray sets ``RAY_AUTH_MODE=token`` in this process's
    environment for good (Ray 2.60), and ``ray_session`` sets the token too
    (``RAY_AUTH_TOKEN``), which every process a later test starts would inherit: a test's
    outcome would then depend on the tests before it. Both are restored after each test."""
    saved = {name: os.environ.get(name) for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session")
def sample(tmp_path_factory) -> SampleData:
    """A small synthetic dataset: 48 train, 16 val, 12 candidate images of 128 px."""
    return make_dataset(tmp_path_factory.mktemp("sample"), n_train=48, n_val=16, n_candidates=12, image_size=128)


TRAIN_CONFIG = dict(model_name="yolov8_n", img_size=128, max_epochs=20, samples_per_gpu=4, workers_per_gpu=0,
                    cpu_num_workers=2, val_interval=5, max_keep_checkpoints=1, learning_rate=0.01,
                    ymir_saved_file_patterns=r"\.log$")


def tree_state(*roots: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``roots``, with its size and modification time: what a
    task that never writes under /in (nor to the data the index files name) leaves as it was.
    Root, which runs the tests, could write a read-only folder anyway, so this is compared
    instead of mounting /in read-only."""
    state = {}
    for root in roots:
        for path in [root, *root.rglob("*")]:
            info = path.lstat()
            state[str(path)] = (info.st_size if path.is_file() else -1, info.st_mtime_ns)
    return state


@pytest.fixture(scope="session")
def trained(tmp_path_factory, sample) -> Run:
    """A real training run through the entry: yolov8_n, 2 CPU Ray Train workers. It leaves its
    /in and the dataset untouched."""
    env_file = write_task(tmp_path_factory.mktemp("train"), sample, run_training=True, config=TRAIN_CONFIG)
    before = tree_state(env_file.parent, sample.root)
    run = run_entry(env_file)
    assert run.returncode == 0, run.output[-5000:]
    assert tree_state(env_file.parent, sample.root) == before, "training wrote under /in or into the dataset"
    return run


def best_stage_files(trained: Run) -> tuple[Path, list[str]]:
    """models_dir and the best stage's ``STAGE/FILE`` entries, as the platform hands them on."""
    models = trained.out / "models"
    result = yaml.safe_load((models / "result.yaml").read_text())
    best = result["best_stage_name"]
    return models, [f"{best}/{f}" for f in result["model_stages"][best]["files"]]


@pytest.fixture()
def infer_task(tmp_path, sample, trained):
    """Build an inference/mining workspace over the sample's candidates with the best stage."""
    models, files = best_stage_files(trained)

    def make(run_mining: bool, run_infer: bool, data: SampleData | None = None, **config) -> Path:
        base = dict(model_params_path=files, img_size=128, samples_per_gpu=4, cpu_num_workers=1)
        return write_task(tmp_path / "task", data or sample, run_mining=run_mining, run_infer=run_infer,
                          models_dir=models, config={**base, **config})

    return make


class Holds:
    """The test side of ``ray_app.pause``: hold a run at a pause point, see who reached it,
    let it go. The product must run with ``RAY_APP_PAUSE_DIR=<root>`` in its environment."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    @property
    def env(self) -> dict[str, str]:
        from ray_app.pause import PAUSE_DIR_VARIABLE

        return {PAUSE_DIR_VARIABLE: str(self.root)}

    def hold(self, event: str, count: int = 1) -> None:
        """Pause the first ``count`` processes that reach ``event``."""
        for k in range(count):
            (self.root / (f"{event}.hold" if k == 0 else f"{event}.{k}.hold")).touch()

    def reached(self, event: str) -> list[dict]:
        """What each process paused at ``event`` wrote (pid, node, ...), with ``release``: its held file."""
        found = []
        for record in sorted(self.root.glob(f"{event}*.held-*.json")):
            found.append({**json.loads(record.read_text()), "release": record.with_suffix("")})
        return found

    def wait(self, event: str, proc: subprocess.Popen, count: int = 1, log: Path | None = None,
             timeout: float = 600) -> list[dict]:
        """Block until ``count`` processes are paused at ``event``; fail if the run ends first.
        ``timeout`` only guards against a hung test: the event, not the clock, decides."""
        deadline = time.monotonic() + timeout
        while len(found := self.reached(event)) < count:
            text = log.read_text()[-3000:] if log else ""
            assert proc.poll() is None, f"the run ended before {event}:\n{text}"
            assert time.monotonic() < deadline, f"{event} not reached:\n{text}"
            time.sleep(0.05)
        return found

    def release(self) -> None:
        """Let every paused process go on (a killed one is gone anyway)."""
        for held in self.root.glob("*.held-*"):
            if not held.name.endswith(".json"):
                held.unlink(missing_ok=True)


def start_entry(env_file: Path, log: Path, extra_env: dict[str, str] | None = None) -> subprocess.Popen:
    """The entry in the background, its output in ``log`` (for tests that act during a run)."""
    return subprocess.Popen([sys.executable, "-m", "ray_app"], env=entry_env(env_file, extra_env), cwd=REPO,
                            stdout=log.open("w"), stderr=subprocess.STDOUT)


#: pytest's exit status, kept for :func:`pytest_unconfigure`
_SESSION: dict[str, int] = {}


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus) -> None:
    _SESSION["exitstatus"] = int(exitstatus)


def pytest_unconfigure(config) -> None:
    """End the test process with pytest's own status once it has reported everything, without
    the interpreter's finalization. On 2026-11-26 a fresh clone's `make test` printed
    "248 passed" and then died of a segmentation fault in that finalization (native threads
    of the libraries loaded in this process: an in-process Ray, torch, pyarrow), so make
    failed after every test had passed; it did not happen again in 4 runs of the tests that
    load them. What the tests check runs before this point, and every run of the entry is a
    subprocess whose exit status the tests read (the entry itself ends the same way, see
    ``ray_session.end_process``)."""
    if _NO_WEIGHTS:
        shutil.rmtree(_NO_WEIGHTS, ignore_errors=True)
    if "exitstatus" in _SESSION:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_SESSION["exitstatus"])
