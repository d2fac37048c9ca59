"""Table sources (CSV and Parquet) and ``Table``, their raw feature columns as read.

Text columns, pandas categories and missing values are kept as they are: what they become
(one-hot slots, filled values with indicators) is fitted on the training split by
``split_data`` (see ``table_encoding.py``), never on the rows it evaluates on.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from .registry import DATASETS
from .sources import LoadedData
from .table_encoding import Column, check_columns, encode, fit_columns

log = logging.getLogger(__name__)

TABLE_SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


class Table:
    """A table's raw feature columns: ``len``, ``shape`` ``(rows, columns)`` and row
    selection like a tensor, and the encoding of its rows once columns are fitted."""

    def __init__(self, frame: pd.DataFrame, categorical: Sequence[str] = ()) -> None:
        self.frame = frame.reset_index(drop=True)
        self.categorical = tuple(categorical)

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.frame.shape)  # type: ignore[return-value]

    def __getitem__(self, idx: Any) -> "Table":
        rows = idx.cpu().numpy() if isinstance(idx, torch.Tensor) else idx
        return Table(self.frame.iloc[rows], self.categorical)

    def fit(self) -> list[Column]:
        """These rows' columns fitted (medians, indicators, categories)."""
        return fit_columns(self.frame, self.categorical)

    def encoded(self, columns: Sequence[Column]) -> torch.Tensor:
        """The rows as float32 model features (not yet standardised)."""
        return torch.from_numpy(encode(self.frame, columns))


def _label_name(value: Any) -> str:
    """``3.0`` reads as ``"3"``: float labels usually come from a column with blanks (text
    labels stay as written: ``"007"`` is not ``"7"``)."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _read(file: Path, what: str) -> pd.DataFrame:
    if not file.exists():
        raise FileNotFoundError(f"{what} file {file} does not exist")
    if not file.is_file():
        raise ValueError(f"{file} is not a file")
    try:
        if what == "Parquet":
            return pd.read_parquet(file)
        return pd.read_csv(file)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ValueError(f"cannot read {what} {file}: {str(err).strip()}") from None
    except (OSError, ValueError) as err:  # pyarrow: not a Parquet file, or a broken one
        raise ValueError(f"cannot read {what} {file}: {str(err).strip()}") from None


def table_data(frame: pd.DataFrame, name: str, what: str, *, label_column: str,
               feature_columns: Sequence[str] | None,
               categorical_columns: Sequence[str] | None) -> LoadedData:
    """A read table as ``LoadedData``: the label column's classes, the other columns (or
    ``feature_columns``) as features, text and categorical columns included."""
    columns = [str(c) for c in frame.columns]
    frame = frame.set_axis(columns, axis=1)
    if label_column not in columns:
        raise ValueError(
            f"{what} {name} has no label column {label_column!r}; columns: {', '.join(columns)}"
        )
    features = list(feature_columns or [c for c in columns if c != label_column])
    missing = [c for c in features if c not in columns]
    if missing:
        raise ValueError(f"{what} {name} has no feature column(s) {missing}; columns: {columns}")
    if not features:
        raise ValueError(f"{what} {name} has no feature columns besides {label_column!r}")
    categorical = list(categorical_columns or [])
    stray = [c for c in categorical if c not in features]
    if stray:
        raise ValueError(f"categorical column(s) {stray} are not features of {what} {name}; "
                         f"features: {', '.join(features)}")
    labels = frame[label_column]
    if labels.isna().any():
        raise ValueError(
            f"{what} {name} has {int(labels.isna().sum())} empty value(s) in label column "
            f"{label_column!r}"
        )
    uniques = sorted(labels.unique(), key=lambda v: (isinstance(v, str), v))
    names = [_label_name(v) for v in uniques]
    if len(set(names)) != len(names):  # e.g. 1 and "1" mixed in one column
        uniques = sorted(set(labels.astype(str)))
        labels, names = labels.astype(str), list(uniques)
    if len(names) < 2:
        raise ValueError(f"{what} {name} needs at least 2 classes in {label_column!r}, "
                         f"found {names}")
    index = {v: i for i, v in enumerate(uniques)}
    y = torch.from_numpy(np.array(labels.map(index), dtype=np.int64))
    table = Table(frame[features], categorical)
    check_columns(table.frame, categorical)  # now: a numeric column holding text, an empty one
    log.info("%s: %d rows, %d features, %d classes", name, len(y), len(features), len(names))
    return LoadedData(Path(name).stem, "tabular", table, y, names, feature_names=features)


@DATASETS.register("csv")
def csv(
    path: str | Path,
    *,
    label_column: str = "label",
    feature_columns: list[str] | None = None,
    categorical_columns: list[str] | None = None,
) -> LoadedData:
    """A CSV table: ``label_column`` holds the class, the other columns are features.

    Numeric columns are numbers, text columns categories (``categorical_columns`` names
    numeric ones that are categories too, e.g. codes); empty cells are missing values.
    Class names are the sorted unique labels as strings (numbers sort as numbers).
    """
    file = Path(path).expanduser()
    return table_data(_read(file, "CSV"), str(file), "CSV", label_column=label_column,
                      feature_columns=feature_columns, categorical_columns=categorical_columns)


@DATASETS.register("parquet")
def parquet(
    path: str | Path,
    *,
    label_column: str = "label",
    feature_columns: list[str] | None = None,
    categorical_columns: list[str] | None = None,
) -> LoadedData:
    """A Parquet table, read as a CSV one is (string and category columns are categories,
    nulls are missing values)."""
    file = Path(path).expanduser()
    return table_data(_read(file, "Parquet"), str(file), "Parquet", label_column=label_column,
                      feature_columns=feature_columns, categorical_columns=categorical_columns)
