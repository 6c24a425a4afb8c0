"""Tasks: data, splits, loss, metrics and sizes. Importing this package registers every task."""
from neuralgraph.tasks.base import (Split, Task, create_task, list_tasks, register_task, task_config_class,
                                    task_config_fields)
from neuralgraph.tasks import zoo_tasks  # noqa: F401,E402  (registers wildpark, cnn-zoo, cross-*)

__all__ = ["Task", "Split", "create_task", "list_tasks", "register_task", "task_config_class",
           "task_config_fields"]
