"""The executor entry: ``python -m ray_app`` (what the image's /usr/bin/start.sh runs).

It reads ``env.yaml``, then runs exactly one of:
- training, when ``run_training`` is set (mining/infer flags are then ignored), then the
  export of its best stage to ``deploy_formats``;
- mining and/or infer, when either is set: one pass over the candidates gives both (one
  progress from 0 to 1).

Every failure ends in ``monitor.txt`` state 4 with a YMIR error code and one line a user
understands (the traceback below it), and a non-zero exit status.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import tempfile
import traceback
from pathlib import Path

from ray_app.protocol import EnvConfig, ErrorCode, Monitor, YmirError, env_file_path, load_env
from ray_app.protocol.errors import describe
from ray_app.protocol.env import DEFAULT_ENV_FILE, ENV_FILE_VARIABLE, EnvOutput, check_outputs

log = logging.getLogger("ray_app")


def build_parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog="python -m ray_app",
        description=(
            "YMIR executor for mmyolo detectors on Ray. Reads the task from the env file: "
            f"--env-file if given, else ${ENV_FILE_VARIABLE}, else {DEFAULT_ENV_FILE}. The env file "
            "names config.yaml (hyperparameters over the image's templates), the index files and "
            "the output paths; progress and errors go to its monitor file."
        ),
        epilog="Exit status: 0 when the task is done, 1 when it failed (see monitor.txt), 2 for usage errors.",
    )


def configure_logging() -> None:
    """Plain lines on stderr: the platform appends the container's output to its log file."""
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, force=True,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%Y-%m-%d %H:%M:%S",
    )


def usable_home() -> None:
    """A HOME this user can write, for the task's processes and what their libraries keep
    there (matplotlib's config, which mmengine's visualiser imports; CUDA's kernel cache).

    Under ``docker run --user UID:GID`` with a UID the image does not know, Docker sets HOME to
    ``/``, which that user cannot write: matplotlib then warns twice on every import. HOME
    becomes a new private folder in the temp dir instead (one log line); a usable HOME is
    left as it is. The local Ray's token is never written there (``ray_session.local_ray_token``)."""
    home = os.environ.get("HOME", "")
    if home and os.path.isdir(home) and os.access(home, os.W_OK | os.X_OK):
        return
    private = tempfile.mkdtemp(prefix="ray_app-home-")
    os.environ["HOME"] = private
    log.info("HOME %s is not a folder this user (uid %d) can write, as under docker run --user with a UID the "
             "image does not know: this task's processes use %s", home or "(unset)", os.getuid(), private)


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def dispatch(env: EnvConfig, monitor: Monitor) -> None:
    """Run the task that ``env`` asks for."""
    if env.run_training:
        if env.run_mining or env.run_infer:
            log.warning("env.yaml sets run_training with run_mining/run_infer: only training runs")
        from ray_app.export.task import export_best_stage, plan_exports
        from ray_app.protocol.hyperparams import training_params
        from ray_app.train.task import run_training

        params = training_params(env)
        plan = plan_exports(params)  # a format or opset no exporter takes fails before training
        run_training(env, monitor, params)
        export_best_stage(env, plan, list(params.class_names))
    elif env.run_mining or env.run_infer:
        from ray_app.infer.task import run_inference

        run_inference(env, monitor)
    else:
        raise YmirError(ErrorCode.CONFIG, "env.yaml sets none of run_training, run_mining, run_infer: nothing to do")


def open_monitor(env: EnvConfig) -> Monitor:
    """The task's monitor, once its first line is written: the proof that /out is usable.

    The output root is not created: the platform mounts it, and creating a missing one would
    hide a broken mount behind results nobody collects. When the monitor cannot be written
    (no folder, read-only, full) stderr is the only channel left, so this is a YmirError that
    names the path and the reason, raised before any work starts.
    """
    root, path = Path(env.output.root_dir), env.output.monitor_file
    if not root.is_dir():
        raise YmirError(ErrorCode.CONFIG, f"output root_dir {root} is not a folder: it must exist and be writable")
    check_outputs(env, ["monitor_file"])
    try:
        monitor = Monitor(path, env.task_id, root)
        monitor.progress(0.0, force=True)
    except OSError as e:
        raise YmirError(ErrorCode.CONFIG, f"cannot write the monitor file {path}: {e.strerror or e} "
                                          f"(output root_dir {root} must be writable)") from None
    return monitor


def _fallback_monitor(task_id: str = "unknown-task") -> Monitor | None:
    """Where to report when env.yaml itself is unusable: the standard /out, if it exists."""
    out = EnvOutput()
    if Path(out.root_dir).is_dir():
        return Monitor(out.monitor_file, task_id, out.root_dir)
    return None


def _error_monitor(env: EnvConfig | None, monitor: Monitor | None) -> Monitor | None:
    """Where a failure is reported: the task's monitor; the standard /out one when env.yaml
    could not be read; none (stderr only) when the task's own monitor cannot be written."""
    return _fallback_monitor() if env is None else monitor


def _report(monitor: Monitor | None, code: int, message: str, trace: str) -> None:
    log.error("task failed (%d): %s", code, message)
    if monitor is None:
        return
    try:
        monitor.error(code, message, trace)
    except OSError as e:  # /out not writable: the log is all that is left
        log.error("cannot write %s: %s", monitor.path, e)


def main(argv: list[str] | None = None) -> int:
    build_parser().parse_args(argv)
    configure_logging()
    usable_home()
    signal.signal(signal.SIGTERM, _terminate)
    env: EnvConfig | None = None
    monitor: Monitor | None = None
    try:
        env = load_env(env_file_path())
        monitor = open_monitor(env)
        check_outputs(env)
        dispatch(env, monitor)
        monitor.done()
        log.info("task done")
        return 0
    except YmirError as e:
        _report(_error_monitor(env, monitor), e.code, e.message, e.detail or traceback.format_exc())
    except (KeyboardInterrupt, SystemExit) as e:
        _report(_error_monitor(env, monitor), ErrorCode.CONFIG, f"interrupted ({type(e).__name__} {e})",
                traceback.format_exc())
    except Exception as e:  # the unexpected: still a YMIR error, with the traceback to act on
        code, message = describe(e)
        _report(_error_monitor(env, monitor), code, message, traceback.format_exc())
    return 1
