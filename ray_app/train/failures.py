"""Failures that no restart can fix end a training run at once.

Ray Train restarts the worker group after any worker error (``FailureConfig.max_failures``),
which is right for a lost node or a killed worker: the group resumes from the last
checkpoint. It is wrong for an error raised while the config, the dataset or the Runner is
built, or for a NaN loss: those come back on every restart, and each restart costs about
20 s before the same traceback. The worker that meets such an error records it with the
run's outputs actor (``TrainingOutputs.fail``) before raising; Ray Train's own failure
policy, asked what to do, then finds the record and raises instead of retrying. The record
is the one place the decision is made, so a collateral error on another rank (its peer is
gone) does not decide anything.
"""

from __future__ import annotations

import logging
import traceback
from typing import Any

import ray
from ray.train.v2._internal.execution.failure_handling import DefaultFailurePolicy
from ray.train.v2._internal.execution.failure_handling.failure_policy import FailureDecision

from ray_app.protocol.errors import YmirError, describe

log = logging.getLogger(__name__)

#: how long the failure policy waits for the outputs actor's answer
RECORD_TIMEOUT_S = 30
#: text of the errors a rank sees when a peer of its process group is gone: never its own cause
_PEER_GONE = ("connection closed by peer", "connection reset by peer", "broken pipe", "gloo", "nccl")


def peer_gone(error: BaseException) -> bool:
    """Whether ``error`` is a collective failing because another rank died (a restart fixes it)."""
    try:
        from torch.distributed import DistBackendError

        if isinstance(error, DistBackendError):
            return True
    except ImportError:  # pragma: no cover - torch without distributed
        pass
    text = str(error).lower()
    return isinstance(error, RuntimeError) and any(marker in text for marker in _PEER_GONE)


def record_fatal(outputs: Any, stage: str, model_name: str, error: BaseException) -> None:
    """Tell the outputs actor that ``stage`` failed in a way no restart can fix:
    ``<stage> for <model> failed: <type>: <cause>``, with this worker's traceback."""
    if isinstance(error, YmirError):
        code, cause = error.code, error.message
    else:
        code, cause = describe(error)
    ray.get(outputs.fail.remote(YmirError(code, f"{stage} for {model_name} failed: {cause}",
                                          detail=traceback.format_exc())))


class StopOnRecordedFailure(DefaultFailurePolicy):
    """Ray Train's default policy, but a failure the outputs actor recorded is raised at once."""

    def __init__(self, failure_config: Any, outputs: Any) -> None:
        super().__init__(failure_config)
        self.outputs = outputs

    def make_decision(self, training_failed_error: Any) -> FailureDecision:
        try:
            recorded = ray.get(self.outputs.fatal.remote(), timeout=RECORD_TIMEOUT_S)
        except Exception as error:  # no answer: decide as Ray Train would
            log.warning("no answer from the outputs actor: %s", error)
            recorded = None
        if recorded:
            print(f"training stops without a restart: {recorded.message}", flush=True)
            return FailureDecision.RAISE
        return super().make_decision(training_failed_error)
