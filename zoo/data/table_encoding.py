"""Raw table columns to model features: one function for training rows and served rows.

A table's columns are fitted on the training split only (:func:`fit_columns`) and saved in
the model's ``Preprocessing``; :func:`encode` then turns any rows with those columns (the
training table, a DataFrame handed to the MLflow model, JSON rows sent to the server) into
the same float features:

- a **numeric** column gives its value, with a missing value filled by the training median;
  where the training split had missing values, a second 0/1 feature marks the filled ones;
- a **categorical** column (text, pandas ``category``, or named as categorical) gives a
  one-hot block: slot 0 is "unknown" (a missing value, or a category the training split
  did not hold), slots 1.. the training split's categories, at most ``MAX_CATEGORIES`` of
  the most frequent.

The model's input stays one float tensor, so export, ONNX Runtime and the server are the
same for tables as for anything else. A column's features are contiguous (its *group*), so
the FT-Transformer makes one token of each group; a one-hot group times a linear map is
exactly the categorical embedding lookup of the FT-Transformer paper.
"""
from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

MAX_CATEGORIES = 256  # per column; rarer categories share the unknown slot
NUMERIC, CATEGORICAL = "numeric", "categorical"


@dataclass(frozen=True)
class Column:
    """One raw column and what training fitted on it."""

    name: str
    kind: str  # NUMERIC | CATEGORICAL
    median: float = 0.0  # numeric: fills a missing value
    indicator: bool = False  # numeric: a 0/1 feature marks filled values
    categories: tuple[str, ...] = field(default_factory=tuple)  # categorical: slots 1..

    def __post_init__(self) -> None:
        if self.kind not in (NUMERIC, CATEGORICAL):
            raise ValueError(f"column {self.name!r}: kind must be {NUMERIC!r} or "
                             f"{CATEGORICAL!r}, got {self.kind!r}")
        object.__setattr__(self, "categories", tuple(str(c) for c in self.categories))

    @property
    def width(self) -> int:
        """How many model features the column becomes."""
        return 1 + len(self.categories) if self.kind == CATEGORICAL else 1 + self.indicator

    def to_dict(self) -> dict[str, Any]:
        if self.kind == CATEGORICAL:
            return {"name": self.name, "kind": self.kind, "categories": list(self.categories)}
        return {"name": self.name, "kind": self.kind, "median": self.median,
                "indicator": self.indicator}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Column":
        return cls(str(d["name"]), str(d["kind"]), float(d.get("median", 0.0)),
                   bool(d.get("indicator", False)), tuple(d.get("categories", ())))


def category_text(value: Any) -> str | None:
    """A category as text, the same whichever way it arrives: ``3``, ``3.0``, ``"3"``,
    ``"03"`` and ``"3.0"`` are ``"3"``, ``0.1`` as a float32 or float64 or text is ``"0.1"``;
    a missing value (None, NaN, empty text) is None. A CSV reads a code column as numbers
    and a client may send it as text (or the other way round): both land in one slot."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        try:
            number = float(text)
        except ValueError:
            return value
        return _number_text(number) if math.isfinite(number) else value
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) else _number_text(value)
    return str(value)


def _number_text(number: float | np.floating) -> str:
    """The shortest text of a number in its own precision (``np.float32(0.1)`` is 0.1)."""
    if float(number).is_integer() and abs(number) < 2**63:
        return str(int(number))
    return str(number) if isinstance(number, np.floating) else repr(float(number))


def is_categorical(series: pd.Series) -> bool:
    """Text, pandas ``category`` and mixed columns are categories; numbers and booleans are
    numeric."""
    return not (pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series))


def fit_columns(frame: pd.DataFrame, categorical: Iterable[str] = ()) -> list[Column]:
    """The columns of ``frame`` (the training split's rows) fitted: medians, which numeric
    columns had missing values, the categories of each categorical column."""
    forced = _forced(frame, categorical)
    return [_fit_categorical(str(name), frame[name]) if name in forced
            or is_categorical(frame[name]) else _fit_numeric(str(name), frame[name])
            for name in frame.columns]


def check_columns(frame: pd.DataFrame, categorical: Iterable[str] = ()) -> None:
    """What :func:`fit_columns` would refuse, checked without fitting the categories: a
    numeric column holding text or infinities, or no values at all."""
    forced = _forced(frame, categorical)
    for name in frame.columns:
        if name not in forced and not is_categorical(frame[name]):
            _fit_numeric(str(name), frame[name])


def _forced(frame: pd.DataFrame, categorical: Iterable[str]) -> set[str]:
    """The columns named categorical, each checked to be one of ``frame``'s."""
    forced = set(categorical)
    unknown = sorted(forced - set(frame.columns))
    if unknown:
        raise ValueError(f"categorical column(s) {unknown} are not features of the table; "
                         f"features: {', '.join(map(str, frame.columns))}")
    return forced


def _fit_numeric(name: str, series: pd.Series) -> Column:
    values = _numbers(series, name)
    missing = np.isnan(values)
    if missing.all():
        raise ValueError(f"column {name!r} has no values in the training split: leave "
                         "it out (feature_columns) or fill it in")
    return Column(name, NUMERIC, float(np.median(values[~missing])), bool(missing.any()))


def _texts(series: pd.Series) -> list[str | None]:
    """The column's values as category text (numpy values: a float32 keeps its precision)."""
    return [category_text(v) for v in series.to_numpy()]


def _fit_categorical(name: str, series: pd.Series) -> Column:
    texts = pd.Series(_texts(series), dtype=object).dropna()
    counts = texts.value_counts()
    if len(counts) > MAX_CATEGORIES:
        log.info("column %r: %d categories; the %d most frequent keep their own slot, the rest "
                 "share the unknown slot", name, len(counts), MAX_CATEGORIES)
        counts = counts.iloc[:MAX_CATEGORIES]
    return Column(name, CATEGORICAL, categories=tuple(sorted(counts.index)))


def _numbers(series: pd.Series, name: str) -> np.ndarray:
    """A numeric column as float64, missing values (None, NaN, empty text) as NaN; text that
    is not a number, and infinities, are errors that name the row."""
    if pd.api.types.is_bool_dtype(series):
        return series.to_numpy(dtype=np.float64)
    if pd.api.types.is_numeric_dtype(series):
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
    else:  # served rows: numbers, numbers as text, None
        values = np.empty(len(series), dtype=np.float64)
        for i, value in enumerate(series):
            number = number_of(value)
            if number is None:
                raise ValueError(f"column {name!r} is numeric, but row {i} holds "
                                 f"{_quoted(value)}")
            values[i] = number
    infinite = np.flatnonzero(np.isinf(values))
    if len(infinite):
        raise ValueError(f"column {name!r} has an infinite value in row {int(infinite[0])}")
    return values


#: a number sent as text: a plain ASCII decimal, nothing Python's ``float`` would stretch to
#: ("1_000", " 12 ", "١٢", "nan", "inf")
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def number_of(value: Any, flags: bool = True) -> float | None:
    """One value of a numeric column as a float: NaN where missing (None, NaN, blank text),
    infinite for an integer too large for any float, a boolean as 0/1 where ``flags`` (a
    flag column trains as numbers), text only as a plain ASCII decimal; None when it is no
    number."""
    if value is None or value is pd.NA or (isinstance(value, str) and value.strip() == ""):
        return math.nan
    if isinstance(value, (bool, np.bool_)):
        return float(value) if flags else None
    try:
        if isinstance(value, (int, float, np.number)):
            return float(value)
        if isinstance(value, str) and _DECIMAL.fullmatch(value):
            return float(value)
    except OverflowError:
        return math.inf
    return None


def _quoted(value: Any, limit: int = 40) -> str:
    """A value as a message quotes it: at most ``limit`` characters of its ``repr``."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def encode(frame: pd.DataFrame, columns: Sequence[Column]) -> np.ndarray:
    """Rows holding every column of ``columns`` by name to float32 ``[N, width]`` features
    (not standardised: ``Preprocessing`` does that, as for every model input)."""
    out = np.zeros((len(frame), total_width(columns)), dtype=np.float32)
    at = 0
    for column in columns:
        series = frame[column.name]
        if column.kind == NUMERIC:
            values = _numbers(series, column.name)
            missing = np.isnan(values)
            out[:, at] = np.where(missing, column.median, values)
            if column.indicator:
                out[:, at + 1] = missing
        else:
            slot = {c: i + 1 for i, c in enumerate(column.categories)}
            slots = np.fromiter((slot.get(t, 0) for t in _texts(series)), np.int64,
                                len(series))
            out[np.arange(len(frame)), at + slots] = 1.0
        at += column.width
    return out


def decode(x: np.ndarray, columns: Sequence[Column]) -> pd.DataFrame:
    """Encoded features back to raw rows (a filled value back to missing, an unknown slot to
    None): the input example logged with a model."""
    data: dict[str, list[Any]] = {}
    at = 0
    for column in columns:
        block = x[:, at:at + column.width]
        if column.kind == NUMERIC:
            missing = block[:, 1] > 0.5 if column.indicator else np.zeros(len(x), bool)
            data[column.name] = [None if m else float(v) for v, m in zip(block[:, 0], missing)]
        else:
            slots = block.argmax(axis=1)
            data[column.name] = [column.categories[s - 1] if s > 0 else None for s in slots]
        at += column.width
    return pd.DataFrame(data)


def total_width(columns: Sequence[Column]) -> int:
    return sum(c.width for c in columns)


def numeric_positions(columns: Sequence[Column]) -> list[int]:
    """The features standardised by the training mean and std: numeric values, not the 0/1
    indicators and one-hot slots (they keep mean 0 and std 1, so a category stays a pure
    lookup)."""
    positions, at = [], 0
    for column in columns:
        if column.kind == NUMERIC:
            positions.append(at)
        at += column.width
    return positions


def feature_names(columns: Sequence[Column]) -> list[str]:
    """A name per model feature (``age``, ``age:missing``, ``city=Oslo``, ``city=?``)."""
    names = []
    for column in columns:
        if column.kind == NUMERIC:
            names += [column.name] + ([f"{column.name}:missing"] if column.indicator else [])
        else:
            names += [f"{column.name}=?"] + [f"{column.name}={c}" for c in column.categories]
    return names
