"""Offline predictions for a folder of images, with the server's code and answers.

    python -m serving.predict --images DIR --model-uri models:/zoo-digits@champion \\
        [--output predictions.csv] [--gradcam-dir OUT] [--method gradcam++]

Writes one CSV row per image (predicted class and probability, nearest identity and its
similarity, ``unknown`` below the threshold) and, with ``--gradcam-dir``, one overlay PNG per
image. A model with a face stage writes one row per face found, its box in ``face``
(``x0 y0 x1 y1``), and overlays of the largest face's chip. A file that is not a readable
image (or, for a face model, holds no face) gets a row with its error instead of stopping
the run.
"""
from __future__ import annotations

import argparse
import csv
import logging
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from mlflow_source.fetch import fetch_bundle
from serving.errors import RequestError
from serving.inputs.faces import FaceRequest, chip_picture, read_faces_now
from serving.inputs.images import open_image
from serving.inputs.uploads import Upload
from serving.model.gradcam import METHODS
from serving.model.served import ServedModel
from serving.settings import ServeSettings
from zoo.cli import StrictParser
from zoo.data import preprocess_images
from zoo.data.sources import image_extensions

log = logging.getLogger(__name__)

COLUMNS = ["file", "face", "label", "probability", "identity", "similarity", "known", "error"]


def image_files(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursively), in a stable order."""
    if not folder.is_dir():
        raise FileNotFoundError(f"--images {folder} is not a folder")
    extensions = image_extensions()
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in extensions)
    if not files:
        raise FileNotFoundError(f"no image files ({', '.join(sorted(extensions))}) under {folder}")
    return files


def predict(images: Path, model_uri: str, output: Path, gradcam_dir: Path | None = None,
            method: str = "gradcam", batch_size: int = 64) -> int:
    """Write ``output`` (and overlays); returns the number of images that failed."""
    settings = replace(ServeSettings.from_env(), model_uri=model_uri, max_batch_size=batch_size)
    model = ServedModel(fetch_bundle(model_uri, settings.cache_path()), settings)
    if model.pre.kind != "image":
        raise ValueError(f"{model_uri} takes rows, not images: serve it and POST rows instead")
    files = image_files(images)
    if gradcam_dir is not None:
        gradcam_dir.mkdir(parents=True, exist_ok=True)
    output.parent.mkdir(parents=True, exist_ok=True)
    failed = 0
    tmp = output.with_name(f".{output.name}.part")
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, COLUMNS)
        writer.writeheader()
        for start in tqdm(range(0, len(files), batch_size), desc="predict", unit="batch"):
            chunk = files[start:start + batch_size]
            decoded, rows = [], []
            for index, path in enumerate(chunk, start):
                try:
                    decoded.append((path, *_photo(model, path, index, settings)))
                except (RequestError, OSError) as exc:
                    failed += 1
                    rows.append({"file": str(path.relative_to(images)), "error": str(exc)})
            if decoded:
                x = np.concatenate([x for _, _, x, _ in decoded])
                out = model.run_batched(x)
                rows += _rows(model, images, decoded, out)
                if gradcam_dir is not None:
                    _overlays(model, decoded, x, gradcam_dir, images, method)
            writer.writerows(rows)
    tmp.replace(output)
    log.info("wrote %s (%d images, %d unreadable)", output, len(files), failed)
    return failed


def _photo(model: ServedModel, path: Path, index: int, settings: ServeSettings
           ) -> tuple[Any, np.ndarray, list[str]]:
    """One file: its picture, its model input rows (the image, or every face's chip) and
    each row's face box (empty for a model without a face stage)."""
    upload = Upload(path.name, path.read_bytes())
    if model.faces is None:
        image = open_image(upload, index, settings)
        return image, preprocess_images([image], model.pre).numpy(), [""]
    found = read_faces_now([upload], model.pre, model.faces, FaceRequest.of(settings),
                           settings)
    boxes = [" ".join(str(v) for v in face.box) for face in found.faces[0]]
    return chip_picture(found.x[0]), found.x, boxes


def _rows(model: ServedModel, root: Path, decoded: list, out: dict[str, np.ndarray]) -> list[dict]:
    classes = model.top_classes(out["logits"], 1) if model.has_classes else None
    identities = (model.identify(out["embedding"], 1, model.threshold) if len(model.gallery)
                  else None)
    rows = []
    faces = [(path, box) for path, _, _, boxes in decoded for box in boxes]
    for i, (path, box) in enumerate(faces):
        row = {"file": str(path.relative_to(root)), "face": box}
        if classes is not None:
            row.update(label=classes[i][0].label, probability=f"{classes[i][0].probability:.6f}")
        if identities is not None:
            answer = identities[i]
            row.update(identity=answer.identity, similarity=f"{answer.similarity:.6f}",
                       known=answer.known)
        rows.append(row)
    return rows


def _overlays(model: ServedModel, decoded: list, x: np.ndarray, folder: Path, root: Path,
              method: str) -> None:
    if not model.has_classes:
        return
    row = 0
    for path, image, inputs, _ in decoded:
        # the image's first row: the image itself, or a face model's largest face
        first = torch.from_numpy(model.model_input(x[row:row + 1]))
        explanation = model.explainer.explain(first, image, method,
                                              class_names=model.class_names)
        row += len(inputs)
        target = folder / path.relative_to(root).with_suffix(".png")
        target.parent.mkdir(parents=True, exist_ok=True)
        explanation.overlay.save(target)


def main(argv: list[str] | None = None) -> int:
    parser = StrictParser(prog="python -m serving.predict", description=__doc__,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, required=True, help="folder of images")
    parser.add_argument("--model-uri", default=ServeSettings().model_uri,
                        help="registered model (default: %(default)s)")
    parser.add_argument("--output", type=Path, default=Path("predictions.csv"),
                        help="CSV to write (default: %(default)s)")
    parser.add_argument("--gradcam-dir", type=Path, default=None,
                        help="write one GradCAM overlay PNG per image here")
    parser.add_argument("--method", choices=sorted(METHODS), default="gradcam")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        failed = predict(args.images, args.model_uri, args.output, args.gradcam_dir,
                         args.method, args.batch_size)
    except (LookupError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.output}" + (f" and overlays in {args.gradcam_dir}" if args.gradcam_dir
                                     else "")
          + (f" ({failed} unreadable images)" if failed else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
