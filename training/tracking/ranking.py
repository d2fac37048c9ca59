"""How runs are ranked, one definition for the sweep's table and for registration.

Runs are ranked by one metric (``best_val_map_at_r`` by default). On a small or easy data set
many runs tie on it (a sweep of a raw CSV tied 22 runs at 1.0), and the first in order would
win by accident. A tie is therefore broken by a second validation figure, then by the
training loss. No run logs a validation loss, so the loss is ``train_loss`` (its last epoch):
it orders runs of one loss fairly and runs of different losses at least deterministically. Test
figures never break a tie: choosing on them would make the test split a second validation split.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

from zoo.metrics import higher_is_better

#: The loss figure that breaks what the validation figures leave tied.
LOSS_TIE_BREAKER = "train_loss"
#: Said where every figure ties: the earlier run (or row) stays first.
ORDER = "order"


def second_figure(metric: str) -> str | None:
    """The validation figure that breaks a tie on ``metric``: ``best_val_precision_at_1``
    after MAP@R, else ``best_val_map_at_r``; none when ranking by a test figure (those runs
    have no validation split to break it with)."""
    if not metric.startswith("best_val_"):
        return None
    return "best_val_precision_at_1" if metric == "best_val_map_at_r" else "best_val_map_at_r"


def ranking_figures(metric: str) -> tuple[str, ...]:
    """``metric`` then its tie-breakers, in the order they are compared."""
    second = second_figure(metric)
    return (metric, *((second,) if second and second != metric else ()),
            *((LOSS_TIE_BREAKER,) if metric != LOSS_TIE_BREAKER else ()))


def _value(metrics: Mapping[str, float], name: str) -> float:
    try:
        value = float(metrics.get(name, math.nan))
    except (TypeError, ValueError):
        return math.nan
    return value if math.isfinite(value) else math.nan


def rank_key(metrics: Mapping[str, float], metric: str) -> tuple[float, ...]:
    """A sort key, smallest first: each figure in its direction, a missing one last."""
    key: list[float] = []
    for name in ranking_figures(metric):
        value = _value(metrics, name)
        if math.isnan(value):
            key += [1.0, 0.0]
        else:
            key += [0.0, -value if higher_is_better(name) else value]
    return tuple(key)


def broken_by(above: Mapping[str, float], below: Mapping[str, float], metric: str) -> str | None:
    """Which figure put ``below`` after ``above`` when they tie on ``metric`` (``order`` when
    every figure ties); None when ``metric`` alone decides."""
    figures = ranking_figures(metric)
    if rank_key(above, metric)[:2] != rank_key(below, metric)[:2]:
        return None
    for i, name in enumerate(figures[1:], start=1):
        if rank_key(above, metric)[2 * i:2 * i + 2] != rank_key(below, metric)[2 * i:2 * i + 2]:
            return name
    return ORDER


def ranked(items: Sequence[Mapping[str, float]], metric: str) -> list[int]:
    """The indices of ``items`` (each a run's metrics) best first; a full tie keeps the
    given order."""
    return sorted(range(len(items)), key=lambda i: (rank_key(items[i], metric), i))
