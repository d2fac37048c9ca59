"""Recommending a model for new data: the probe finds the swept data set it resembles."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from training.pipeline.recommend import RecommendConfig, recommend
from training.pipeline.sweep import SweepConfig, run_sweep
from zoo.probe import frechet_distance, probe_images

TINY = dict(models="mobilenetv3_small_100", epochs=1, image_size=16, batch_size=32, plots=False,
            embedding_dim=16, workers=1, register=False, experiment="swept", checkpoint=False)


def _gratings(folder: Path, seed: int, classes: int = 5, per_class: int = 16) -> Path:
    """Images of oriented stripes, one orientation per class, with phase and noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:32, 0:32]
    for c in range(classes):
        (folder / f"angle{c}").mkdir(parents=True)
        angle = np.pi * c / classes
        for i in range(per_class):
            wave = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) / 2 + rng.uniform(0, 6))
            pixels = np.clip(127 + 100 * wave + rng.normal(0, 20, wave.shape), 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(folder / f"angle{c}" / f"{i}.png")
    return folder


def _handwriting(folder: Path, per_class: int = 12) -> Path:
    """scikit-learn's digits as a folder of PNGs, shifted by a pixel: digits, not the set."""
    digits = load_digits()
    for c in range(10):
        (folder / str(c)).mkdir(parents=True)
        for i, image in enumerate(digits.images[digits.target == c][-per_class:]):
            shifted = np.roll(image, 1, axis=1) * (255 / 16)
            Image.fromarray(shifted.astype(np.uint8)).resize((24, 24)).save(
                folder / str(c) / f"{i}.png")
    return folder


def test_probe_is_fixed_and_ignores_brightness() -> None:
    import torch

    x = torch.rand(20, 3, 32, 32)
    assert np.allclose(probe_images(x), probe_images(x.clone()))
    assert np.allclose(probe_images(x), probe_images(x * 0.5 + 0.2), atol=1e-4)
    a, b = probe_images(x), probe_images(torch.rand(20, 3, 32, 32))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(a, b) >= 0


def test_recommendation_follows_the_resemblance(tracking_uri: str, tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    run_sweep(SweepConfig.of(data="digits", losses="softmax,cosface", **TINY))
    run_sweep(SweepConfig.of(data=str(_gratings(tmp_path / "stripes", seed=0)),
                             losses="arcface,supcon", **TINY))
    capsys.readouterr()

    like_digits = recommend(RecommendConfig(data=str(_handwriting(tmp_path / "scans"))))
    assert [n.dataset for n in like_digits] == ["digits", "stripes"]
    assert like_digits[0].distance < like_digits[1].distance
    assert {loss for _, loss, _ in like_digits[0].best} == {"softmax", "cosface"}
    out = capsys.readouterr().out
    assert "1. digits: distance" in out and "mobilenetv3_small_100 + " in out
    assert (f"start with: mlflow run . -e sweep --env-manager local -P data={tmp_path / 'scans'} "
            "-P models=mobilenetv3_small_100 -P losses=") in out

    like_stripes = recommend(RecommendConfig(data=str(_gratings(tmp_path / "waves", seed=1)),
                                             neighbours=1, top=1))
    assert [n.dataset for n in like_stripes] == ["stripes"]
    assert len(like_stripes[0].best) == 1 and like_stripes[0].best[0][1] in ("arcface", "supcon")

    with pytest.raises(LookupError, match="no finished sweep of tabular data with a probe"):
        recommend(RecommendConfig(data="emitters"))
