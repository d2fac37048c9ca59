"""Tests for training.pipeline.baselines: pixels and PCA rows measured like a training run."""
from __future__ import annotations

import dataclasses
import math
from typing import Iterator

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.decomposition import PCA
from threadpoolctl import threadpool_limits

from training.pipeline.baselines import (
    BASELINES,
    PCA_MAX_COMPONENTS,
    baseline_metrics,
    embed_baseline,
    fit_baseline,
    pca_components,
)
from zoo.data import LazyImages, LoadedData, Split, Splits, load_data, split_data
from zoo.metrics import evaluate


@pytest.fixture(scope="module", autouse=True)
def _one_blas_thread() -> Iterator[None]:
    """scikit-learn's k-means (inside ``evaluate``) on 3072-d pixels takes 12 s with two
    OpenMP threads on two shared cores and 0.4 s with one (measured here)."""
    with threadpool_limits(1):
        yield


@pytest.fixture(scope="module")
def digits_data() -> LoadedData:
    return load_data("digits")


@pytest.fixture(scope="module")
def digits(digits_data: LoadedData) -> Splits:
    return split_data(digits_data)


@pytest.fixture(scope="module")
def emitters() -> Splits:
    return split_data(load_data("emitters", seed=0))


@pytest.fixture(scope="module")
def pixels_digits(digits: Splits) -> dict[str, float]:
    return baseline_metrics(digits, "pixels")


@pytest.fixture(scope="module")
def test_keys() -> set[str]:
    """The keys a training run's ``evaluate(..., logits, prefix="test_")`` gives (tiny set)."""
    gen = torch.Generator().manual_seed(0)
    emb, y = torch.randn(30, 4, generator=gen), torch.arange(30) % 3
    return set(evaluate(emb, y, torch.randn(30, 3, generator=gen), prefix="test_"))


def test_pixels_on_digits_match_the_reference(pixels_digits: dict[str, float]) -> None:
    # DESIGN.md: raw pixels P@1 0.97, MAP@R 0.53 on digits (0.947 / 0.546 measured here)
    assert pixels_digits["test_precision_at_1"] > 0.93
    assert 0.35 < pixels_digits["test_map_at_r"] < 0.7
    assert pixels_digits["test_accuracy"] > 0.8  # nearest class mean on pixels
    assert 0.0 <= pixels_digits["test_ece"] < 0.2  # calibrated on val


def test_keys_are_those_of_a_run(pixels_digits: dict[str, float], test_keys: set[str]) -> None:
    assert set(pixels_digits) == test_keys
    assert all(math.isfinite(v) for v in pixels_digits.values())


def test_pca_on_digits(digits: Splits, pixels_digits: dict[str, float]) -> None:
    metrics = baseline_metrics(digits, "pca")
    assert set(metrics) == set(pixels_digits)
    assert metrics["test_precision_at_1"] > 0.9
    assert 0.35 < metrics["test_map_at_r"] < 0.7
    emb = embed_baseline(digits, "pca")
    assert set(emb) == {"train", "val", "test"}
    dim = emb["test"].shape[1]
    assert 1 <= dim <= PCA_MAX_COMPONENTS
    assert all(e.shape == (len(getattr(digits, k)), dim) for k, e in emb.items())
    assert torch.allclose(emb["test"].norm(dim=1), torch.ones(len(digits.test)), atol=1e-5)


def test_open_metrics_with_held_out_classes(digits_data: LoadedData, test_keys: set[str]) -> None:
    splits = split_data(digits_data, open_set=0.3)
    metrics = baseline_metrics(splits, "pca")
    open_keys = {k for k in metrics if k.startswith("open_")}
    gen = torch.Generator().manual_seed(0)
    expected = set(evaluate(torch.randn(30, 4, generator=gen), torch.arange(30) % 3, None,
                            prefix="open_"))
    assert open_keys == expected
    assert set(metrics) - open_keys == test_keys
    assert metrics["open_precision_at_1"] > 0.8  # unseen digits still cluster in pixel space
    assert embed_baseline(splits, "pca")["open"].shape[0] == len(splits.open)


@pytest.mark.parametrize("name", BASELINES)
def test_tabular_rows(emitters: Splits, name: str, test_keys: set[str]) -> None:
    metrics = baseline_metrics(emitters, name)
    assert set(metrics) == test_keys
    chance = 1 / emitters.num_classes
    assert metrics["test_precision_at_1"] > 2 * chance
    assert metrics["test_accuracy"] > 2 * chance


def test_pca_is_fitted_on_train_only(emitters: Splits) -> None:
    """Replacing val/test/open data changes their embeddings, never the basis or train's."""
    gen = torch.Generator().manual_seed(1)
    noisy = dataclasses.replace(
        emitters,
        val=Split(torch.randn(emitters.val.x.shape, generator=gen) * 50, emitters.val.y),
        test=Split(torch.randn(emitters.test.x.shape, generator=gen) * 50, emitters.test.y),
    )
    before, after = embed_baseline(emitters, "pca"), embed_baseline(noisy, "pca")
    assert torch.equal(before["train"], after["train"])
    fitted = fit_baseline(emitters.train.x, "pca")
    assert torch.equal(after["test"], fitted(noisy.test.x))
    assert torch.allclose(fitted.mean, emitters.train.x.double().mean(0))


def test_pca_matches_scikit_learn(emitters: Splits) -> None:
    """Same subspace and projections (up to sign) as sklearn's PCA, both Gram branches."""
    gen = torch.Generator().manual_seed(2)
    wide = torch.randn(40, 1, 6, 6, generator=gen) @ torch.randn(6, 6, generator=gen)
    for x in (emitters.train.x, wide):  # more rows than features, and fewer
        fitted = fit_baseline(x, "pca")
        flat = x.reshape(len(x), -1).double().numpy()
        ref = PCA(n_components=fitted.dim, svd_solver="full").fit(flat)
        ours = ((torch.from_numpy(flat) - fitted.mean) @ fitted.components).numpy()
        theirs = ref.transform(flat)
        signs = np.sign((ours * theirs).sum(0))
        np.testing.assert_allclose(ours, theirs * signs, atol=1e-6)
        assert fitted.explained_variance == pytest.approx(ref.explained_variance_ratio_.sum())


def test_component_count() -> None:
    flat = np.ones(500)  # variance spread evenly: the cap decides
    assert pca_components(10_000, flat, 3072) == PCA_MAX_COMPONENTS
    assert pca_components(20, flat, 3072) == 19  # centred train data has rank n - 1
    assert pca_components(1_000, flat[:12], 12) == 12
    assert pca_components(1_000, np.array([90.0, 6.0, 3.0, 1.0]), 4) == 2  # 96% >= 95%
    assert pca_components(2, np.zeros(3), 3) == 1


def test_pixels_is_the_centred_input(emitters: Splits) -> None:
    emb = embed_baseline(emitters, "pixels")
    centred = emitters.test.x.double() - emitters.train.x.double().mean(0)
    expected = torch.nn.functional.normalize(centred, dim=1).float()
    assert torch.allclose(emb["test"], expected, atol=1e-6)


def test_lazy_images_give_the_same_embedding(tmp_path) -> None:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(12):
        path = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8), "L").save(path)
        paths.append(path)
    lazy = LazyImages(paths, 1, (8, 8), mean=[0.5], std=[0.25], workers=1)
    for name in BASELINES:
        a, b = fit_baseline(lazy, name), fit_baseline(lazy.load(), name)
        assert torch.allclose(a.mean, b.mean)
        assert torch.allclose(a(lazy), b(lazy.load()), atol=1e-6)


@pytest.mark.parametrize("call", [baseline_metrics, embed_baseline])
def test_unknown_name(emitters: Splits, call) -> None:
    with pytest.raises(ValueError, match="pixels, pca"):
        call(emitters, "eigenfaces")
