"""Photo files to the aligned chips training reads, cached on disk.

A chip is keyed by its file's sha256 and the stage's settings, so a second run (or a lazy
folder's next epoch) reads it back instead of detecting again. The cache holds what the
stage found (the largest face's chip, or the whole image's when there is none, and how many
faces there were); what a run does with a photo without a face is its own policy.
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from zoo.data.preprocessing import DEFAULT_INTERPOLATION, image_to_array, to_channels

from .detect import align, find_faces, whole_image_face
from .stage import MISSING_POLICIES, FaceStage

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """``$ZOO_FACE_CACHE``, else ``$XDG_CACHE_HOME/model-zoo/faces`` (``~/.cache``)."""
    if os.environ.get("ZOO_FACE_CACHE"):
        return Path(os.environ["ZOO_FACE_CACHE"]).expanduser()
    home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return home / "model-zoo" / "faces"


@dataclass(frozen=True)
class ChipOutcome:
    """What the stage found in one file: ``faces`` detected (0: none, the whole image was
    aligned instead), and whether the chip came from the cache."""

    path: str
    faces: int
    cached: bool = False


class FaceChipper:
    """Decode a photo file to the model's input pixels (uint8 ``[C, size, size]``): the
    largest face's chip, or per ``missing`` the whole image's (``whole``), nothing
    (``skip``) or an error (``fail``)."""

    def __init__(self, stage: FaceStage, channels: int, missing: str = "whole",
                 cache_dir: Path | None = None,
                 interpolation: str = DEFAULT_INTERPOLATION) -> None:
        if missing not in MISSING_POLICIES:
            raise ValueError(f"faces_missing={missing!r} is not one of "
                             f"{', '.join(MISSING_POLICIES)}")
        self.stage, self.channels, self.missing = stage, int(channels), missing
        self.interpolation = interpolation
        self.cache = (cache_dir or default_cache_dir()) / stage.digest()[:16]

    def __call__(self, path: str | Path) -> tuple[np.ndarray | None, ChipOutcome]:
        """The file's pixels (``None`` when skipped) and what was found."""
        path = str(path)
        data = Path(path).read_bytes()
        key = hashlib.sha256(data).hexdigest()
        chip, faces, cached = self._cached(key)
        if chip is None:
            chip, faces = self._detect(path, data)
            self._store(key, chip, faces)
        outcome = ChipOutcome(path, faces, cached)
        if faces == 0 and self.missing == "fail":
            raise ValueError(f"no face found in {path} (faces_missing=fail; use "
                             "faces_missing=whole to align the whole image, or skip)")
        if faces == 0 and self.missing == "skip":
            return None, outcome
        return self.pixels(chip), outcome

    def pixels(self, chip: np.ndarray) -> np.ndarray:
        """An RGB chip as the model's input pixels (channels; the size is the chip's)."""
        size = (self.stage.size, self.stage.size)
        return image_to_array(Image.fromarray(chip, mode="RGB"), self.channels, size,
                              self.interpolation)

    def _detect(self, path: str, data: bytes) -> tuple[np.ndarray, int]:
        """The chip of the file's bytes (read once, for the key too)."""
        try:
            with Image.open(io.BytesIO(data)) as img:
                rgb = np.asarray(to_channels(img, 3))
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
            raise ValueError(f"cannot decode image {path}: {err}") from None
        faces = find_faces(rgb, self.stage)
        face = faces[0] if faces else whole_image_face(rgb)
        return align(rgb, face, self.stage).chip, len(faces)

    def _file(self, key: str) -> Path:
        return self.cache / key[:2] / f"{key}.npz"

    def _cached(self, key: str) -> tuple[np.ndarray | None, int, bool]:
        file = self._file(key)
        try:
            with np.load(file, allow_pickle=False) as saved:
                chip, faces = saved["chip"], int(saved["faces"])
        except (OSError, KeyError, ValueError):
            return None, 0, False
        if chip.shape != (self.stage.size, self.stage.size, 3) or chip.dtype != np.uint8:
            return None, 0, False
        return chip, faces, True

    def _store(self, key: str, chip: np.ndarray, faces: int) -> None:
        """Written to a temporary name and renamed, so a reader never sees half a file."""
        file = self._file(key)
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=file.parent, suffix=".tmp",
                                             delete=False) as tmp:
                np.savez(tmp, chip=chip, faces=np.int64(faces))
            os.replace(tmp.name, file)
        except OSError as err:  # a read-only cache only costs the next run a detection
            log.warning("cannot cache a face chip in %s: %s", file.parent, err)


@dataclass(frozen=True)
class FaceReport:
    """What the stage found over a data set: photos with at least one face, with none
    (their files listed) and with several (training took the largest)."""

    found: int
    missing: tuple[str, ...]
    multiple: int
    policy: str  # faces_missing: what was done with the photos without a face
    cached: int = 0  # photos read back from the chip cache

    @classmethod
    def of(cls, outcomes: list[ChipOutcome], policy: str, root: Path | None = None
           ) -> FaceReport:
        """The report of a folder's outcomes; files named relative to ``root``."""
        def name(path: str) -> str:
            return str(Path(path).relative_to(root)) if root is not None else path

        return cls(found=sum(o.faces > 0 for o in outcomes),
                   missing=tuple(name(o.path) for o in outcomes if o.faces == 0),
                   multiple=sum(o.faces > 1 for o in outcomes), policy=policy,
                   cached=sum(o.cached for o in outcomes))

    def metrics(self) -> dict[str, float]:
        return {"faces_found": float(self.found), "faces_missing": float(len(self.missing)),
                "faces_multiple": float(self.multiple)}
