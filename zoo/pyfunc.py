"""The zoo model as a generic ``predict(data)``: what MLflow's ``python_function`` flavor
of every logged zoo model loads (``loader_module: zoo.pyfunc``).

The model is a TorchScript trace saved beside the pickled module, with its preprocessing in
the file, so loading it runs no pickled Python code. ``predict`` takes:

- an ndarray (or tensor) batch ``[B, C, H, W]`` of float32 inputs, already preprocessed;
- a DataFrame (or dict) with an ``image`` column of encoded image files (bytes, or base64
  text as MLflow's scoring server hands them over), resized and normalised here exactly as
  in training and serving;
- for tabular models, a DataFrame of the raw feature columns (or an ndarray ``[B, F]`` of
  raw features), encoded and standardised here as in training: a table's text categories
  (an unseen one is "unknown") and missing values (None, NaN) included.

A model with a face stage (``ModelRecord.faces``) finds the faces of each encoded image,
aligns the largest and embeds its chip (a ``face_box`` column says where it was); an image
without a face is an error that names it. A preprocessed batch is taken as chips.

It answers a DataFrame, one row per input: ``embedding`` (L2-normalised), and where the
model classifies, ``logits``, the top ``label`` and its ``probability``.
"""
from __future__ import annotations

import base64
import binascii
import io
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from zoo import names
from zoo.data.preprocessing import preprocess_images, preprocess_rows
from zoo.export.torchscript_format import load_torchscript
from zoo.metrics.classification import softmax
from zoo.record import ModelRecord

IMAGE_COLUMN = "image"


class ZooPredictor:
    """A traced zoo model with its preprocessing."""

    def __init__(self, module: torch.jit.ScriptModule, record: ModelRecord | None) -> None:
        if record is None:
            raise ValueError("the traced model carries no model record: not a model-zoo model")
        self.module, self.record = module, record
        self.pre = record.pre

    def inputs(self, data: Any) -> torch.Tensor:
        """The model's float32 input batch from any of the accepted forms."""
        return self.inputs_and_faces(data)[0]

    def inputs_and_faces(self, data: Any) -> tuple[torch.Tensor, list[list[int]] | None]:
        """:meth:`inputs`, and for a face model given encoded images each one's face box."""
        if isinstance(data, dict):
            data = pd.DataFrame(data)
        if isinstance(data, pd.DataFrame):
            if self.pre.kind == "tabular":
                return preprocess_rows(data, self.pre), None
            if IMAGE_COLUMN not in data.columns:
                raise ValueError(f"an image model takes a DataFrame with an {IMAGE_COLUMN!r} "
                                 f"column of encoded image files; got columns {list(data.columns)}")
            images = [_image(v, i) for i, v in enumerate(data[IMAGE_COLUMN])]
            if self.record.faces is not None:
                chips, boxes = _largest_faces(images, self.record)
                return preprocess_images(chips, self.pre), boxes
            return preprocess_images(images, self.pre), None
        array = np.asarray(data.detach().cpu() if isinstance(data, torch.Tensor) else data)
        if self.pre.kind == "tabular":
            return preprocess_rows(array, self.pre), None
        if array.ndim == 3:
            array = array[None]
        expected = tuple(self.pre.input_size)
        if array.ndim != 4 or tuple(array.shape[1:]) != expected:
            raise ValueError(f"expected a preprocessed batch [B, {', '.join(map(str, expected))}]"
                             f", got shape {list(array.shape)}; send encoded images as a "
                             f"DataFrame column {IMAGE_COLUMN!r} instead")
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)), None

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> pd.DataFrame:
        x, boxes = self.inputs_and_faces(data)
        with torch.inference_mode():
            out = self.module(x)
        embedding = out["embedding"].float().numpy()
        frame = pd.DataFrame({"embedding": list(embedding)})
        if boxes is not None:
            frame["face_box"] = boxes
        if "logits" in out:
            logits = out["logits"].float().numpy()
            probabilities = softmax(logits)
            top = probabilities.argmax(axis=1)
            frame["logits"] = list(logits)
            frame["label"] = [self.pre.class_names[i] for i in top]
            frame["probability"] = probabilities[np.arange(len(top)), top]
        return frame


def _largest_faces(images: list[Any], record: ModelRecord) -> tuple[list[Any], list[list[int]]]:
    """Each image's largest face, aligned (the chips), and where it was."""
    from zoo.data.preprocessing import to_channels
    from zoo.faces.detect import face_chips

    chips, boxes = [], []
    for i, image in enumerate(images):
        found = face_chips(np.asarray(to_channels(image, 3)), record.faces, max_faces=1)
        if not found:
            raise ValueError(f"no face found in image {i}")
        chips.append(found[0].image())
        boxes.append(list(found[0].face.box))
    return chips, boxes


def _image(value: Any, index: int) -> Any:
    """One encoded image (bytes, or base64 text) as a PIL image."""
    from PIL import Image

    if isinstance(value, str):
        try:
            value = base64.b64decode(value.split(",", 1)[-1], validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"image {index} is text that is not base64") from None
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise ValueError(f"image {index} is a {type(value).__name__}, not an encoded image file")
    try:
        image = Image.open(io.BytesIO(bytes(value)))
        image.load()
    except Exception as exc:  # noqa: BLE001 - Pillow raises many kinds for a bad file
        raise ValueError(f"image {index} is not an image Pillow can read ({exc})") from None
    return image


def load(folder: str | Path) -> ZooPredictor:
    module, record = load_torchscript(Path(folder) / names.TORCHSCRIPT_FILE)
    return ZooPredictor(module, record)


def _load_pyfunc(data_path: str, model_config: dict[str, Any] | None = None) -> ZooPredictor:
    """MLflow's entry point for the ``python_function`` flavor."""
    return load(data_path)
