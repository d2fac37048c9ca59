"""Tests for training.pipeline.compare: the sweep's comparison table, its files and its heatmap."""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib.image as mpimg
import pandas as pd
import pytest

from training.pipeline.compare import (Row, comparison_table, format_table, mean_over_seeds,
                                       plot_heatmap, to_markdown, write_tables)

METRIC = "test_map_at_r"


def _run(model: str, loss: str, map_at_r: float, **extra: float) -> Row:
    metrics = {METRIC: map_at_r, "test_precision_at_1": 0.9, "test_accuracy": 0.8,
               "train_time_s": 12.5, **extra}
    return Row(model, loss, "FINISHED", metrics, run_id=f"{model}-{loss}-id")


@pytest.fixture
def rows() -> list[Row]:
    return [
        _run("resnet18", "arcface", 0.62),
        Row("resnet18", "triplet", "FAILED", {}, run_id="r-t-id",
            error="ValueError: batch too small | for P×K\nTraceback (most recent call last): ..."),
        _run("convnext_atto", "arcface", 0.71),
        _run("convnext_atto", "triplet", 0.48),
        Row("mobilenetv3_small_100", "arcface", "RUNNING", {}, run_id="m-a-id"),
        Row.baseline("pixels", {METRIC: 0.55, "test_precision_at_1": 0.97}),
        Row.baseline("pca", {METRIC: 0.50, "test_precision_at_1": 0.96}),
    ]


def test_order_best_first_failed_last(rows: list[Row]) -> None:
    df = comparison_table(rows, METRIC)
    assert list(zip(df["model"], df["loss"])) == [
        ("convnext_atto", "arcface"),
        ("resnet18", "arcface"),
        ("pixels", "-"),  # baselines ranked among the runs by their value
        ("pca", "-"),
        ("convnext_atto", "triplet"),
        ("mobilenetv3_small_100", "arcface"),  # no value yet
        ("resnet18", "triplet"),  # failed: last, with its error
    ]
    assert list(df["status"])[2:4] == ["baseline", "baseline"]
    assert df["error"].iloc[-1].startswith("ValueError: batch too small")
    assert math.isnan(df[METRIC].iloc[-1])
    assert df["run_id"].iloc[0] == "convnext_atto-arcface-id"


def test_columns(rows: list[Row]) -> None:
    df = comparison_table(rows, METRIC)
    assert list(df.columns) == [
        "model", "loss", "status", METRIC, "test_precision_at_1", "test_accuracy",
        "train_time_s", "run_id", "error",
    ]
    # a baseline has no training time and no accuracy: NaN, not 0
    pixels = df[df["model"] == "pixels"].iloc[0]
    assert math.isnan(pixels["train_time_s"]) and math.isnan(pixels["test_accuracy"])
    # the sort metric leads even when it is one of the standard columns
    df = comparison_table(rows, "test_precision_at_1")
    assert list(df.columns)[3:5] == ["test_precision_at_1", METRIC]
    # every standard column when some row has it, in the documented order
    full = {k: 0.5 for k in ("test_precision_at_1", "test_map_at_r", "test_r_precision",
                             "test_nmi", "test_accuracy", "train_time_s")}
    df = comparison_table([Row("m", "l", "FINISHED", full)], "test_nmi")
    assert list(df.columns) == [
        "model", "loss", "status", "test_nmi", "test_precision_at_1", "test_map_at_r",
        "test_r_precision", "test_accuracy", "train_time_s", "run_id", "error",
    ]


def test_baseline_loss_is_a_dash() -> None:
    df = comparison_table([Row("pixels", "whatever", "baseline", {METRIC: 0.5})], METRIC)
    assert (df["model"].iloc[0], df["loss"].iloc[0]) == ("pixels", "-")


def test_lower_is_better_metric() -> None:
    rows = [
        Row("a", "arcface", "FINISHED", {"test_ece": 0.10}),
        Row("b", "arcface", "FAILED", {}, error="boom"),
        Row("c", "arcface", "FINISHED", {"test_ece": 0.02}),
        Row.baseline("pixels", {"test_ece": 0.05}),
        Row("d", "arcface", "FINISHED", {}),
    ]
    df = comparison_table(rows, "test_ece")
    assert list(df["model"]) == ["c", "pixels", "a", "d", "b"]
    assert df.attrs["higher_is_better"] is False
    assert "lower is better" in format_table(df)


def test_empty_table() -> None:
    df = comparison_table([], METRIC)
    assert len(df) == 0 and METRIC in df.columns
    assert "model" in format_table(df)


def test_tables_written_and_parseable(rows: list[Row], tmp_path: Path) -> None:
    df = comparison_table(rows, METRIC)
    csv_path, md_path = write_tables(df, tmp_path / "tables")
    assert (csv_path.name, md_path.name) == ("comparison.csv", "comparison.md")
    back = pd.read_csv(csv_path)
    assert list(back.columns) == list(df.columns)
    pd.testing.assert_frame_equal(back[["model", "loss", "status"]],
                                  df[["model", "loss", "status"]])
    pd.testing.assert_series_equal(back[METRIC], df[METRIC])
    assert back["error"].iloc[-1] == df["error"].iloc[-1]  # multi-line text survives

    lines = md_path.read_text().splitlines()
    assert lines[0].startswith("| model | loss | status | test_map_at_r |")
    assert len(lines) == 2 + len(rows)
    assert all(line.startswith("|") and line.endswith("|") for line in lines)
    assert "| 0.7100 |" in lines[2]  # 4 decimals
    assert "failed: ValueError: batch too small \\| for P×K |" in lines[-1]  # first line only
    assert "Traceback" not in md_path.read_text()
    # the same number of cells on every line (escaped pipes are not separators)
    widths = {len(line.replace("\\|", "").split("|")) for line in lines}
    assert len(widths) == 1


VAL = "best_val_map_at_r"


def _tied(model: str, p1: float, loss: float, test: float) -> Row:
    """A run tied at a perfect validation MAP@R; its test figure must never decide."""
    return Row(model, "arcface", "FINISHED", {VAL: 1.0, "best_val_precision_at_1": p1,
                                              "train_loss": loss, METRIC: test},
               run_id=f"{model}-id")


def test_a_tie_is_broken_by_a_second_validation_figure_then_the_loss() -> None:
    rows = [_tied("first", 0.95, 0.30, 0.99),  # first in order, best on test: not a reason
            _tied("by_p1", 1.00, 0.90, 0.50),
            _tied("by_loss", 0.95, 0.10, 0.60),
            _tied("same", 0.95, 0.30, 0.70),
            Row("lower", "arcface", "FINISHED", {VAL: 0.9, "train_loss": 0.01}, run_id="l")]
    df = comparison_table(rows, VAL)
    assert list(df["model"]) == ["by_p1", "by_loss", "first", "same", "lower"]
    assert list(df["tie_broken_by"]) == ["", "best_val_precision_at_1", "train_loss", "order", ""]
    assert list(df.columns)[3:6] == [VAL, "best_val_precision_at_1", "train_loss"]
    text = format_table(df)
    assert text.splitlines()[0] == ("ranked by best_val_map_at_r (higher is better); ties broken "
                                    "by best_val_precision_at_1, then train_loss")
    assert "tie_broken_by" in text and text.splitlines()[4].rstrip().endswith(
        "best_val_precision_at_1")
    assert "| best_val_precision_at_1 |" in to_markdown(df)
    # registration picks the same run, by the same figures
    from types import SimpleNamespace

    from training.tracking.registration import best_run

    runs = [SimpleNamespace(data=SimpleNamespace(metrics=r.metrics),
                            info=SimpleNamespace(start_time=i, run_id=r.run_id, run_name=r.model))
            for i, r in enumerate(rows)]
    assert best_run(runs, VAL).info.run_name == "by_p1"
    assert best_run([runs[0], runs[2]], VAL).info.run_name == "by_loss"  # P@1 tied: the loss
    assert best_run([runs[3], runs[0]], VAL).info.run_name == "first"  # all tied: the earlier


def test_format_table(rows: list[Row]) -> None:
    text = format_table(comparison_table(rows, METRIC))
    lines = text.splitlines()
    assert lines[0] == "ranked by test_map_at_r (higher is better); ties broken by train_loss"
    body = lines[3:3 + len(rows)]
    assert body[0].split()[:3] == ["1", "convnext_atto", "arcface"]
    assert body[2].split()[:4] == ["3", "pixels", "-", "baseline"]
    assert body[-1].split()[:4] == ["-", "resnet18", "triplet", "failed"]
    assert "0.7100" in body[0]
    assert "resnet18-triplet: ValueError: batch too small" in text
    # fixed width: every metric column ends at the same place
    header_end = len(lines[1].rstrip())
    assert all(len(line) <= header_end for line in body)


def test_heatmap(rows: list[Row], tmp_path: Path) -> None:
    path = plot_heatmap(rows, METRIC, tmp_path / "heatmap.png")
    assert path.exists() and path.stat().st_size > 10_000
    image = mpimg.imread(path)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 400
    assert image.std() > 0.05  # not a blank canvas


def test_heatmap_large_sweep_and_repeats(tmp_path: Path) -> None:
    """~6 models × 12 losses with failures, gaps and repeated seeds still draws."""
    models = [f"model_{i}" for i in range(6)]
    losses = [f"loss_{j}" for j in range(12)]
    rows = []
    for i, m in enumerate(models):
        for j, loss in enumerate(losses):
            if (i + j) % 7 == 0:
                rows.append(Row(m, loss, "FAILED", error="boom"))
            elif (i * j) % 11 != 5:
                rows.append(_run(m, loss, 0.3 + 0.05 * ((i + 2 * j) % 9)))
    rows += [_run("model_0", "loss_1", 0.9), Row.baseline("pixels", {METRIC: 0.5})]
    path = plot_heatmap(rows, METRIC, tmp_path / "big.png")
    height, width = mpimg.imread(path).shape[:2]
    assert width > 1000 and width > height


def test_heatmap_without_values(tmp_path: Path) -> None:
    """All failed, a metric nobody logged, or nothing at all: a figure, not a crash."""
    failed = [Row("resnet18", "arcface", "FAILED", error="x"), Row("resnet18", "cosface", "KILLED")]
    assert plot_heatmap(failed, METRIC, tmp_path / "failed.png").stat().st_size > 5_000
    only_base = [Row.baseline("pixels", {METRIC: 0.4}), Row.baseline("pca", {})]
    assert plot_heatmap(only_base, "test_nmi", tmp_path / "base.png").exists()
    assert plot_heatmap([], METRIC, tmp_path / "empty.png").exists()


def test_mean_over_seeds_gives_one_row_per_combination_with_its_spread() -> None:
    seeds = [Row("vgg", "arcface", "FINISHED", {METRIC: v, "train_time_s": t}, run_id=f"r{i}",
                 seed=i) for i, (v, t) in enumerate([(0.80, 10.0), (0.90, 20.0), (0.85, 30.0)])]
    rows = seeds + [
        Row("vgg", "arcface", "FAILED", {}, run_id="bad", error="boom", seed=3),
        _run("resnet18", "arcface", 0.70),  # run once: unchanged
        Row.baseline("pixels", {METRIC: 0.70}, seed=0),
        Row.baseline("pixels", {METRIC: 0.74}, seed=1),
    ]
    merged = mean_over_seeds(rows)
    assert [(r.model, r.status) for r in merged] == [
        ("vgg", "FINISHED"), ("vgg", "FAILED"), ("resnet18", "FINISHED"), ("pixels", "baseline")]
    vgg = merged[0].metrics
    assert vgg[METRIC] == pytest.approx(0.85) and vgg["runs"] == 3
    assert vgg[METRIC + "_std"] == pytest.approx(pd.Series([0.8, 0.9, 0.85]).std(ddof=0))
    assert vgg["train_time_s"] == pytest.approx(20.0)
    assert merged[2] is rows[4]
    assert merged[3].metrics[METRIC] == pytest.approx(0.72) and merged[3].metrics["runs"] == 2

    df = comparison_table(merged, METRIC)
    assert list(df.columns)[3:-2] == [METRIC, METRIC + "_std", "test_precision_at_1",
                                      "test_accuracy", "train_time_s", "train_time_s_std", "runs"]
    assert list(df["runs"]) == [3, 2, 1, 1]  # a single run counts one
    markdown = to_markdown(df)
    assert "| vgg | arcface | FINISHED | 0.8500 ± 0.0408 |" in markdown
    assert "| resnet18 | arcface | FINISHED | 0.7000 |" in markdown
    text = format_table(df)
    assert "0.8500 ± 0.0408" in text and "20.0 ± 8.2" in text
