"""The data-source registry (kept apart so sources can register without import cycles), as
``zoo.models.registry`` and ``zoo.losses.registry`` are for models and losses."""
from __future__ import annotations

from typing import TYPE_CHECKING

from zoo.registry import Registry

if TYPE_CHECKING:
    from zoo.data.sources import LoadedData

DATASETS: Registry["LoadedData"] = Registry("dataset")
