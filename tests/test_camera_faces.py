"""Degraded copies of a face set (zoo/faces/camera.py): the same bytes for the same seed,
factor and photo, whatever else the tree holds; fewer pixels' worth of detail the larger the
factor; darker and JPEG-compressed as stated; and no half-written copy."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zoo.faces.camera import CameraDegradation, degrade_tree, photo_generator


def _tree(root: Path, people: int = 3, photos: int = 2) -> Path:
    rng = np.random.default_rng(0)
    for person in range(people):
        (root / f"p{person}").mkdir(parents=True)
        for k in range(photos):
            pixels = rng.integers(0, 256, (112, 92), dtype=np.uint8)  # ORL's size, grey
            Image.fromarray(pixels, "L").save(root / f"p{person}" / f"{k}.pgm")
    return root


def _detail(data: bytes) -> float:
    """Mean absolute difference of neighbouring pixels: what downscaling and blur take away."""
    pixels = np.asarray(Image.open(io.BytesIO(data)), np.float32)
    return float(np.abs(np.diff(pixels, axis=1)).mean())


def test_a_copy_is_the_same_bytes_for_the_same_seed_and_any_subset(tmp_path: Path) -> None:
    source = _tree(tmp_path / "faces")
    camera = CameraDegradation(3)
    assert degrade_tree(source, tmp_path / "a", camera) == 6
    degrade_tree(source, tmp_path / "b", camera)
    degrade_tree(source, tmp_path / "c", camera, seed=1)
    names = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.jpg"))
    assert [str(n) for n in names] == [f"p{i}/{k}.jpg" for i in range(3) for k in range(2)]
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
        assert (tmp_path / "a" / name).read_bytes() != (tmp_path / "c" / name).read_bytes()
    # one person alone gets the bytes that person got in the whole tree
    alone = tmp_path / "alone"
    (alone / "p1").mkdir(parents=True)
    for k in range(2):
        (alone / "p1" / f"{k}.pgm").write_bytes((source / "p1" / f"{k}.pgm").read_bytes())
    degrade_tree(alone, tmp_path / "d", camera)
    assert (tmp_path / "d" / "p1" / "0.jpg").read_bytes() == (
        tmp_path / "a" / "p1" / "0.jpg").read_bytes()
    with pytest.raises(FileExistsError, match="new folder"):
        degrade_tree(source, tmp_path / "a", camera)
    assert not list(tmp_path.glob("*.partial"))


def test_each_step_does_what_it_says() -> None:
    photo = Image.fromarray(np.random.default_rng(1).integers(0, 256, (112, 92), np.uint8), "L")
    plain = CameraDegradation(1, blur=(0, 0), light=(1, 1), quality=(95, 95))
    same = np.asarray(Image.open(io.BytesIO(plain(photo, photo_generator(0, 1, "x")))))
    assert same.shape == (112, 92) and np.abs(same.astype(int) - np.asarray(photo)).mean() < 12
    details = [_detail(CameraDegradation(f, blur=(0, 0), light=(1, 1), quality=(95, 95))(
        photo, photo_generator(0, f, "x"))) for f in (1, 2, 4)]
    assert details[0] > details[1] > details[2]  # fewer pixels on the face, less detail
    dim = CameraDegradation(1, blur=(0, 0), light=(0.5, 0.5), quality=(95, 95))(
        photo, photo_generator(0, 1, "x"))
    assert np.asarray(Image.open(io.BytesIO(dim))).mean() == pytest.approx(
        np.asarray(photo).mean() * 0.5, abs=2)
    small = CameraDegradation(1, blur=(0, 0), light=(1, 1), quality=(20, 20))(
        photo, photo_generator(0, 1, "x"))
    assert len(small) < len(plain(photo, photo_generator(0, 1, "x"))) / 2  # q20 against q95
    rgb = CameraDegradation(2)(photo.convert("RGB"), photo_generator(0, 2, "x"))
    assert Image.open(io.BytesIO(rgb)).mode == "RGB"


@pytest.mark.parametrize("kwargs, message", [
    ({"factor": 0.5}, "factor must be at least 1"),
    ({"factor": 2, "blur": (1.0, 0.3)}, "blur must be a range"),
    ({"factor": 2, "quality": (20, 140)}, "quality must lie in 1-100"),
])
def test_impossible_strengths_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CameraDegradation(**kwargs)
