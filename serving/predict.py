"""Offline predictions for a folder of images, with the server's code and answers.

    python -m serving.predict --images DIR --model-uri models:/zoo-digits@champion \\
        [--output predictions.csv] [--gradcam-dir OUT] [--method gradcam++]

Writes one CSV row per image (predicted class and probability, nearest identity and its
similarity, ``unknown`` below the threshold) and, with ``--gradcam-dir``, one overlay PNG per
image. A file that is not a readable image gets a row with its error instead of stopping
the run.
"""
from __future__ import annotations

import argparse
import csv
import logging
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from serving.served_model import ServedModel
from serving.gradcam import METHODS
from serving.inputs import RequestError, Upload, open_image
from serving.mlflow_source import fetch_bundle
from serving.settings import ServeSettings
from zoo.cli import StrictParser
from zoo.data import preprocess_images
from zoo.data.sources import image_extensions

log = logging.getLogger(__name__)

COLUMNS = ["file", "label", "probability", "identity", "similarity", "known", "error"]


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
                    decoded.append((path, open_image(Upload(path.name, path.read_bytes()), index,
                                                     settings)))
                except (RequestError, OSError) as exc:
                    failed += 1
                    rows.append({"file": str(path.relative_to(images)), "error": str(exc)})
            if decoded:
                x = preprocess_images([im for _, im in decoded], model.pre).numpy()
                out = model.run_batched(x)
                rows += _rows(model, images, decoded, out)
                if gradcam_dir is not None:
                    _overlays(model, decoded, x, gradcam_dir, images, method)
            writer.writerows(rows)
    tmp.replace(output)
    log.info("wrote %s (%d images, %d unreadable)", output, len(files), failed)
    return failed


def _rows(model: ServedModel, root: Path, decoded: list, out: dict[str, np.ndarray]) -> list[dict]:
    classes = model.top_classes(out["logits"], 1) if model.has_classes else None
    identities = model.identify(out["embedding"], 1) if len(model.gallery) else None
    rows = []
    for i, (path, _) in enumerate(decoded):
        row = {"file": str(path.relative_to(root))}
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
    for i, (path, image) in enumerate(decoded):
        explanation = model.explainer.explain(torch.from_numpy(x[i:i + 1]), image, method,
                                              class_names=model.class_names)
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
