"""The YMIR protocol: env and hyperparameters in, monitor and results out."""

from ray_app.protocol.env import EnvConfig, env_file_path, load_env
from ray_app.protocol.errors import ErrorCode, YmirError
from ray_app.protocol.monitor import Monitor, TaskState

__all__ = ["EnvConfig", "ErrorCode", "Monitor", "TaskState", "YmirError", "env_file_path", "load_env"]
