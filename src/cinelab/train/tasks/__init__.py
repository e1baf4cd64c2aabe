"""Generic task setups (task types any pipeline can use), registered on import."""

from cinelab.train.tasks import (
    cine,
    image_classification,
    image_segmentation,
    video_classification,
    video_regression,
)

BUILTIN_TASKS = tuple(m.TASK for m in (cine, image_classification, image_segmentation,
                                       video_classification, video_regression))
