"""cinelab.models: a registry of segmentation and video models, local weights and imports.

Importing this package registers the built-in builders (segmentation, video).
"""

from cinelab.models import seg_video, segmentation, video  # noqa: F401  (registers builders)
from cinelab.models.registry import (
    TASKS,
    create_model,
    list_models,
    model_task,
    output_layer,
    register_model,
    register_task,
)

__all__ = [
    "TASKS",
    "create_model",
    "list_models",
    "model_task",
    "output_layer",
    "register_model",
    "register_task",
]
