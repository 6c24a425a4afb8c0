"""Tasks: data, splits, outputs, loss, metrics and sizes. Importing this package registers every task."""
from neuralgraph.tasks.base import (OUTPUTS, TASK_SUPPLIED, ClassificationTask, IncompatibleModelError, Split, Task,
                                    create_task, list_tasks, register_task, task_config_class, task_config_fields)
from neuralgraph.tasks import zoo_tasks  # noqa: F401,E402  (registers wildpark, cnn-zoo, cross-*)
from neuralgraph.tasks import inr_tasks  # noqa: F401,E402  (registers inr-cls, inr-edit)
from neuralgraph.tasks import l2o  # noqa: F401,E402  (registers l2o and its models ff, lstm, adam, sgd)

__all__ = ["Task", "ClassificationTask", "Split", "IncompatibleModelError", "OUTPUTS", "TASK_SUPPLIED",
           "create_task", "list_tasks", "register_task", "task_config_class", "task_config_fields"]
