"""Metrics: hand-computed toys for every metric, and pml's AccuracyCalculator as the reference."""

from __future__ import annotations

import math

import faiss
import numpy as np
import pytest
import torch
from sklearn.metrics import normalized_mutual_info_score, roc_auc_score

from zoo.metrics import (
    accuracy,
    cluster_accuracy,
    clustering_metrics,
    confusion_matrix,
    evaluate,
    expected_calibration_error,
    hungarian_accuracy,
    leave_one_out_knn,
    map_at_r,
    metric_names,
    nmi,
    pair_scores,
    precision_at_1,
    r_precision,
    recall_at_k,
    retrieval_metrics,
    roc_auc,
    tar_at_far,
    top_k_accuracy,
    verification_metrics,
)
from zoo.metrics._utils import far_key


def on_circle(degrees: list[float], radii: list[float] | None = None) -> np.ndarray:
    """2-D points at these angles; cosine order = angular order, whatever the radius."""
    a = np.deg2rad(np.asarray(degrees, dtype=np.float64))
    r = np.ones(len(a)) if radii is None else np.asarray(radii)
    return np.stack([np.cos(a), np.sin(a)], axis=1) * r[:, None]


def clustered(seed: int, sizes: list[int], dim: int = 16,
              noise: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian blobs of unequal sizes, shuffled."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(sizes), dim))
    labels = np.repeat(np.arange(len(sizes)), sizes)
    x = centres[labels] + noise * rng.normal(size=(len(labels), dim))
    order = rng.permutation(len(labels))
    return x[order].astype(np.float32), labels[order]


# ---------------------------------------------------------------- classification


def test_accuracy_and_top_k_by_hand() -> None:
    logits = np.array(
        [
            [3.0, 2.0, 1.0, 0.0],  # label 0: top-1 hit
            [3.0, 2.0, 1.0, 0.0],  # label 1: rank 2 -> top-2 hit
            [0.0, 1.0, 2.0, 3.0],  # label 0: rank 4 -> only a top-4 hit
            [0.0, 5.0, 1.0, 2.0],  # label 3: rank 2
        ]
    )
    labels = np.array([0, 1, 0, 3])
    assert accuracy(logits, labels) == pytest.approx(1 / 4)
    assert top_k_accuracy(logits, labels, k=1) == pytest.approx(1 / 4)
    assert top_k_accuracy(logits, labels, k=2) == pytest.approx(3 / 4)
    assert top_k_accuracy(logits, labels, k=3) == pytest.approx(3 / 4)
    assert top_k_accuracy(logits, labels, k=4) == pytest.approx(1.0)
    # k is clipped to the number of classes: top-5 of 4 classes is top-4.
    assert top_k_accuracy(logits, labels, k=5) == pytest.approx(1.0)
    # Torch tensors and 1-D predictions are accepted.
    assert accuracy(torch.tensor(logits), torch.tensor(labels)) == pytest.approx(1 / 4)
    assert accuracy(np.array([0, 0, 3, 3]), labels) == pytest.approx(2 / 4)


def test_expected_calibration_error_by_hand() -> None:
    # logits (log 3, 0) -> softmax (0.75, 0.25): confidence 0.75, predicted class 0.
    logits = np.tile([math.log(3.0), 0.0], (4, 1))
    # 3 of 4 right at confidence 0.75: perfectly calibrated, ECE 0.
    assert expected_calibration_error(logits, [0, 0, 0, 1]) == pytest.approx(0.0, abs=1e-12)
    # All right at confidence 0.75: under-confident by 0.25.
    assert expected_calibration_error(logits, [0, 0, 0, 0]) == pytest.approx(0.25)
    # Two bins: 4 samples at conf 0.75 (acc 3/4, gap 0) + 4 at conf 0.9 (logits (log 9, 0)),
    # all wrong (gap 0.9): ECE = 4/8 * 0 + 4/8 * 0.9 = 0.45.
    logits2 = np.concatenate([logits, np.tile([math.log(9.0), 0.0], (4, 1))])
    labels2 = [0, 0, 0, 1, 1, 1, 1, 1]
    assert expected_calibration_error(logits2, labels2) == pytest.approx(0.45)
    # Bins are (lo, hi]: with 10 bins 0.9 sits in (0.8, 0.9], 0.75 in (0.7, 0.8] -> same 0.45.
    assert expected_calibration_error(logits2, labels2, n_bins=10) == pytest.approx(0.45)
    # Binning matters here: conf 0.75 all right (gap .25) + conf 0.9 all wrong (gap .9) gives
    # (0.25 + 0.9) / 2 in separate bins, but |acc 1/2 - mean conf 0.825| in a single bin.
    labels3 = [0, 0, 0, 0, 1, 1, 1, 1]
    assert (expected_calibration_error(logits2, labels3, n_bins=15)
            == pytest.approx((0.25 + 0.9) / 2))
    assert expected_calibration_error(logits2, labels3, n_bins=1) == pytest.approx(abs(0.5 - 0.825))


def test_confusion_matrix_counts() -> None:
    labels = np.array([0, 0, 1, 1, 1, 2])
    preds = np.array([0, 1, 1, 1, 2, 0])
    expected = np.array(
        [
            [1, 1, 0],  # true 0: predicted 0 once, 1 once
            [0, 2, 1],  # true 1: predicted 1 twice, 2 once
            [1, 0, 0],  # true 2: predicted 0
        ]
    )
    np.testing.assert_array_equal(confusion_matrix(preds, labels, 3), expected)
    # Logits give the same matrix through argmax; an unseen class gets a zero row.
    logits = np.eye(4)[preds]
    cm = confusion_matrix(torch.tensor(logits), labels, 4)
    assert cm.shape == (4, 4) and cm.sum() == 6
    np.testing.assert_array_equal(cm[:3, :3], expected)
    with pytest.raises(ValueError):
        confusion_matrix(preds, labels, 2)


# ---------------------------------------------------------------- retrieval

# Points on a circle (angles in degrees) with labels A=7, B=3, and a lone C=99 far away.
#   p0   0 A | p1  10 B | p2  25 A | p3  45 A | p4 100 B | p5 220 C (lone: skipped)
# Neighbours of each query (angular distance), labels, R (other samples of its class):
#   p0: p1 10, p2 25, p3 45, p4 100, ... -> B A A B   R=2  P@1 0  RP 1/2  AP@R (1/2)/2 = 1/4
#   p1: p0 10, p2 15, p3 35, p4 90,  ... -> A A A B   R=1  P@1 0  RP 0    AP@R 0
#   p2: p1 15, p3 20, p0 25, p4 75,  ... -> B A A B   R=2  P@1 0  RP 1/2  AP@R 1/4
#   p3: p2 20, p1 35, p0 45, p4 55,  ... -> A B A B   R=2  P@1 1  RP 1/2  AP@R (1/1)/2 = 1/2
#   p4: p3 55, p2 75, p1 90, p0 100, ... -> A A B A   R=1  P@1 0  RP 0    AP@R 0
# p5 is every other point's last neighbour (>= 120 degrees away).
# Means over the 5 queries: P@1 1/5, RP 1.5/5 = 0.3, MAP@R 1/5.
# Recall@k (any same-class in the top k): k=1 {p3} 1/5; k=2 {p0,p2,p3} 3/5;
# k=3 adds p4 -> 4/5; k=4 adds p1 -> 1.
TOY_X = on_circle([0, 10, 25, 45, 100, 220], radii=[1.0, 2.0, 0.5, 3.0, 1.0, 7.0])
TOY_Y = np.array([7, 3, 7, 7, 3, 99])


def test_leave_one_out_knn_by_hand() -> None:
    nn = leave_one_out_knn(TOY_X, 4)
    np.testing.assert_array_equal(
        nn,
        [[1, 2, 3, 4], [0, 2, 3, 4], [1, 3, 0, 4], [2, 1, 0, 4], [3, 2, 1, 0], [4, 0, 1, 2]],
    )
    assert leave_one_out_knn(TOY_X, 100).shape == (6, 5)  # k clipped to N-1


def test_retrieval_by_hand() -> None:
    m = retrieval_metrics(TOY_X, TOY_Y, ks=(1, 2, 3, 4, 50))
    assert m["precision_at_1"] == pytest.approx(0.2)
    assert m["r_precision"] == pytest.approx(0.3)
    assert m["map_at_r"] == pytest.approx(0.2)
    assert m["recall_at_1"] == pytest.approx(0.2)
    assert m["recall_at_2"] == pytest.approx(0.6)
    assert m["recall_at_3"] == pytest.approx(0.8)
    assert m["recall_at_4"] == pytest.approx(1.0)
    assert m["recall_at_50"] == pytest.approx(1.0)  # clipped to N-1
    # The small functions agree, and torch input works.
    xt, yt = torch.tensor(TOY_X), torch.tensor(TOY_Y)
    assert precision_at_1(xt, yt) == pytest.approx(0.2)
    assert r_precision(xt, yt) == pytest.approx(0.3)
    assert map_at_r(xt, yt) == pytest.approx(0.2)
    assert recall_at_k(xt, yt, 3) == pytest.approx(0.8)


def test_retrieval_perfect_and_undefined() -> None:
    x = on_circle([0, 5, 120, 125, 240, 245])
    y = [0, 0, 1, 1, 2, 2]
    assert retrieval_metrics(x, y) == {
        "precision_at_1": 1.0,
        "r_precision": 1.0,
        "map_at_r": 1.0,
        "recall_at_1": 1.0,
        "recall_at_5": 1.0,
        "recall_at_10": 1.0,
    }
    # No class with two samples: nothing to retrieve, NaN rather than an error.
    assert all(math.isnan(v) for v in retrieval_metrics(x, [0, 1, 2, 3, 4, 5]).values())


def _pml(x: np.ndarray, y: np.ndarray, knn_func=None) -> dict[str, float]:
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    calc = AccuracyCalculator(
        include=("precision_at_1", "r_precision", "mean_average_precision_at_r"),
        k="max_bin_count",
        device=torch.device("cpu"),
        knn_func=knn_func,
    )
    # pml 2.9: get_accuracy(query, query_labels, reference=None, reference_labels=None,
    # ref_includes_query=False, ...); reference=None means reference = query and
    # ref_includes_query=True. Passed explicitly here for clarity.
    return calc.get_accuracy(x, y, x, y, ref_includes_query=True)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_retrieval_matches_pml_accuracy_calculator(seed: int) -> None:
    from pytorch_metric_learning.utils.inference import FaissKNN

    rng = np.random.default_rng(100 + seed)
    sizes = [int(s) for s in rng.integers(2, 40, size=12)] + [1, 1]  # unequal, two lone classes
    x, y = clustered(seed, sizes, noise=1.2)
    if seed == 3:
        # 60 copies of one point with mixed labels: more exact ties with the self-match than
        # the search depth, so some rows come back without their own index (pml's drop-last rule).
        x = np.concatenate([x, np.repeat(x[:1], 60, axis=0)])
        y = np.concatenate([y, rng.integers(0, 12, size=60)])
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    ours = retrieval_metrics(x, y, ks=(1,))
    assert ours["recall_at_1"] == ours["precision_at_1"]

    # Cosine exactly as we compute it: inner product on unit vectors.
    ref = _pml(xn, y, knn_func=FaissKNN(index_init_fn=faiss.IndexFlatIP))
    assert ours["precision_at_1"] == pytest.approx(ref["precision_at_1"], abs=1e-6)
    assert ours["r_precision"] == pytest.approx(ref["r_precision"], abs=1e-6)
    assert ours["map_at_r"] == pytest.approx(ref["mean_average_precision_at_r"], abs=1e-6)
    if seed != 3:
        # pml's default (L2 on the same unit vectors) ranks identically when there are no ties.
        ref_l2 = _pml(xn, y)
        assert ours["precision_at_1"] == pytest.approx(ref_l2["precision_at_1"], abs=1e-6)
        assert ours["r_precision"] == pytest.approx(ref_l2["r_precision"], abs=1e-6)
        assert ours["map_at_r"] == pytest.approx(ref_l2["mean_average_precision_at_r"], abs=1e-6)


def test_recall_at_k_matches_brute_force() -> None:
    x, y = clustered(5, [5, 9, 13, 3, 20], noise=1.5)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    sim = xn @ xn.T
    np.fill_diagonal(sim, -np.inf)
    order = np.argsort(-sim, axis=1)
    for k in (1, 3, 8):
        expected = np.mean([(y[order[i, :k]] == y[i]).any() for i in range(len(y))])
        assert recall_at_k(x, y, k) == pytest.approx(expected)


def _retrieval_in_one_search(x: np.ndarray, y: np.ndarray, ks: tuple[int, ...]) -> dict[str, float]:
    """The implementation before chunking: every query's neighbour list held at once."""
    xn = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    n = len(xn)
    _, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    r = counts[inverse] - 1
    keep = r > 0
    depth = min(max([int(r.max()), *ks]), n - 1)
    index = faiss.IndexFlatIP(xn.shape[1])
    index.add(xn)
    _, idx = index.search(xn, depth + 1)
    is_self = idx == np.arange(n)[:, None]
    is_self[~is_self.any(axis=1), -1] = True
    nn = idx[~is_self].reshape(n, depth)
    hits = (inverse[nn] == inverse[:, None])[keep]
    r = r[keep]
    pos = np.arange(1, depth + 1)
    rel = hits & (pos[None, :] <= r[:, None])
    out = {
        "precision_at_1": float(hits[:, 0].mean()),
        "r_precision": float((rel.sum(axis=1) / r).mean()),
        "map_at_r": float(((np.cumsum(rel, axis=1) / pos[None, :] * rel).sum(axis=1) / r).mean()),
    }
    for k in ks:
        out[f"recall_at_{k}"] = float(hits[:, : max(1, min(k, depth))].any(axis=1).mean())
    return out


@pytest.mark.parametrize("chunk_bytes", [1, 40_000, 1 << 30])
def test_chunked_retrieval_equals_one_search_and_pml(
    chunk_bytes: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunks of one query, of a few, or of all give the same numbers as before and as pml."""
    import zoo.metrics.retrieval as retrieval

    monkeypatch.setattr(retrieval, "CHUNK_BYTES", chunk_bytes)
    x, y = clustered(11, [120, 80, 3, 60, 1, 150], noise=1.6)  # few, large, unequal classes
    ours = retrieval_metrics(x, y, ks=(1, 5, 10))
    before = _retrieval_in_one_search(x, y, ks=(1, 5, 10))
    assert ours.keys() == before.keys()
    for name, value in before.items():
        assert ours[name] == pytest.approx(value, abs=1e-6), name
    from pytorch_metric_learning.utils.inference import FaissKNN

    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    ref = _pml(xn, y, knn_func=FaissKNN(index_init_fn=faiss.IndexFlatIP))
    assert ours["precision_at_1"] == pytest.approx(ref["precision_at_1"], abs=1e-6)
    assert ours["r_precision"] == pytest.approx(ref["r_precision"], abs=1e-6)
    assert ours["map_at_r"] == pytest.approx(ref["mean_average_precision_at_r"], abs=1e-6)
    np.testing.assert_array_equal(leave_one_out_knn(x, 7), _loo_in_one_search(x, 7))


def _loo_in_one_search(x: np.ndarray, k: int) -> np.ndarray:
    xn = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    index = faiss.IndexFlatIP(xn.shape[1])
    index.add(xn)
    _, idx = index.search(xn, k + 1)
    is_self = idx == np.arange(len(xn))[:, None]
    is_self[~is_self.any(axis=1), -1] = True
    return idx[~is_self].reshape(len(xn), k)


def test_retrieval_on_sampled_queries_is_seeded_and_close() -> None:
    x, y = clustered(12, [300, 250, 200, 250], noise=2.0)  # 1,000 samples
    exact = retrieval_metrics(x, y)
    sampled = retrieval_metrics(x, y, max_queries=400, seed=5)
    assert sampled == retrieval_metrics(x, y, max_queries=400, seed=5)
    assert sampled != exact  # 400 of 1,000 queries: an estimate, not the same number
    for name, value in exact.items():
        assert sampled[name] == pytest.approx(value, abs=0.05), name
    assert retrieval_metrics(x, y, max_queries=1000) == exact  # a cap of N changes nothing


# ---------------------------------------------------------------- clustering


def test_hungarian_accuracy_by_hand() -> None:
    # Permuted cluster ids are the same clustering: accuracy 1.
    assert hungarian_accuracy([0, 0, 1, 1, 2, 2], [2, 2, 0, 0, 1, 1]) == 1.0
    # Clusters {0,1} -> class 0 (2 right), cluster {2..5} -> class 1 (3 right): 5/6.
    assert hungarian_accuracy([0, 0, 0, 1, 1, 1], [1, 1, 0, 0, 0, 0]) == pytest.approx(5 / 6)
    # More clusters than classes: one of clusters 0/1 stays unmatched -> 3/4.
    assert hungarian_accuracy(["a", "a", "b", "b"], [0, 1, 2, 2]) == pytest.approx(3 / 4)


def test_clustering_perfect_and_permuted() -> None:
    # Three tight, far-apart groups: k-means finds them exactly.
    x = on_circle([0, 2, 4, 120, 122, 124, 240, 242])
    y = np.array([5, 5, 5, 9, 9, 9, 1, 1])
    m = clustering_metrics(x, y)
    assert m == {"nmi": pytest.approx(1.0), "cluster_accuracy": pytest.approx(1.0)}
    # Relabelling the classes changes nothing.
    y_perm = np.array([1, 1, 1, 5, 5, 5, 9, 9])
    assert nmi(x, y_perm) == pytest.approx(1.0)
    assert cluster_accuracy(torch.tensor(x), torch.tensor(y_perm)) == pytest.approx(1.0)


def test_clustering_one_point_misplaced() -> None:
    # Point 3 sits in group A's place but is labelled B: clusters {0,1,2,3} {4,5}.
    x = on_circle([0, 2, 4, 3, 180, 182])
    y = np.array([0, 0, 0, 1, 1, 1])
    m = clustering_metrics(x, y)
    assert m["cluster_accuracy"] == pytest.approx(5 / 6)
    assert m["nmi"] == pytest.approx(normalized_mutual_info_score(y, [0, 0, 0, 0, 1, 1]))


def test_clustering_fitted_on_a_sample_assigns_every_sample() -> None:
    x, y = clustered(13, [400, 300, 500, 300], noise=0.6)  # 1,500 well-separated samples
    exact = clustering_metrics(x, y)
    assert clustering_metrics(x, y, max_fit=1500) == exact  # a cap of N changes nothing
    sampled = clustering_metrics(x, y, max_fit=300)
    assert sampled == clustering_metrics(x, y, max_fit=300)  # seeded
    assert sampled["cluster_accuracy"] == pytest.approx(exact["cluster_accuracy"], abs=0.02)
    assert sampled["nmi"] == pytest.approx(exact["nmi"], abs=0.03)


# ---------------------------------------------------------------- verification

# Labels 0,0,1,1 at 0, 50, 90, 105 degrees. Pair cosines:
#   genuine  (0,1) cos 50 = .643   (2,3) cos 15 = .966
#   impostor (0,2) cos 90 = 0   (0,3) cos 105 = -.259   (1,2) cos 40 = .766   (1,3) cos 55 = .574
# .643 beats 3 of 4 impostors, .966 beats all 4: AUC = 7/8.
# FAR 0.25 of 4 impostors -> m = 1 accepted: threshold = 2nd highest impostor = cos 55;
#   both genuine pairs are above it -> TAR 1.
# FAR 0.1 -> m = 0: threshold = highest impostor = cos 40; only .966 above -> TAR 1/2.
VER_X = on_circle([0, 50, 90, 105])
VER_Y = np.array([0, 0, 1, 1])


def test_verification_by_hand() -> None:
    sims, same = pair_scores(VER_X, VER_Y)
    np.testing.assert_array_equal(same, [True, False, False, False, False, True])  # (0,1)..(2,3)
    np.testing.assert_allclose(sims, np.cos(np.deg2rad([50, 90, 105, 40, 55, 15])), atol=1e-6)
    assert roc_auc(sims, same) == pytest.approx(7 / 8)

    m = verification_metrics(VER_X, VER_Y, fars=(0.25, 0.1))
    assert set(m) == {"roc_auc", "tar_at_far_0.25", "threshold_at_far_0.25", "tar_at_far_1e-1",
                      "threshold_at_far_1e-1"}
    assert m["roc_auc"] == pytest.approx(7 / 8)
    assert m["tar_at_far_0.25"] == pytest.approx(1.0)
    assert m["threshold_at_far_0.25"] == pytest.approx(math.cos(math.radians(55)), abs=1e-6)
    assert m["tar_at_far_1e-1"] == pytest.approx(0.5)
    assert m["threshold_at_far_1e-1"] == pytest.approx(math.cos(math.radians(40)), abs=1e-6)


def test_roc_auc_matches_sklearn_with_ties() -> None:
    rng = np.random.default_rng(0)
    same = rng.random(5000) < 0.2
    sims = np.round(rng.normal(size=5000) + same * 0.7, 1).astype(np.float32)  # many ties
    assert roc_auc(sims, same) == pytest.approx(roc_auc_score(same, sims), abs=1e-12)


def test_tar_at_far_accepts_at_most_far() -> None:
    x, y = clustered(7, [30, 25, 40, 10, 35], noise=2.0)
    sims, same = pair_scores(x, y)
    for far in (1e-3, 1e-2, 0.1):
        tar, thr = tar_at_far(sims, same, far)
        impostor, genuine = sims[~same], sims[same]
        assert np.mean(impostor > thr) <= far
        assert tar == pytest.approx(np.mean(genuine > thr))
    # Lower FAR, stricter threshold, lower TAR.
    m = verification_metrics(x, y, fars=(1e-3, 1e-2, 1e-1))
    assert m["threshold_at_far_1e-3"] >= m["threshold_at_far_1e-2"] >= m["threshold_at_far_1e-1"]
    assert m["tar_at_far_1e-3"] <= m["tar_at_far_1e-2"] <= m["tar_at_far_1e-1"]


def test_verification_samples_pairs_reproducibly_when_too_many() -> None:
    x, y = clustered(8, [40, 60, 50, 50], noise=1.5)  # 200 samples, 19,900 pairs
    exact = verification_metrics(x, y)
    sims, same = pair_scores(x, y, max_pairs=5000, seed=3)
    assert len(sims) == 5000
    again = pair_scores(x, y, max_pairs=5000, seed=3)
    np.testing.assert_array_equal(sims, again[0])
    assert roc_auc(sims, same) == pytest.approx(exact["roc_auc"], abs=0.02)
    # Genuine share of the sample ~ the exact share: sum n_c (n_c - 1) / 2 over 19,900 pairs.
    exact_share = sum(n * (n - 1) / 2 for n in (40, 60, 50, 50)) / 19_900
    assert same.mean() == pytest.approx(exact_share, abs=0.03)


# ---------------------------------------------------------------- evaluate

FULL_KEYS = {
    "precision_at_1",
    "r_precision",
    "map_at_r",
    "recall_at_5",
    "recall_at_10",
    "nmi",
    "cluster_accuracy",
    "roc_auc",
    "tar_at_far_1e-3",
    "threshold_at_far_1e-3",
    "tar_at_far_1e-2",
    "threshold_at_far_1e-2",
    "tar_at_far_1e-4",
    "threshold_at_far_1e-4",
    "dir_at_far_1e-2",
}


def test_evaluate_key_sets() -> None:
    x, y = clustered(9, [20, 30, 25, 15], noise=0.5)
    logits = torch.randn(len(y), 4, generator=torch.Generator().manual_seed(0))

    full = evaluate(torch.tensor(x), torch.tensor(y))
    assert set(full) == {"test_" + k for k in FULL_KEYS}
    assert all(isinstance(v, float) for v in full.values())
    assert (full["test_precision_at_1"] > 0.95 and full["test_nmi"] > 0.9
            and full["test_roc_auc"] > 0.95)

    with_logits = evaluate(x, y, logits)
    assert set(with_logits) == {"test_" + k
                                for k in FULL_KEYS | {"accuracy", "top5_accuracy", "ece"}}
    assert with_logits["test_top5_accuracy"] == 1.0  # k clipped to 4 classes
    assert list(with_logits) == metric_names("test_")

    cheap = evaluate(x, y, logits, prefix="val_", clustering=False, verification=False)
    assert set(cheap) == {
        f"val_{k}"
        for k in ("precision_at_1", "r_precision", "map_at_r", "recall_at_5", "recall_at_10",
                  "accuracy", "top5_accuracy", "ece")
    }
    assert cheap["val_map_at_r"] == full["test_map_at_r"]


def test_far_key() -> None:
    assert [far_key(f) for f in (1e-3, 1e-2, 0.05, 0.25)] == ["1e-3", "1e-2", "5e-2", "0.25"]


def test_open_set_identification_counts_who_is_found_above_the_impostors_threshold() -> None:
    """a and c enrolled (their first samples), b and d never: the threshold at FAR 1e-2 of
    two impostors is the higher impostor's best similarity (0.6), so a's probe at 0.5 is
    missed; at FAR 0.5 it is the lower one's (0.3), and every probe is found."""
    from zoo.metrics import open_set_identification

    r = np.sqrt
    x = np.array([[1, 0, 0], [1, 0, 0], [0.5, 0, r(0.75)],      # a: entry, probe 1.0, 0.5
                  [0.6, 0, -0.8],                                # b: impostor, best 0.6
                  [0, 1, 0], [0, 0.9, r(0.19)],                  # c: entry, probe 0.9
                  [0, 0.3, -r(0.91)]], dtype=np.float32)         # d: impostor, best 0.3
    y = ["a", "a", "a", "b", "c", "c", "d"]
    found = open_set_identification(x, y, fars=(1e-2, 0.5))
    assert found["dir_at_far_1e-2"] == pytest.approx(2 / 3)
    assert found["dir_at_far_5e-1"] == 1.0
    # a probe nearest another enrolled identity is not found, however similar
    wrong = x.copy()
    wrong[5] = [0.95, r(1 - 0.95**2), 0]  # c's probe, nearest a's entry
    assert open_set_identification(wrong, y)["dir_at_far_1e-2"] == pytest.approx(1 / 3)
    assert np.isnan(open_set_identification(x[:3], y[:3])["dir_at_far_1e-2"])  # one identity
