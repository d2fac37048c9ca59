"""The loss registry (kept apart so families can register without import cycles), as
``zoo.models.registry`` and ``zoo.data.registry`` are for models and data sets."""
from zoo.registry import Registry

LOSSES: Registry = Registry("loss")
