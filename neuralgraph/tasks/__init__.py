"""Tasks: data, splits, loss, metrics and sizes. Importing this package registers every task."""
from neuralgraph.tasks.base import Split, Task, create_task, list_tasks, register_task, task_config_fields

__all__ = ["Task", "Split", "create_task", "list_tasks", "register_task", "task_config_fields"]
