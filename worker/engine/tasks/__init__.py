"""The task registry: importing this package registers every task family."""

from . import brackets, calls, keywords, quotes, variables  # noqa: F401  (registration side effect)
from .base import REGISTRY, TaskData, TaskError, TaskSpec, build_task, evaluate_task, get_task

__all__ = ["REGISTRY", "TaskData", "TaskError", "TaskSpec", "build_task", "evaluate_task", "get_task"]
