"""The task registry: importing this package registers every task family."""

from . import brackets, calls, keywords, quotes, variables  # noqa: F401  (registration side effect)
from .base import REGISTRY, TaskData, TaskError, TaskSpec, build_task, evaluate_task, get_task
from .custom import CustomTask, build_custom_task, load_task, parse_custom_task

__all__ = [
    "REGISTRY",
    "CustomTask",
    "TaskData",
    "TaskError",
    "TaskSpec",
    "build_custom_task",
    "build_task",
    "evaluate_task",
    "get_task",
    "load_task",
    "parse_custom_task",
]
