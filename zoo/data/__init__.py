"""Data for the zoo: sources, splits, class-balanced sampling, augmentation, preprocessing.

``load_data`` picks a source by name (``digits``, ``emitters``) or path (image folder, CSV or
Parquet table);
``split_data`` makes deterministic stratified splits normalised with training statistics;
``Preprocessing`` carries those statistics with the model to the server.
"""
from .augment import ImageAugment
from .emitters import emitters as _emitters  # noqa: F401  (registers "emitters")
from .images import ImageSet, StoredImages, batch_to
from .lazy import LazyImages
from .preprocessing import Preprocessing, preprocess_images, preprocess_rows
from .samplers import PKBatchSampler
from .registry import DATASETS
from .sources import LoadedData, load_data
from .splits import Split, Splits, split_data
from .tables import Table

__all__ = [
    "DATASETS",
    "ImageAugment",
    "ImageSet",
    "LazyImages",
    "LoadedData",
    "PKBatchSampler",
    "Preprocessing",
    "Split",
    "StoredImages",
    "Table",
    "batch_to",
    "Splits",
    "load_data",
    "preprocess_images",
    "preprocess_rows",
    "split_data",
]
