"""cinelab.models: a registry of segmentation, video and classification models.

Importing this package imports every module in it, so each module's `@register_model`
builders are registered: a new model family is one new file here, nothing else to edit.
"""

import importlib
import pkgutil

from cinelab.models.registry import (
    TASKS,
    create_model,
    list_models,
    model_task,
    output_layer,
    register_model,
    register_task,
)

_NOT_BUILDERS = {"registry", "weights"}

for _info in pkgutil.iter_modules(__path__):
    if _info.name not in _NOT_BUILDERS:
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = [
    "TASKS",
    "create_model",
    "list_models",
    "model_task",
    "output_layer",
    "register_model",
    "register_task",
]
