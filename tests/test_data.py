"""Tests for zoo.data: sources, splits, samplers, augmentation and shared preprocessing."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from zoo.data import (
    DATASETS,
    ImageAugment,
    LazyImages,
    StoredImages,
    LoadedData,
    Table,
    PKBatchSampler,
    Preprocessing,
    load_data,
    preprocess_images,
    preprocess_rows,
    split_data,
)

ORL = Path(__file__).resolve().parents[1].parent / "shared/data/orl_faces"


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def digits() -> LoadedData:
    return load_data("digits")


@pytest.fixture(scope="module")
def emitters() -> LoadedData:
    return load_data("emitters", seed=0)


def _pattern(h: int, w: int, level: int, seed: int) -> np.ndarray:
    """A gradient plus noise: resizing it is not trivial, and classes differ in brightness."""
    rng = np.random.default_rng(seed)
    grad = np.add.outer(np.linspace(0, 60, h), np.linspace(0, 60, w))
    return np.clip(level + grad + rng.normal(0, 8, (h, w)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def image_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three classes, each with a PGM (grey), a PNG (RGB) and a JPEG (RGB) of odd sizes."""
    root = tmp_path_factory.mktemp("data") / "shapes"
    for c, (name, level) in enumerate([("circle", 20), ("square", 100), ("triangle", 170)]):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(3):
            seed = 10 * c + i
            Image.fromarray(_pattern(30 + i, 20, level, seed), "L").save(folder / f"g{i}.pgm")
            rgb = np.stack([_pattern(40, 36 + i, level, seed + s) for s in range(3)], -1)
            Image.fromarray(rgb, "RGB").save(folder / f"c{i}.png")
            Image.fromarray(rgb, "RGB").save(folder / f"j{i}.jpg", quality=95)
        (folder / "notes.txt").write_text("not an image")
    return root


# --------------------------------------------------------------------------- digits
def test_digits_shape_range_classes(digits: LoadedData) -> None:
    assert digits.name == "digits" and digits.kind == "image"
    assert digits.x.shape == (1797, 3, 32, 32) and digits.x.dtype == torch.float32
    # held as 8-bit pixels (a quarter of float32), read as floats in [0, 1]
    assert isinstance(digits.x, StoredImages) and digits.x.pixels.dtype == torch.uint8
    assert digits.x.nbytes == 1797 * 3 * 32 * 32
    x = digits.x[:]
    assert x.dtype == torch.float32
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert digits.class_names == [str(i) for i in range(10)]
    assert digits.y.dtype == torch.int64
    assert torch.equal(torch.unique(digits.y), torch.arange(10))
    # channels are replicated grey
    assert torch.equal(x[:, 0], x[:, 2])


def test_digits_deterministic_and_options(digits: LoadedData) -> None:
    again = load_data("digits")
    assert torch.equal(again.x[:], digits.x[:]) and torch.equal(again.y, digits.y)
    small = load_data("digits", image_size=16, channels=1)
    assert small.x.shape == (1797, 1, 16, 16)
    assert 0.0 <= float(small.x[:].min()) and float(small.x[:].max()) <= 1.0


def test_digits_match_served_png(digits: LoadedData, tmp_path: Path) -> None:
    """A digit saved as 8x8 PNG and served gives exactly its training input."""
    from sklearn.datasets import load_digits

    grey = np.rint(load_digits().images[5] * 255 / 16).astype(np.uint8)
    Image.fromarray(grey, "L").save(tmp_path / "five.png")
    pre = Preprocessing("image", (3, 32, 32), [0.0] * 3, [1.0] * 3, digits.class_names)
    with Image.open(tmp_path / "five.png") as img:
        served = preprocess_images([img], pre)
    assert torch.equal(served[0], digits.x[5])


# --------------------------------------------------------------------------- folders
def test_folder_loads_pgm_png_jpeg(image_tree: Path) -> None:
    data = load_data(str(image_tree), image_size=24, channels=3)
    assert data.name == "shapes" and data.kind == "image"
    assert data.class_names == ["circle", "square", "triangle"]
    assert data.x.shape == (27, 3, 24, 24) and data.x.dtype == torch.float32
    assert torch.equal(torch.bincount(data.y), torch.tensor([9, 9, 9]))
    assert {Path(p).suffix for p in data.paths} == {".pgm", ".png", ".jpg"}
    assert 0.0 <= float(data.x[:].min()) and float(data.x[:].max()) <= 1.0
    # each format decoded to its content: brightness follows the class level
    for suffix in (".pgm", ".png", ".jpg"):
        rows = [i for i, p in enumerate(data.paths) if p.endswith(suffix)]
        means = [float(data.x[[i for i in rows if data.y[i] == c]].mean()) for c in range(3)]
        assert means[0] < means[1] < means[2], (suffix, means)
    # grey PGM replicated to 3 channels
    pgm = data.paths.index(str(image_tree / "circle" / "g0.pgm"))
    assert torch.equal(data.x[pgm][0], data.x[pgm][1])


def test_folder_channels_and_prefix_form(image_tree: Path) -> None:
    grey = load_data(f"folder:{image_tree}", image_size=(16, 12), channels=1)
    assert grey.x.shape == (27, 1, 16, 12)


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope"):
        load_data(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_data(f"folder:{tmp_path / 'nope'}")

    one = tmp_path / "one"
    (one / "only").mkdir(parents=True)
    Image.new("L", (8, 8)).save(one / "only" / "a.png")
    with pytest.raises(ValueError, match=r"at least 2 classes.*\['only'\]") as err:
        load_data(str(one))
    assert str(one) in str(err.value)

    empty = tmp_path / "empty"
    (empty / "a").mkdir(parents=True)
    (empty / "b").mkdir()
    (empty / "b" / "readme.txt").write_text("hi")
    with pytest.raises(ValueError, match="no readable images"):
        load_data(str(empty))

    broken = tmp_path / "broken"
    for name in ("a", "b"):
        (broken / name).mkdir(parents=True)
        Image.new("L", (8, 8), 50).save(broken / name / "ok.png")
    (broken / "b" / "bad.png").write_bytes(b"\x89PNG but not really")
    with pytest.raises(ValueError, match="cannot decode image .*bad.png"):
        load_data(str(broken))
    # lazy mode checks headers at load too
    with pytest.raises(ValueError, match="bad.png"):
        load_data(str(broken), memory_budget=1)


def test_load_data_dispatch_errors(image_tree: Path) -> None:
    with pytest.raises(FileNotFoundError, match="digits"):  # lists the registered names
        load_data("digitz")
    with pytest.raises(ValueError, match="no option.*bogus"):
        load_data("emitters", bogus=3)
    assert {"digits", "folder", "csv", "emitters"} <= set(DATASETS.names())


@pytest.mark.skipif(not ORL.is_dir(), reason=f"ORL faces not at {ORL}")
def test_orl_faces() -> None:
    data = load_data(str(ORL), image_size=32, channels=1)
    assert data.name == "orl_faces"
    assert len(data.class_names) == 40 and data.x.shape == (400, 1, 32, 32)
    assert torch.equal(torch.bincount(data.y), torch.full((40,), 10))
    assert sorted(data.class_names) == data.class_names
    splits = split_data(data, seed=0, open_set=0.5)
    assert len(splits.class_names) == 20 and len(splits.open) == 200
    for part, n in ((splits.train, 6), (splits.val, 2), (splits.test, 2)):
        assert torch.equal(torch.bincount(part.y, minlength=20), torch.full((20,), n))


# --------------------------------------------------------------------------- lazy images
def test_lazy_images_equal_preloaded(image_tree: Path) -> None:
    eager = load_data(str(image_tree), image_size=20)
    lazy = load_data(str(image_tree), image_size=20, memory_budget=1)
    assert isinstance(lazy.x, LazyImages) and isinstance(eager.x, StoredImages)
    assert len(lazy.x) == 27 and lazy.x.shape == eager.x.shape
    idx = torch.tensor([26, 0, 5, 5, 13])
    assert torch.equal(lazy.x[idx], eager.x[idx])
    assert torch.equal(lazy.x[3], eager.x[3])
    assert torch.equal(lazy.x[2:6], eager.x[2:6])
    assert torch.equal(lazy.x[eager.y == 1], eager.x[eager.y == 1])
    # split: lazy splits normalise on access with the same train statistics
    s_eager, s_lazy = split_data(eager, seed=1), split_data(lazy, seed=1)
    assert s_eager.preprocessing.mean == pytest.approx(s_lazy.preprocessing.mean, abs=1e-9)
    assert s_eager.preprocessing.std == pytest.approx(s_lazy.preprocessing.std, abs=1e-9)
    n = len(s_lazy.test)
    assert torch.allclose(s_lazy.test.x[torch.arange(n)], s_eager.test.x[:], atol=1e-6)


def test_preload_budget_counts_bytes_of_8_bit_pixels(image_tree: Path) -> None:
    """27 images at 3x20x20 take 32,400 bytes as uint8 (129,600 as float32): that budget holds
    them, one byte less sends them to the files."""
    need = 27 * 3 * 20 * 20
    stored = load_data(str(image_tree), image_size=20, memory_budget=need)
    assert isinstance(stored.x, StoredImages) and stored.x.nbytes == need
    assert isinstance(load_data(str(image_tree), image_size=20, memory_budget=need - 1).x,
                      LazyImages)
    # splits are views of the one uint8 tensor, not copies
    splits = split_data(stored, seed=0)
    assert splits.train.x.pixels.data_ptr() == stored.x.pixels.data_ptr()


def test_a_batch_made_on_the_device_equals_indexing(image_tree: Path) -> None:
    from zoo.data import batch_to

    splits = split_data(load_data(str(image_tree), image_size=20), seed=0)
    lazy = split_data(load_data(str(image_tree), image_size=20, memory_budget=1), seed=0)
    idx = torch.tensor([4, 0, 2])
    for x in (splits.train.x, lazy.train.x):
        assert torch.equal(batch_to(x, idx, torch.device("cpu")), x[idx])
    table = torch.randn(5, 3)
    assert torch.equal(batch_to(table, idx, torch.device("cpu")), table[idx])


def test_preprocess_images_matches_folder_loading(image_tree: Path) -> None:
    data = load_data(str(image_tree), image_size=24, channels=3)
    splits = split_data(data, seed=0)
    paths = [data.paths[i] for i in splits.test.indices]
    images = [Image.open(p) for p in paths]
    try:
        served = preprocess_images(images, splits.preprocessing)
    finally:
        for img in images:
            img.close()
    assert torch.equal(served, splits.test.x[:])
    # the preprocessing survives a JSON round trip
    pre = Preprocessing.from_dict(json.loads(json.dumps(splits.preprocessing.to_dict())))
    assert pre == splits.preprocessing and pre.input_size == (3, 24, 24)


# --------------------------------------------------------------------------- csv
def _write_csv(path: Path, n: int = 30, **extra: list) -> Path:
    rng = np.random.default_rng(0)
    labels = [["cat", "dog", "emu"][i % 3] for i in range(n)]
    frame = pd.DataFrame({"a": rng.normal(size=n), "label": labels, "b": rng.normal(size=n)})
    for k, v in extra.items():
        frame[k] = v
    frame.to_csv(path, index=False)
    return path


def test_csv_source(tmp_path: Path) -> None:
    data = load_data(str(_write_csv(tmp_path / "pets.csv")))
    assert data.name == "pets" and data.kind == "tabular"
    assert data.class_names == ["cat", "dog", "emu"] and data.feature_names == ["a", "b"]
    assert data.x.shape == (30, 2) and isinstance(data.x, Table)
    assert data.y.tolist()[:4] == [0, 1, 2, 0]
    # numeric labels sort as numbers; another label column by name
    frame = pd.DataFrame({"f": np.arange(8.0), "kind": [10, 2, 10, 2, 1, 1, 2, 10]})
    frame.to_csv(tmp_path / "n.csv", index=False)
    numeric = load_data(f"csv:{tmp_path / 'n.csv'}", label_column="kind")
    assert numeric.class_names == ["1", "2", "10"]


def test_csv_errors(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "t.csv")
    with pytest.raises(ValueError, match=r"no label column 'target'; columns: a, label, b"):
        load_data(str(path), label_column="target")
    empty = _write_csv(tmp_path / "e.csv", c=[np.nan] * 30)
    with pytest.raises(ValueError, match=r"column 'c' has no values"):
        load_data(str(empty))
    gaps = _write_csv(tmp_path / "g.csv", label=[None] + ["cat", "dog"] * 14 + ["emu"])
    with pytest.raises(ValueError, match=r"1 empty value\(s\) in label column 'label'"):
        load_data(str(gaps))
    with pytest.raises(FileNotFoundError):
        load_data(f"csv:{tmp_path / 'missing.csv'}")


# --------------------------------------------------------------------------- emitters
def test_emitters_deterministic(emitters: LoadedData) -> None:
    assert emitters.kind == "tabular" and emitters.x.shape == (3000, len(emitters.feature_names))
    assert len(emitters.class_names) == 10 and emitters.x.dtype == torch.float32
    assert torch.equal(torch.bincount(emitters.y), torch.full((10,), 300))
    assert torch.isfinite(emitters.x).all()
    again = load_data("emitters", seed=0)
    assert torch.equal(again.x, emitters.x) and torch.equal(again.y, emitters.y)
    assert not torch.equal(load_data("emitters", seed=1).x, emitters.x)
    small = load_data("emitters", num_emitters=4, samples_per_emitter=20, noise=0.5)
    assert small.x.shape == (80, 12) and len(small.class_names) == 4


def test_emitters_learnable_not_trivial(emitters: LoadedData) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier

    splits = split_data(emitters, seed=0, val_fraction=0.0, test_fraction=0.3)
    raw_train = emitters.x[splits.train.indices].numpy()
    raw_test = emitters.x[splits.test.indices].numpy()
    ytr, yte = splits.train.y.numpy(), splits.test.y.numpy()
    knn = KNeighborsClassifier(1).fit(raw_train, ytr).score(raw_test, yte)
    linear = LogisticRegression(max_iter=300).fit(splits.train.x.numpy(), ytr)
    lin = linear.score(splits.test.x.numpy(), yte)
    chance = 1 / 10
    assert knn > 3 * chance and lin > 3 * chance  # learnable
    assert knn < 0.85  # not trivially separable on raw features
    assert lin > knn + 0.05  # a trained model on standardised features beats raw 1-NN


# --------------------------------------------------------------------------- splits
def _index_sets(splits) -> list[set[int]]:
    parts = [splits.train, splits.val, splits.test] + ([splits.open] if splits.open else [])
    return [set(p.indices.tolist()) for p in parts]


def test_splits_stratified_disjoint_deterministic(digits: LoadedData) -> None:
    s = split_data(digits, seed=0)
    sets = _index_sets(s)
    assert sum(len(a) for a in sets) == len(digits) == len(set().union(*sets))
    assert s.open is None and s.open_class_names == [] and s.class_names == digits.class_names
    for part in (s.train, s.val, s.test):
        assert set(part.y.tolist()) == set(range(10))
        assert torch.equal(part.y, digits.y[part.indices])
    assert abs(len(s.test) / len(digits) - 0.2) < 0.01
    assert abs(len(s.val) / len(digits) - 0.15) < 0.01
    same = split_data(digits, seed=0)
    assert (torch.equal(same.test.indices, s.test.indices)
            and torch.equal(same.test.x[:], s.test.x[:]))
    other = split_data(digits, seed=1)
    assert not torch.equal(other.test.indices, s.test.indices)


def test_split_normalisation_from_train_only(digits: LoadedData, emitters: LoadedData) -> None:
    s = split_data(digits, seed=0)
    raw_train = digits.x[s.train.indices]
    assert s.preprocessing.mean == pytest.approx(raw_train.mean(dim=(0, 2, 3)).tolist(), abs=1e-5)
    assert s.preprocessing.std == pytest.approx(
        raw_train.std(dim=(0, 2, 3), unbiased=False).tolist(), abs=1e-5
    )
    assert s.train.x[:].mean(dim=(0, 2, 3)).abs().max() < 1e-4
    assert s.preprocessing.mean != pytest.approx(digits.x[:].mean(dim=(0, 2, 3)).tolist(), abs=1e-6)
    t = split_data(emitters, seed=0)
    raw = emitters.x[t.train.indices].double()
    assert t.preprocessing.mean == pytest.approx(raw.mean(0).tolist(), rel=1e-6)
    assert t.train.x.mean(0).abs().max() < 1e-3
    assert torch.allclose(t.train.x.std(0, unbiased=False), torch.ones(12), atol=1e-3)
    assert t.preprocessing.feature_names == emitters.feature_names
    assert torch.equal(preprocess_rows(emitters.x[t.test.indices].numpy(), t.preprocessing),
                       t.test.x)


def test_open_set_holds_out_whole_classes(digits: LoadedData) -> None:
    s = split_data(digits, seed=3, open_set=0.3)
    assert len(s.class_names) == 7 and len(s.open_class_names) == 3
    assert not set(s.class_names) & set(s.open_class_names)
    held = [digits.class_names.index(n) for n in s.open_class_names]
    open_rows = set(torch.nonzero(torch.isin(digits.y, torch.tensor(held))).flatten().tolist())
    sets = _index_sets(s)
    assert sets[3] == open_rows
    for part in sets[:3]:
        assert not part & open_rows
    for part in (s.train, s.val, s.test):
        assert part.y.max() < 7 and set(part.y.tolist()) == set(range(7))
    assert set(s.open.y.tolist()) == {7, 8, 9}
    # labels map back to names
    for part in (s.train, s.open):
        names = s.class_names + s.open_class_names
        assert [names[i] for i in part.y[:50]] == [
            digits.class_names[i] for i in digits.y[part.indices[:50]]
        ]
    chosen = {tuple(split_data(digits, seed=k, open_set=0.3).open_class_names) for k in range(4)}
    assert len(chosen) > 1  # the held-out classes depend on the seed


def _tiny(counts: list[int]) -> LoadedData:
    y = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    x = torch.randn(len(y), 3)
    names = [f"c{i}" for i in range(len(counts))]
    return LoadedData("tiny", "tabular", x, y, names, ["a", "b", "c"])


def test_split_tiny_classes() -> None:
    s = split_data(_tiny([10, 10, 3, 4]), seed=0)
    for part in (s.train, s.val, s.test):
        assert set(part.y.tolist()) == {0, 1, 2, 3}
    assert torch.equal(torch.bincount(s.test.y), torch.tensor([2, 2, 1, 1]))
    with pytest.raises(ValueError, match=r"\['c1'\] have fewer than 2 samples"):
        split_data(_tiny([5, 1, 5]))
    with pytest.raises(ValueError, match="test_fraction"):
        split_data(_tiny([5, 5]), val_fraction=0.5, test_fraction=0.5)


# --------------------------------------------------------------------------- samplers
def test_pk_sampler_batches_and_determinism() -> None:
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate([20, 3, 12, 8, 9, 30, 2, 16])])
    sampler = PKBatchSampler(labels, batch_size=16, k=4, seed=7)
    batches = list(sampler)
    assert len(batches) == len(sampler) == len(labels) // 16
    for batch in batches:
        counts = torch.bincount(labels[batch])
        assert len(batch) == 16 and int((counts > 0).sum()) == 4
        assert set(counts[counts > 0].tolist()) == {4}
    assert list(PKBatchSampler(labels, 16, 4, seed=7)) == batches
    sampler.set_epoch(1)
    assert list(sampler) != batches
    # works as a DataLoader batch_sampler
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(labels), batch_sampler=PKBatchSampler(labels, 8, 2)
    )
    (first,) = next(iter(loader))
    assert first.shape == (8,) and int((torch.bincount(first) > 0).sum()) == 4


def test_pk_sampler_few_classes_fills_batch() -> None:
    labels = torch.arange(3).repeat_interleave(20)
    sampler = PKBatchSampler(labels, batch_size=32, k=4)
    assert (sampler.p, sampler.k) == (3, 10)
    assert all(torch.equal(torch.bincount(labels[b]), torch.tensor([10, 10, 10])) for b in sampler)


# --------------------------------------------------------------------------- augmentation
def test_image_augment() -> None:
    torch.manual_seed(0)
    x = torch.randn(6, 3, 16, 20)
    aug = ImageAugment.preset("faces")
    aug.eval()
    assert aug(x) is x
    aug.train()
    torch.manual_seed(1)
    a = aug(x)
    torch.manual_seed(1)
    b = aug(x)
    assert a.shape == x.shape and torch.equal(a, b) and not torch.allclose(a, x)
    assert ImageAugment(strength=0.0).train()(x) is x
    # pure flips: every output is the input or its mirror
    flip = ImageAugment(rotation=0, scale=(1, 1), translate=0, hflip=True)
    torch.manual_seed(2)
    out = flip(x)
    for o, i in zip(out, x):
        assert torch.allclose(o, i, atol=1e-5) or torch.allclose(o, i.flip(-1), atol=1e-5)
    # erasing zeroes a box in every sample
    erase = ImageAugment(rotation=0, scale=(1, 1), translate=0, erase_prob=1.0)
    erased = erase(x + 10)
    assert all(int((e == 0).sum()) > 0 for e in erased)
    assert not ImageAugment.preset("digits").hflip
    with pytest.raises(ValueError, match="preset"):
        ImageAugment.preset("bogus")


# --------------------------------------------------------------------------- preprocessing
def test_preprocess_rows_width_and_dataframe() -> None:
    pre = Preprocessing(
        "tabular", (3,), [1.0, 2.0, 3.0], [2.0, 2.0, 2.0], ["x", "y"], ["a", "b", "c"]
    )
    out = preprocess_rows([[1.0, 2.0, 3.0], [3.0, 4.0, 5.0]], pre)
    assert out.dtype == torch.float32 and torch.equal(out, torch.tensor([[0.0] * 3, [1.0] * 3]))
    with pytest.raises(ValueError, match="expected 3 features per row.*got 2"):
        preprocess_rows(np.zeros((4, 2)), pre)
    frame = pd.DataFrame({"c": [3.0], "a": [1.0], "b": [2.0]})
    assert torch.equal(preprocess_rows(frame, pre), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="NaN"):
        preprocess_rows([[np.nan, 1, 2]], pre)
    with pytest.raises(ValueError, match="tabular"):
        preprocess_images([Image.new("L", (4, 4))], pre)
