"""Find faces, their five landmarks and their aligned chips in one upright RGB photo."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from .dlib_models import detector_and_predictor, dlib_module
from .stage import FaceStage


@dataclass(frozen=True)
class Face:
    """One face in the photo's own pixels: ``box`` ``(x0, y0, x1, y1)`` (exclusive end),
    the five landmarks ``[(x, y)] * 5`` (dlib's order: the image-right eye's outer and inner
    corner, the image-left eye's outer and inner corner, the bottom of the nose), and the
    detector's score (``None`` for the whole image taken as the box)."""

    box: tuple[int, int, int, int]
    landmarks: tuple[tuple[int, int], ...]
    score: float | None

    @property
    def area(self) -> int:
        return max(0, self.box[2] - self.box[0]) * max(0, self.box[3] - self.box[1])

    def to_dict(self) -> dict:
        return {"box": list(self.box), "landmarks": [list(p) for p in self.landmarks],
                "score": self.score}


@dataclass(frozen=True)
class FaceChip:
    """A face and its aligned chip (uint8 RGB ``[size, size, 3]``)."""

    face: Face
    chip: np.ndarray

    def image(self) -> Image.Image:
        return Image.fromarray(self.chip, mode="RGB")


def _rgb(photo: Image.Image | np.ndarray) -> np.ndarray:
    arr = np.asarray(photo)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"the face stage takes an upright 8-bit RGB image, got an array of "
                         f"shape {arr.shape} and {arr.dtype}")
    return np.ascontiguousarray(arr)


def _landmarks(predictor, rgb: np.ndarray, box: tuple[int, int, int, int],
               score: float | None = None) -> Face:
    shape = predictor(rgb, _rectangle(box))
    return Face(box, tuple((int(p.x), int(p.y)) for p in shape.parts()), score)


def _rectangle(box: tuple[int, int, int, int]):
    """A box ``(x0, y0, x1, y1)`` (exclusive end) as dlib's rectangle (inclusive)."""
    return dlib_module().rectangle(int(box[0]), int(box[1]), int(box[2]) - 1, int(box[3]) - 1)


def _shape(face: Face):
    """A face as dlib's ``full_object_detection``: what its chip functions take."""
    dlib = dlib_module()
    points = dlib.points([dlib.point(x, y) for x, y in face.landmarks])
    return dlib.full_object_detection(_rectangle(face.box), points)


def find_faces(photo: Image.Image | np.ndarray, stage: FaceStage,
               min_face_px: int = 0, limit: int | None = None) -> list[Face]:
    """Every face the detector finds, largest first, with its landmarks; ``limit`` keeps
    the largest so many, cut before any landmark is taken (:func:`detect_boxes`)."""
    rgb = _rgb(photo)
    return with_landmarks(rgb, detect_boxes(rgb, stage, min_face_px)[:limit])


Box = tuple[tuple[int, int, int, int], float]  # (x0, y0, x1, y1), the detector's score


def detect_boxes(photo: Image.Image | np.ndarray, stage: FaceStage,
                 min_face_px: int = 0) -> list[Box]:
    """Every face's box and score, largest first, without landmarks (they cost a predictor
    run each: a photo of hundreds of faces pays only for those kept).

    The detector runs on a copy whose longer side is at most ``stage.max_side``; its boxes
    are scaled back to the full image and clipped to it (a face cut by the border keeps the
    part inside). ``min_face_px`` drops faces whose box is narrower.
    """
    rgb = _rgb(photo)
    detector, _ = detector_and_predictor()
    height, width = rgb.shape[:2]
    scale = detector_scale(width, height, stage)
    small = rgb
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        small = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR))
    rects, scores, _ = detector.run(small, stage.upsample, 0.0)
    boxes = []
    for rect, score in zip(rects, scores):
        box = (max(0, int(rect.left() / scale)), max(0, int(rect.top() / scale)),
               min(width, int(round((rect.right() + 1) / scale))),
               min(height, int(round((rect.bottom() + 1) / scale))))
        if box[2] - box[0] < max(2, min_face_px) or box[3] - box[1] < 2:
            continue
        boxes.append((box, float(score)))
    return sorted(boxes, key=lambda b: -(b[0][2] - b[0][0]) * (b[0][3] - b[0][1]))


def with_landmarks(photo: Image.Image | np.ndarray, boxes: list[Box]) -> list[Face]:
    """Each box's five landmarks, taken on the full image."""
    rgb = _rgb(photo)
    _, predictor = detector_and_predictor()
    return [_landmarks(predictor, rgb, box, score) for box, score in boxes]


def detector_scale(width: int, height: int, stage: FaceStage) -> float:
    """The factor the detector's copy of a ``width`` x ``height`` photo is resized by."""
    return min(1.0, stage.max_side / max(height, width))


def detector_pixels(width: int, height: int, stage: FaceStage) -> int:
    """The pixels the detector scans for one photo: its copy, enlarged ``upsample`` times
    (each doubles both sides), what its CPU time grows with."""
    scale = detector_scale(width, height, stage)
    return round(width * scale) * round(height * scale) * 4 ** stage.upsample


def whole_image_face(photo: Image.Image | np.ndarray) -> Face:
    """The whole image as the face's box, with the landmarks found in it (for photos that
    are already face crops the detector missed)."""
    rgb = _rgb(photo)
    _, predictor = detector_and_predictor()
    return _landmarks(predictor, rgb, (0, 0, rgb.shape[1], rgb.shape[0]))


def align(photo: Image.Image | np.ndarray, face: Face, stage: FaceStage) -> FaceChip:
    """The face warped onto the template (``dlib.get_face_chip``: a similarity from the five
    landmarks, bilinear, a pyramid when the face is much larger than the chip)."""
    chip = dlib_module().get_face_chip(_rgb(photo), _shape(face), size=stage.size,
                                       padding=stage.padding)
    return FaceChip(face, np.asarray(chip, dtype=np.uint8))


def face_chips(photo: Image.Image | np.ndarray, stage: FaceStage, max_faces: int | None = None,
               min_face_px: int = 0) -> list[FaceChip]:
    """Every face found (largest first, at most ``max_faces``) and its aligned chip."""
    rgb = _rgb(photo)
    faces = find_faces(rgb, stage, min_face_px, max_faces)
    return [align(rgb, face, stage) for face in faces]


def chip_to_photo(face: Face, stage: FaceStage) -> np.ndarray:
    """The 2x3 map from chip pixels ``(u, v, 1)`` to the photo's ``(x, y)``: the similarity
    ``dlib.get_face_chip`` samples by (its chip details: a rectangle and an angle)."""
    details = dlib_module().get_face_chip_details(_shape(face), size=stage.size,
                                                  padding=stage.padding)
    rect, angle = details.rect, details.angle
    scale = (rect.right() - rect.left()) / (stage.size - 1)
    centre = np.array([(rect.left() + rect.right()) / 2, (rect.top() + rect.bottom()) / 2])
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    linear = rotation * scale
    middle = (stage.size - 1) / 2
    shift = centre - linear @ np.array([middle, middle])
    return np.hstack([linear, shift[:, None]])
