"""A sweep's results side by side: one table (CSV, Markdown, text) and one heatmap.

The table is what a person reads first after a sweep, so it is honest by construction:
baselines that learn nothing (``training.pipeline.baselines``) sit among the runs, ranked by the
same metric, and failed runs stay visible (last, with their error) instead of vanishing.
Nothing here talks to MLflow: the sweep turns its runs into ``Row``s and logs the files.
"""
from __future__ import annotations

import logging
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.patches import Rectangle

from training.tracking.ranking import broken_by, rank_key, ranking_figures
from zoo import names
from zoo.metrics import higher_is_better  # one definition everywhere

log = logging.getLogger(__name__)

BASELINE = "baseline"  # Row.status of a baseline row
FAILED_STATUSES = ("FAILED", "KILLED")
# shown after the sort metric, each only when some row has it
METRIC_COLUMNS = (
    "test_precision_at_1", "test_map_at_r", "test_r_precision", "test_nmi", "test_accuracy",
    "open_map_at_r", "open_tar_at_far_1e-3", "open_dir_at_far_1e-2", "train_time_s",
)
TEXT_COLUMNS = ("model", "loss", "status")
TAIL_COLUMNS = ("run_id", "error")
#: The column that names the figure which put a row below one it ties with on the metric.
TIE = "tie_broken_by"
MISSING = "—"
STD = "_std"  # suffix of a metric's standard deviation over seeds
RUNS = "runs"  # how many runs (seeds) a row is the mean of


@dataclass
class Row:
    """One result: a run of a model × loss combination, or a baseline (status "baseline")."""

    model: str
    loss: str
    status: str  # MLflow run status ("FINISHED", "FAILED", "RUNNING", ...) or "baseline"
    metrics: dict[str, float] = field(default_factory=dict)
    run_id: str | None = None
    error: str | None = None
    seed: int | None = None  # the split seed of a run (None: a mean over seeds, or unknown)

    @classmethod
    def baseline(cls, name: str, metrics: dict[str, float], seed: int | None = None) -> "Row":
        """A baseline row: ``model`` is the baseline's name, ``loss`` is "-"."""
        return cls(model=name, loss="-", status=BASELINE, metrics=dict(metrics), seed=seed)

    @property
    def is_baseline(self) -> bool:
        return self.status.lower() == BASELINE

    @property
    def failed(self) -> bool:
        return self.status.upper() in FAILED_STATUSES

    def value(self, metric: str) -> float:
        """The metric as a float, NaN when absent or not a number."""
        try:
            v = float(self.metrics.get(metric, math.nan))
        except (TypeError, ValueError):
            return math.nan
        return v


def first_line(text: str | None, limit: int = 120) -> str:
    """The first non-empty line of an error, shortened: enough to recognise it in a table."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    line = lines[0] if lines else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


def mean_over_seeds(rows: Sequence[Row]) -> list[Row]:
    """One row per model × loss (and per baseline) whose runs finished: each metric's mean
    over them, with ``<metric>_std`` (population std) and ``runs`` beside it. A combination
    with one run, and every failed run, stays a row of its own. First-seen order."""
    groups: dict[tuple[str, str, str], list[Row]] = {}
    out: list[Row | tuple[str, str, str]] = []
    for row in rows:
        if row.failed:
            out.append(row)
            continue
        key = (row.model, row.loss, BASELINE if row.is_baseline else "run")
        if key not in groups:
            groups[key] = []
            out.append(key)
        groups[key].append(row)
    return [item if isinstance(item, Row) else _mean_row(groups[item]) for item in out]


def _mean_row(runs: list[Row]) -> Row:
    if len(runs) == 1:
        return runs[0]
    metrics: dict[str, float] = {}
    for key in dict.fromkeys(k for r in runs for k in r.metrics):
        values = [v for r in runs if not math.isnan(v := r.value(key))]
        metrics[key] = float(np.mean(values)) if values else math.nan
        metrics[key + STD] = float(np.std(values)) if values else math.nan
    metrics[RUNS] = float(len(runs))
    first = runs[0]
    return Row(model=first.model, loss=first.loss, status=first.status, metrics=metrics)


# --------------------------------------------------------------------------- table
def comparison_table(rows: Sequence[Row], metric: str) -> pd.DataFrame:
    """One row per run and per baseline, best first by ``metric``.

    Order: rows with a value for ``metric`` (runs and baselines alike, higher first unless
    the name says loss/ece/error), then rows without one (still running, metric not logged),
    then failed rows with their error. A tie on ``metric`` is broken as registration breaks
    it (``training.tracking.ranking``): the row placed below a tie names the figure that put it
    there in ``tie_broken_by``, and those figures are shown; a full tie keeps the input order.
    Missing values are NaN.
    """
    present = {k for row in rows for k in row.metrics}
    order, ties = _ranked(rows, metric)
    breakers = [f for f in ranking_figures(metric)[1:] if f in present and f in ties.values()]
    shown = [metric, *breakers] + [c for c in METRIC_COLUMNS
                                   if c not in (metric, *breakers) and c in present]
    metric_cols = [c for m in shown for c in (m, m + STD) if c == m or c in present]
    metric_cols += [RUNS] if RUNS in present else []
    columns = [*TEXT_COLUMNS, *metric_cols, *((TIE,) if ties else ()), *TAIL_COLUMNS]
    records = []
    for i in order:
        row = rows[i]
        rec: dict[str, object] = {
            "model": row.model,
            "loss": "-" if row.is_baseline else row.loss,
            "status": row.status,
        }
        rec.update({c: row.value(c) for c in metric_cols})
        if ties:
            rec[TIE] = ties.get(i, "")
        rec.update(run_id=row.run_id, error=row.error)
        records.append(rec)
    df = pd.DataFrame.from_records(records, columns=columns)
    for c in metric_cols:
        df[c] = df[c].astype(float)
    if RUNS in df:
        df[RUNS] = df[RUNS].fillna(1.0)
    df.attrs.update(metric=metric, higher_is_better=higher_is_better(metric))
    return df


def _ranked(rows: Sequence[Row], metric: str) -> tuple[list[int], dict[int, str]]:
    """The rows' indices in table order, and for each row placed below one it ties with on
    ``metric``, the figure that decided (``order``: every figure tied)."""
    def group(row: Row) -> int:
        return 2 if row.failed else 1 if math.isnan(row.value(metric)) else 0

    order = sorted(range(len(rows)), key=lambda i: (group(rows[i]),
                                                    rank_key(rows[i].metrics, metric)
                                                    if group(rows[i]) == 0 else (), i))
    ties: dict[int, str] = {}
    for above, below in zip(order, order[1:]):
        if group(rows[above]) == group(rows[below]) == 0:
            why = broken_by(rows[above].metrics, rows[below].metrics, metric)
            if why is not None:
                ties[below] = why
    return order, ties


def _is_failed(status: object) -> bool:
    return str(status).upper() in FAILED_STATUSES


def _metric_columns(df: pd.DataFrame) -> list[str]:
    """The metric columns a person reads: each std is shown in its metric's cell."""
    return [c for c in df.columns if c not in (*TEXT_COLUMNS, *TAIL_COLUMNS, TIE)
            and not c.endswith(STD)]


def _cell(rec: dict, column: str, decimals: int = 4) -> str:
    """``0.8531 ± 0.0270`` where the row is a mean over seeds, else the number; runs as an int."""
    if column == RUNS:
        return _number(rec[column], 0)
    text = _number(rec[column], decimals)
    std = _number(rec.get(column + STD), decimals)
    return text if std == MISSING or text == MISSING else f"{text} ± {std}"


def _number(value: object, decimals: int = 4) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return MISSING
    return MISSING if math.isnan(v) else f"{v:.{decimals}f}"


def _text(value: object) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def to_markdown(df: pd.DataFrame) -> str:
    """A GitHub Markdown table: numbers to 4 decimals, failed rows say why in ``status``."""
    metric_cols = _metric_columns(df)
    tie = [TIE] if TIE in df else []
    header = ["model", "loss", "status", *metric_cols, *tie, "run_id"]
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join(["---"] * 3 + ["---:"] * len(metric_cols) + ["---"] * (1 + len(tie)))
             + "|"]
    for rec in df.to_dict("records"):
        status = _text(rec["status"])
        if _is_failed(status):
            reason = first_line(_text(rec.get("error")))
            status = f"failed: {reason}" if reason else "failed"
        cells = [_text(rec["model"]), _text(rec["loss"]), status,
                 *(_cell(rec, c) for c in metric_cols), *(_text(rec[c]) for c in tie),
                 _text(rec.get("run_id"))]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def write_tables(df: pd.DataFrame, folder: Path, note: str = "") -> tuple[Path, Path]:
    """``comparison.csv`` (full precision, for machines) and ``comparison.md`` (for people,
    with ``note`` under the table: how the ranking chose)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = folder / names.COMPARISON_CSV, folder / names.COMPARISON_MD
    df.to_csv(csv_path, index=False)
    md_path.write_text(to_markdown(df) + (f"\n{note}\n" if note else ""), encoding="utf-8")
    log.info("comparison table written to %s and %s", csv_path, md_path)
    return csv_path, md_path


def format_table(df: pd.DataFrame) -> str:
    """Fixed-width text for the end of a sweep: rank, names, metrics, the error of failures."""
    metric_cols = _metric_columns(df)
    tie = [TIE] if TIE in df else []
    header = ["#", "model", "loss", "status", *metric_cols, *tie]
    body: list[list[str]] = []
    errors: list[str] = []
    rank = 0
    for rec in df.to_dict("records"):
        failed = _is_failed(rec["status"])
        has_value = bool(metric_cols) and _number(rec[metric_cols[0]]) != MISSING
        if has_value and not failed:
            rank += 1
        cells = [str(rank) if has_value and not failed else "-", _text(rec["model"]),
                 _text(rec["loss"]),
                 _text(rec["status"]).lower() if failed else _text(rec["status"])]
        cells += [_cell(rec, c, 1 if c.endswith("_time_s") else 4) for c in metric_cols]
        cells += [_text(rec[c]) for c in tie]
        body.append(cells)
        if failed:
            errors.append(f"  {rec['model']}-{rec['loss']}: {first_line(_text(rec.get('error')))}")
    numeric = [False] * 4 + [True] * len(metric_cols) + [False] * len(tie)
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if num else c.ljust(w)
                         for c, w, num in zip(cells, widths, numeric)).rstrip()

    out = [line(header), "  ".join("-" * w for w in widths), *map(line, body)]
    if df.attrs.get("metric"):
        better = "higher" if df.attrs.get("higher_is_better", True) else "lower"
        breakers = ", then ".join(ranking_figures(df.attrs["metric"])[1:])
        out.insert(0, f"ranked by {df.attrs['metric']} ({better} is better)"
                   + (f"; ties broken by {breakers}" if breakers else ""))
    if errors:
        out += ["failed:", *errors]
    return "\n".join(out)


# --------------------------------------------------------------------------- heatmap
@dataclass
class _Cell:
    """What one model × loss cell shows."""

    mean: float = math.nan
    std: float = math.nan
    n: int = 0
    label: str = MISSING  # shown when there is no value: "failed", "running", "—"
    failed: bool = False


def _cells(rows: Iterable[Row], metric: str) -> tuple[list[str], list[str], dict]:
    """Models and losses in first-seen order; each cell the mean (± std) over its runs."""
    models: list[str] = []
    losses: list[str] = []
    by_cell: dict[tuple[str, str], list[Row]] = defaultdict(list)
    for row in rows:
        if row.model not in models:
            models.append(row.model)
        if row.loss not in losses:
            losses.append(row.loss)
        by_cell[(row.model, row.loss)].append(row)
    cells: dict[tuple[str, str], _Cell] = {}
    for key, runs in by_cell.items():
        values = [v for r in runs if not r.failed and not math.isnan(v := r.value(metric))]
        if values:
            cells[key] = _Cell(float(np.mean(values)), float(np.std(values)), len(values))
        elif any(r.failed for r in runs):
            cells[key] = _Cell(label="failed", failed=True)
        else:
            status = runs[-1].status.lower()
            cells[key] = _Cell(label=MISSING if status == "finished" else status)
    return models, losses, cells


def _ink(rgba: Sequence[float]) -> str:
    """Black or white text, whichever reads on this colour."""
    r, g, b = rgba[:3]
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"


def plot_heatmap(rows: Sequence[Row], metric: str, path: Path) -> Path:
    """Models (rows) × losses (columns) coloured by ``metric``, value written in each cell.

    Failed cells are hatched grey, missing ones light grey with a dash. Baselines get their
    own strip under the grid on the same colour scale (and a line on the colour bar), and
    cells that beat every baseline are in bold, so "is learning worth it" reads at a glance.
    Several runs of one combination (seeds) show their mean ± std.
    """
    path = Path(path)
    trained = [r for r in rows if not r.is_baseline]
    baselines = [(r.model, r.value(metric)) for r in rows if r.is_baseline]
    models, losses, cells = _cells(trained, metric)
    higher = higher_is_better(metric)

    base_values = [v for _, v in baselines if not math.isnan(v)]
    finite = [c.mean for c in cells.values() if not math.isnan(c.mean)] + base_values
    vmin, vmax = (min(finite), max(finite)) if finite else (0.0, 1.0)
    if vmax - vmin < 1e-9:
        vmin, vmax = vmin - 0.05, vmax + 0.05
    cmap = plt.get_cmap("viridis" if higher else "viridis_r")
    norm = matplotlib.colors.Normalize(vmin=vmin, vmax=vmax)
    best_base = (max(base_values) if higher else min(base_values)) if base_values else None

    n_models, n_losses = max(1, len(models)), max(1, len(losses))
    n_cols = max(n_losses, len(baselines))  # the strip's cells are as wide as the grid's
    width = max(6.5, 2.4 + 1.0 * n_cols)
    height = 2.0 + 0.55 * (n_models + (1.6 if baselines else 0))
    fig = plt.figure(figsize=(width, height), layout="constrained")
    grid = fig.add_gridspec(2 if baselines else 1, 1,
                            height_ratios=[n_models, 1] if baselines else None)
    ax = fig.add_subplot(grid[0])
    font = 8 if n_losses <= 8 else 7

    data = np.full((n_models, n_losses), np.nan)
    for (m, loss), c in cells.items():
        data[models.index(m), losses.index(loss)] = c.mean
    image = ax.imshow(np.ma.masked_invalid(data), cmap=cmap, norm=norm, aspect="auto")
    best = None
    if finite and cells:
        pick = np.nanargmax if higher else np.nanargmin
        if not np.all(np.isnan(data)):
            best = np.unravel_index(pick(data), data.shape)
    for (m, loss), c in cells.items():
        i, j = models.index(m), losses.index(loss)
        if math.isnan(c.mean):
            face = "#d9d9d9" if c.failed else "#f2f2f2"
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor=face,
                                   hatch="///" if c.failed else None, edgecolor="#9a9a9a", lw=0))
            ax.text(j, i, c.label, ha="center", va="center", fontsize=font,
                    color="#b2182b" if c.failed else "#555555",
                    bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.8)
                    if c.failed else None)
            continue
        text = f"{c.mean:.3f}" + (f"\n±{c.std:.3f} (n={c.n})" if c.n > 1 else "")
        beats = best_base is not None and (c.mean > best_base if higher else c.mean < best_base)
        ax.text(j, i, text, ha="center", va="center", fontsize=font,
                color=_ink(cmap(norm(c.mean))), fontweight="bold" if beats else "normal")
    for (m, loss) in [(a, b) for a in models for b in losses if (a, b) not in cells]:
        i, j = models.index(m), losses.index(loss)
        ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor="#f2f2f2", lw=0))
        ax.text(j, i, MISSING, ha="center", va="center", fontsize=font, color="#555555")
    if best is not None:
        ax.add_patch(Rectangle((best[1] - 0.5, best[0] - 0.5), 1, 1, fill=False,
                               edgecolor="#d62728", lw=2.5))
    ax.set_xticks(range(len(losses)), losses, rotation=30 if n_losses > 4 else 0,
                  ha="right" if n_losses > 4 else "center", fontsize=9)
    ax.set_yticks(range(len(models)), models, fontsize=9)
    ax.set_xticks(np.arange(-0.5, n_losses, 1), minor=True)
    ax.set_yticks(np.arange(-0.5, n_models, 1), minor=True)
    ax.grid(which="minor", color="white", lw=1.5)
    ax.tick_params(which="minor", length=0)
    ax.set(xlabel="loss", ylabel="model", xlim=(-0.5, n_losses - 0.5), ylim=(n_models - 0.5, -0.5))
    if not trained:
        ax.text((n_losses - 1) / 2, (n_models - 1) / 2, "no runs", ha="center", va="center")

    title = f"{metric}: model × loss ({'higher' if higher else 'lower'} is better)"
    if baselines:
        listed = ", ".join(f"{name} {_number(v, 3)}" for name, v in baselines)
        title += f"\nbaselines without learning: {listed}"
        title += "; bold = beats every baseline" if best_base is not None else ""
    ax.set_title(title, fontsize=10)
    cbar = fig.colorbar(image, ax=ax, shrink=0.9, pad=0.02)
    cbar.ax.tick_params(labelsize=8)
    for _name, v in baselines:
        if not math.isnan(v):
            cbar.ax.axhline(v, color="#d62728", lw=1.5)  # where the baselines sit

    if baselines:
        ax_b = fig.add_subplot(grid[1])
        values = np.full((1, n_cols), np.nan)
        values[0, : len(baselines)] = [v for _, v in baselines]
        ax_b.imshow(np.ma.masked_invalid(values), cmap=cmap, norm=norm, aspect="auto")
        for j, (name, v) in enumerate(baselines):
            color = "#555555" if math.isnan(v) else _ink(cmap(norm(v)))
            ax_b.text(j, 0, f"{name}\n{_number(v, 3)}", ha="center", va="center",
                      fontsize=font, color=color)
        ax_b.set_xticks(np.arange(-0.5, n_cols, 1), minor=True)
        ax_b.grid(which="minor", axis="x", color="white", lw=1.5)
        ax_b.tick_params(which="both", length=0)
        ax_b.set_xticks([])
        ax_b.set_yticks([0], ["baselines\n(red on bar)"], fontsize=8)
        ax_b.set_xlim(-0.5, n_cols - 0.5)
        ax_b.set_ylim(0.5, -0.5)
        for spine in ax_b.spines.values():
            spine.set_visible(False)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    log.info("heatmap of %s written to %s", metric, path)
    return path
