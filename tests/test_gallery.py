"""The exported identification gallery: numbers only, atomic saves, clear errors; searched
by cosine once a server has indexed it."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from serving.gallery.index import GalleryIndex
from serving.gallery.table import Rows
from zoo.gallery import LEGACY_INDEX_FILE, META_FILE, VECTORS_FILE, Gallery, saved_thresholds


def _vectors(n: int, dim: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def test_a_saved_gallery_reloads_and_is_searched_by_cosine(tmp_path: Path) -> None:
    gallery = Gallery(8, threshold=0.5, far=1e-3,
                      thresholds={"1e-2": 0.4, "1e-3": 0.5, "1e-4": 0.7})
    vectors = _vectors(6)
    names = ["ann", "bob", "cid", "ann", "bob", "cid"]
    gallery.add(vectors * 3.0, names)  # unnormalised in
    gallery.save(tmp_path)
    again = Gallery.load(tmp_path)
    assert (len(again), again.threshold, again.far, again.identities) == (6, 0.5, 1e-3,
                                                                        ["ann", "bob", "cid"])
    # the thresholds at each rate come back, and are read without the vectors
    assert again.thresholds == saved_thresholds(tmp_path) == {"1e-2": 0.4, "1e-3": 0.5,
                                                              "1e-4": 0.7}
    assert saved_thresholds(tmp_path / "none") == {}
    assert np.allclose(np.linalg.norm(again.vectors(), axis=1), 1.0, atol=1e-6)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left

    index = GalleryIndex(8)  # what a server builds from it
    index.build(Rows(np.arange(1, 7), again.labels, again.vectors()))
    query = vectors[[4]] + 0.01 * _vectors(1, seed=1)
    matches = index.search(query, k=3)[0]
    assert matches[0].label == "bob" and matches[0].similarity == pytest.approx(1.0, abs=1e-3)
    assert [m.similarity for m in matches] == sorted((m.similarity for m in matches), reverse=True)
    cos = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)) @ (
        query[0] / np.linalg.norm(query[0]))
    best = {name: max(c for n, c in zip(names, cos) if n == name) for name in set(names)}
    assert [m.label for m in matches] == sorted(best, key=best.get, reverse=True)
    assert matches[1].similarity == pytest.approx(sorted(best.values())[-2], abs=1e-5)
    assert GalleryIndex(8).search(_vectors(2), 3) == [[], []]  # an empty gallery: no matches


def test_an_interrupted_save_leaves_the_previous_gallery(tmp_path: Path) -> None:
    gallery = Gallery(8)
    gallery.add(_vectors(3), ["a", "b", "c"])
    gallery.save(tmp_path)
    # A save that wrote the bigger vectors file and died before committing gallery.json:
    bigger = Gallery(8)
    bigger.add(_vectors(5), ["a", "b", "c", "d", "e"])
    np.save(tmp_path / VECTORS_FILE, bigger.vectors())
    loaded = Gallery.load(tmp_path)
    assert loaded.labels == ["a", "b", "c"] and len(loaded.vectors()) == 3


def test_bad_input_is_named(tmp_path: Path) -> None:
    gallery = Gallery(8)
    with pytest.raises(ValueError, match=r"shape \[N, 8\]"):
        gallery.add(_vectors(2, dim=4), ["a", "b"])
    with pytest.raises(ValueError, match="2 embeddings but 1 labels"):
        gallery.add(_vectors(2), ["a"])
    with pytest.raises(ValueError, match="must not be empty"):
        gallery.add(_vectors(1), ["  "])
    assert len(gallery) == 0
    with pytest.raises(FileNotFoundError, match="gallery.npy, gallery.json"):
        Gallery.load(tmp_path)
    gallery.add(_vectors(2), ["a", "b"])
    gallery.save(tmp_path)
    meta = json.loads((tmp_path / META_FILE).read_text())
    (tmp_path / META_FILE).write_text(json.dumps({**meta, "count": 9}))
    with pytest.raises(ValueError, match="9 entries but 2 labels"):
        Gallery.load(tmp_path)
    (tmp_path / META_FILE).write_text(json.dumps({**meta, "count": 9, "labels": ["a"] * 9}))
    with pytest.raises(ValueError, match=r"holds float32 \[2, 8\], gallery.json expects 9"):
        Gallery.load(tmp_path)


def test_only_numbers_are_read(tmp_path: Path) -> None:
    """No pickled object arrays, no faiss index files, no NaN vectors."""
    gallery = Gallery(4)
    gallery.add(np.eye(4, dtype=np.float32), list("abcd"))
    gallery.save(tmp_path)
    np.save(tmp_path / VECTORS_FILE, np.array([[object()]] * 4, dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="not a readable array"):
        Gallery.load(tmp_path)
    bad = np.eye(4, dtype=np.float32)
    bad[1, 1] = np.nan
    np.save(tmp_path / VECTORS_FILE, bad)
    with pytest.raises(ValueError, match="not finite"):
        Gallery.load(tmp_path)
    (tmp_path / VECTORS_FILE).rename(tmp_path / LEGACY_INDEX_FILE)
    with pytest.raises(ValueError, match="faiss index file .* is not read"):
        Gallery.load(tmp_path)
