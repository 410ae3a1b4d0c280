"""Tasks by name: each benchmark module registers its Task once, at import."""
from __future__ import annotations

from .base import Task

REGISTRY: dict[str, Task] = {}


def register(task: Task) -> Task:
    if not task.name or task.name in REGISTRY:
        raise ValueError(f"task name {task.name!r} is empty or registered twice")
    REGISTRY[task.name] = task
    return task


def get(name: str) -> Task:
    """The task called `name`, or ValueError listing the known ones."""
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown task {name!r}; tasks: {', '.join(REGISTRY)}") from None


def names() -> tuple[str, ...]:
    return tuple(REGISTRY)
