"""The kept chip: one aligned chip per enrolled face, at a canonical size and layout, from which
any face stage (another ``size``, another ``padding``) is re-warped, so that a later model
version re-embeds enrolled people without their photos.

**Layout** (``KEPT_CHIP``): dlib's face-chip template (``dlib.get_face_chip``, the five
landmarks fitted by a least-squares similarity, as ``zoo.faces.detect.align`` cuts every
chip) at ``padding=1.0`` and ``size=300``. The chip spans template units ``[-1, 2]`` on each
axis at 100 px per unit, which is ``dlib_resnet``'s native stage (150 px at padding 0.25:
150 / 1.5 = 100 px per unit), so that stage is re-warped at a scale of one.

**What it serves exactly**: every stage whose padding is at most 1.0 and whose resolution,
``size / (1 + 2 * padding)`` px per template unit, is at most 100 (150 px at 0.25, 112 px at
0.4, 200 px at 0.5, 64 px at any padding up to 1.0, ...): the stage's square lies inside the
kept one and is sampled at no finer a step. Beyond that range it still re-warps, with a
known loss: a finer stage (224 px at 0.25 is 149 px per unit) gets an upsampled, softer chip
than the photo would give; a larger padding (up to the 2.0 ``FaceStage`` allows) gets black
beyond template units ``[-1, 2]`` (hair, shoulders, background), as a chip cut past a photo's
border does. Where the photo itself ended inside the kept square, the kept chip is black there
too, as the directly cut chip is.

**Re-warping is a centred scaling.** Every stage's chip is centred on the same point, template
``(0.5, 0.5)``, at the same angle (dlib's similarity depends on the landmarks and the template
only, and the stages' templates differ by a scaling about that centre), so chip pixel ``u`` of
a stage is kept-chip pixel ``c + ratio * (u - (size - 1) / 2)`` with ``c`` the kept chip's
centre. dlib's chip details make ``ratio`` depend on the face's size in the photo: a chip of
``size`` px spans ``width * (1 + 2 * padding) - 1`` photo px between its first and last pixel
centres (``centered_drect`` takes one pixel off the rectangle's width), ``width`` being the
face's template unit in photo px. So the map is exact only given ``width``, which the kept
chip alone does not hold: ``face_width`` measures it, ``encode``/``decode`` keep it in the
stored file's metadata, and ``rewarp(..., face_width=None)`` takes the large-face limit, off
in scale by ``1 / (width * (1 + 2 * padding)) - 1 / (3 * width)`` (under 0.7 px at a 150 px
chip's edge for a face of 37 px per unit, the smallest in ORL; less for larger faces).

Re-running ``dlib.get_face_chip`` on the kept chip with the landmarks mapped into it would not
be exact: dlib takes landmarks as integer points (up to half a pixel off), and its one-pixel
rule would then apply in the kept chip's pixels rather than the photo's. So ``rewarp`` builds
the scaling itself and hands dlib only the sampling.

**Sampling** follows what dlib would do to the photo: when its chip from the photo would be
sampled bilinearly from the photo itself, the re-warp samples the kept chip bilinearly
(``dlib.transform_image``); when dlib would first halve the photo through its image pyramid
(the face spans more than twice the chip), the re-warp lets ``dlib.extract_image_chip`` pick
its pyramid on the kept chip. The pixels are not bit-equal: the kept chip is one bilinear
resampling already, and a pyramid built on the kept chip halves at other places than one built
on the photo. On ORL (``tests/test_kept_chips.py``) the re-warped chip is within 1.4 grey
levels on average of the cut one for stages of 64 px and more, less than the cut chip itself
changes when the same photo comes at twice its resolution; at 32 px, where both chips come
through a pyramid, 5.3 (twice the resolution: 3.3). ``dlib_resnet``'s embedding of the native
chip re-warped is at cosine 0.9998 or more to that of the chip from the photo.

No MLflow or serving import: the server stores what ``encode`` returns, encrypted.
"""
from __future__ import annotations

import io
import json

import numpy as np
from PIL import Image

from .detect import Face, _shape, align
from .dlib_models import dlib_module
from .stage import FaceStage

#: The kept chip's layout: dlib's template at padding 1.0, 300 px (100 px per template unit).
KEPT_CHIP = FaceStage(size=300, padding=1.0)
#: The stored encodings, and the one recommended (docs/faces.md has their sizes and figures).
KEPT_FORMATS = ("jpeg", "png")
KEPT_FORMAT = "jpeg"
JPEG_QUALITY = 95
#: The name of the layout, in every stored file's metadata.
LAYOUT = "dlib-5point-template"


def canonical_chip(photo: Image.Image | np.ndarray, face: Face,
                   kept: FaceStage = KEPT_CHIP) -> np.ndarray:
    """The face's kept chip (uint8 RGB ``[300, 300, 3]``): ``dlib.get_face_chip`` from the
    photo with the face's five landmarks, at the kept layout."""
    return align(photo, face, kept).chip


def face_width(face: Face) -> float:
    """The face's template unit in the photo's pixels (the side of dlib's chip rectangle
    over ``1 + 2 * padding``): what makes ``rewarp`` exact."""
    details = dlib_module().get_face_chip_details(_shape(face), size=KEPT_CHIP.size,
                                                  padding=KEPT_CHIP.padding)
    return float(details.rect.width()) / (1 + 2 * KEPT_CHIP.padding)


def _step(stage: FaceStage, width: float | None) -> float:
    """Photo px between neighbouring pixels of the stage's chip (``width`` px per template
    unit; ``None``: per template unit, the large-face limit)."""
    span = 1 + 2 * stage.padding
    return (span if width is None else width * span - 1) / (stage.size - 1)


def _photo_pyramid(stage: FaceStage, width: float) -> bool:
    """Whether ``dlib.get_face_chip`` would sample this stage's chip from a halved photo: its
    rule (``extract_image_chips``) on a rectangle of the face's span (``drectangle.width`` is
    ``right - left + 1``; halving is the same wherever the rectangle lies)."""
    dlib = dlib_module()
    side = width * (1 + 2 * stage.padding) - 1
    down = dlib.pyramid_down(2).rect_down(dlib.drectangle(0.0, 0.0, side, side))
    return down.area() > stage.size * stage.size


def rewarp_map(stage: FaceStage, face_width: float | None = None,
               kept: FaceStage = KEPT_CHIP) -> np.ndarray:
    """The 3x3 map from the stage's chip pixels ``(u, v, 1)`` to the kept chip's: a scaling
    about the chips' common centre (exact given ``face_width``; the large-face limit
    without)."""
    if face_width is not None and not (np.isfinite(face_width) and face_width > 0):
        raise ValueError(f"a face's width is a positive number of pixels, got {face_width}")
    ratio = _step(stage, face_width) / _step(kept, face_width)
    shift = (kept.size - 1) / 2 - ratio * (stage.size - 1) / 2
    return np.array([[ratio, 0.0, shift], [0.0, ratio, shift], [0.0, 0.0, 1.0]])


def rewarp(canonical: np.ndarray, stage: FaceStage, face_width: float | None = None,
           kept: FaceStage = KEPT_CHIP) -> np.ndarray:
    """The chip ``stage`` would have cut from the photo (uint8 RGB ``[size, size, 3]``),
    computed from the kept chip alone (plus the face's width, to be exact: see the module)."""
    canonical = np.ascontiguousarray(canonical, dtype=np.uint8)
    if canonical.shape != (kept.size, kept.size, 3):
        raise ValueError(f"a kept chip is uint8 RGB {kept.size}x{kept.size}, got an array of "
                         f"shape {canonical.shape}")
    dlib = dlib_module()
    m = rewarp_map(stage, face_width, kept)
    # the kept chip's edge repeated outwards, wider than dlib's pyramid reaches past the
    # stage's square (about twice the scale), so no sample near the kept chip's edge is lost;
    # what lies beyond that edge is then made black, as a chip cut past a photo's border is
    margin = int(np.ceil(2 * max(m[0, 0], 1.0))) + 2
    framed = np.pad(canonical, ((margin, margin), (margin, margin), (0, 0)), mode="edge")
    shifted = m + np.array([[0.0, 0.0, margin], [0.0, 0.0, margin], [0.0, 0.0, 0.0]])
    if face_width is not None and not _photo_pyramid(stage, face_width):
        chip = dlib.transform_image(framed, dlib.point_transform_projective(shifted),
                                    stage.size, stage.size)
    else:  # the rectangle whose corners are the stage's corner pixels, in the kept chip
        first, last = shifted[0, 2], shifted[0, 0] * (stage.size - 1) + shifted[0, 2]
        details = dlib.chip_details(dlib.drectangle(first, first, last, last),
                                    dlib.chip_dims(stage.size, stage.size), 0.0)
        chip = dlib.extract_image_chip(framed, details)
    chip = np.array(chip, dtype=np.uint8)
    place = m[0, 0] * np.arange(stage.size) + m[0, 2]  # the same along both axes
    beyond = (place < -1e-6) | (place > kept.size - 1 + 1e-6)
    chip[beyond] = 0
    chip[:, beyond] = 0
    return chip


def encode(chip: np.ndarray, face_width: float | None, fmt: str = KEPT_FORMAT) -> bytes:
    """The kept chip as one file (JPEG at quality 95 with full-resolution colour, or PNG),
    the layout and the face's width in its metadata."""
    chip = np.ascontiguousarray(chip, dtype=np.uint8)
    if chip.shape != (KEPT_CHIP.size, KEPT_CHIP.size, 3):
        raise ValueError(f"a kept chip is uint8 RGB {KEPT_CHIP.size}x{KEPT_CHIP.size}, got "
                         f"{chip.shape}")
    note = json.dumps({"layout": LAYOUT, "size": KEPT_CHIP.size, "padding": KEPT_CHIP.padding,
                       "face_width": face_width})
    buffer = io.BytesIO()
    image = Image.fromarray(chip, mode="RGB")
    if fmt == "jpeg":
        image.save(buffer, format="JPEG", quality=JPEG_QUALITY, subsampling=0,
                   comment=note.encode())
    elif fmt == "png":
        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        info.add_text("zoo.kept_chip", note)
        image.save(buffer, format="PNG", optimize=True, pnginfo=info)
    else:
        raise ValueError(f"a kept chip is stored as one of {', '.join(KEPT_FORMATS)}, not "
                         f"{fmt!r}")
    return buffer.getvalue()


def decode(data: bytes) -> tuple[np.ndarray, float | None]:
    """A stored kept chip and its face's width; an error if it is not one at this layout."""
    with Image.open(io.BytesIO(data)) as image:
        raw = image.info.get("comment") or image.info.get("zoo.kept_chip")
        if isinstance(raw, bytes):
            raw = raw.decode()
        try:
            note = json.loads(raw) if raw else None
        except ValueError:
            note = None
        if (not isinstance(note, dict)
                or (note.get("layout"), note.get("size"), note.get("padding"))
                != (LAYOUT, KEPT_CHIP.size, KEPT_CHIP.padding)):
            raise ValueError(f"not a kept chip at this layout ({LAYOUT}, {KEPT_CHIP.size} px, "
                             f"padding {KEPT_CHIP.padding}): its note is {raw!r}")
        chip = np.asarray(image.convert("RGB"))
    width = note.get("face_width")
    return chip, None if width is None else float(width)
