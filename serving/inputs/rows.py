"""Rows of a tabular model's raw features to model inputs: lists in column order, or
records keyed by column name, encoded and standardised as in training."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from serving.errors import RequestError, shown
from serving.inputs.uploads import check_count
from serving.settings import ServeSettings
from zoo.data import Preprocessing, preprocess_rows
from zoo.data.table_encoding import number_of


def rows_to_array(rows: Sequence[Sequence[Any]], pre: Preprocessing,
                  settings: ServeSettings) -> np.ndarray:
    """Model input ``[N, F]`` float32, encoded and standardised as in training; every value
    finite after the cast to float32 (``1e300`` passes as a float64 but is infinite as a
    float32). A table's rows hold its raw columns: text for a categorical column (one the
    model never saw is "unknown"), None for a missing value."""
    if pre.kind != "tabular":
        channels, height, width = pre.input_size
        raise RequestError(f"this model takes images ({width}x{height}, {channels} channel(s)), "
                           "not rows: upload them as multipart files named 'images'")
    check_count(len(rows), "rows", settings)
    rows = rows_as_lists(rows, pre)
    width = pre.row_width
    for i, row in enumerate(rows):
        if not isinstance(row, (list, tuple)):
            raise RequestError(f"row {i} is not a list of values")
        if len(row) != width:
            names = pre.feature_names or []
            listed = (f" ({', '.join(names[:8])}{', ...' if len(names) > 8 else ''})"
                      if names else "")
            raise RequestError(f"row {i} has {len(row)} values; the model takes {width} "
                               f"{'columns' if pre.columns is not None else 'features'}{listed}")
    table = pre.columns is not None
    try:
        with np.errstate(over="ignore", invalid="ignore"):  # found below, row by row
            x = preprocess_rows(list(rows) if table else _numbers(rows, pre), pre).numpy()
    except (ValueError, TypeError) as exc:
        raise RequestError(str(exc)) from None
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise RequestError(f"row {i} has a value too large for float32 (about 3.4e38 after "
                           "standardising): the model cannot take it")
    return x


def _numbers(rows: Sequence[Sequence[Any]], pre: Preprocessing) -> np.ndarray:
    """A model of numbers only (no table columns): each value a JSON number (or a plain
    decimal as text), and a missing one (``null``, or a record's left-out key, as the page
    sends an empty cell) the feature's training mean, which standardises to 0."""
    names = pre.feature_names or []
    values = np.empty((len(rows), pre.row_width), dtype=np.float64)
    for i, row in enumerate(rows):
        for j, value in enumerate(row):
            number = number_of(value, flags=False)
            if number is None or np.isinf(number):
                name = f" ({names[j]})" if j < len(names) else ""
                raise RequestError(f"row {i} value {j}{name} is {shown(value)}, " + (
                    "not a number" if number is None else
                    "a number too large for the model (about 3.4e38 after standardising)"))
            values[i, j] = number
    missing = np.isnan(values)
    if missing.any():
        values[missing] = np.broadcast_to(np.asarray(pre.mean, np.float64), values.shape)[missing]
    return values


def rows_as_lists(rows: Sequence[Any], pre: Preprocessing) -> list[Any]:
    """Rows sent as records (``{"age": 30, "city": "Lima"}``) as lists in the model's column
    order: a column left out is a missing value (None), a key the model does not know is a
    400 that names it. Rows sent as lists pass unchanged."""
    if not any(isinstance(row, dict) for row in rows):
        return list(rows)
    names = list(pre.feature_names or [])
    if not names:
        raise RequestError("this model's features have no names: send each row as a list of "
                           f"{pre.row_width} values")
    known = set(names)
    out: list[Any] = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            out.append(row)
            continue
        unknown = [key for key in row if key not in known]
        if unknown:
            listed = ", ".join(shown(k) for k in unknown[:5]) + (", ..." if len(unknown) > 5
                                                                  else "")
            raise RequestError(f"row {i} has unknown column(s) {listed}; the model's columns "
                               f"are: {', '.join(names[:20])}"
                               + (", ..." if len(names) > 20 else ""))
        out.append([row.get(name) for name in names])
    return out
