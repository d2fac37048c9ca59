"""Enroll identities from a folder of images into a model's served gallery, offline.

    python -m serving.enroll --images people/ --model-uri models:/zoo-faces@champion

``people/<identity>/*.png``: one sub-folder per identity, named after it. The images are
embedded by the model with the server's own code and added to the gallery table the server
of that model uses (the same state folder or ``ZOO_GALLERY_DIR``, or ``ZOO_GALLERY_URI``), one
transaction per identity, so a running server finds them at its next request.

Each enrollment also keeps, sealed, what the model's later versions need to embed it again
(``serving/gallery/kept.py``), so ``python -m serving.migrate`` carries these people to a new
version without their files.
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mlflow_source.fetch import fetch_bundle
from serving.errors import RequestError
from serving.gallery.kept import keep_chips, keep_image
from serving.gallery.names import identity_name
from serving.inputs.faces import FaceRequest, read_faces_now
from serving.inputs.images import images_to_array
from serving.inputs.uploads import Upload
from serving.model.served import ServedModel
from serving.settings import ServeSettings
from zoo.cli import StrictParser
from zoo.data.sources import image_extensions

log = logging.getLogger(__name__)


def identity_folders(root: Path) -> dict[str, list[Path]]:
    """Image files per identity (sub-folder name), in a stable order."""
    if not root.is_dir():
        raise FileNotFoundError(f"--images {root} is not a folder")
    extensions = image_extensions()
    people = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if not inside(folder, root):
            log.warning("skipped folder %s: it links outside %s", folder.name, root)
            continue
        files = sorted(p for p in folder.rglob("*") if p.is_file()
                       and p.suffix.lower() in extensions)
        if files:
            people[folder.name] = files
    if not people:
        raise FileNotFoundError(f"no sub-folders with images under {root}: lay it out as "
                                f"{root}/<identity>/<image>.png")
    return people


def inside(path: Path, root: Path) -> bool:
    """Whether ``path``, its links followed, stays under ``root`` (a folder of people must not
    lead the enrolment to files elsewhere on the machine)."""
    return path.resolve().is_relative_to(root.resolve())


def readable(path: Path, root: Path, settings: ServeSettings) -> str | None:
    """Why ``path`` is not read (outside ``root``, or larger than one image may be), else None;
    checked before a byte of it is read."""
    if not inside(path, root):
        return f"it links outside {root}"
    size = path.stat().st_size
    if size > settings.max_image_bytes:
        return (f"{size} bytes, more than the server's image limit of "
                f"{settings.max_image_bytes} (ZOO_MAX_IMAGE_BYTES)")
    return None


def _model_input(model: ServedModel, upload: Upload, settings: ServeSettings
                 ) -> tuple[np.ndarray, bytes | None]:
    """One photo as the model's input (the image, or a face model's largest face), and what
    its enrollment keeps for later versions (None where keeping is off)."""
    keeping = model.kept_kind is not None
    if model.faces is None:
        x, kept = images_to_array([upload], model.pre, settings, keep_image if keeping else None)
        return x, kept[0] if kept else None
    request = FaceRequest.of(settings, one=True, largest=True)
    found = read_faces_now([upload], model.pre, model.faces, request, settings,
                           keep_chips if keeping else None)
    return found.x, found.pictures[0][0] if found.pictures else None


def enroll_folder(root: Path, model_uri: str, batch_size: int = 64) -> tuple[int, int, int]:
    """Enroll every identity under ``root``; returns (identities, images enrolled, images
    refused)."""
    settings = replace(ServeSettings.from_env(), model_uri=model_uri, max_batch_size=batch_size)
    people = identity_folders(root)
    model = ServedModel(fetch_bundle(model_uri, settings.cache_path()), settings)
    if model.pre.kind != "image":
        raise ValueError(f"{model_uri} takes rows, not images: POST rows to /enroll instead")
    added = refused = 0
    try:
        for folder_name, files in tqdm(people.items(), desc="enroll", unit="identity"):
            try:
                name = identity_name(folder_name)
            except RequestError as exc:
                log.warning("skipped folder %r: %s", folder_name, exc)
                refused += len(files)
                continue
            arrays, digests, kept = [], [], []
            for path in files:
                why = readable(path, root, settings)
                if why is not None:
                    log.warning("skipped %s: %s", path, why)
                    refused += 1
                    continue
                data = path.read_bytes()
                try:
                    x, keep = _model_input(model, Upload(path.name, data), settings)
                    arrays.append(x)
                    kept.append(keep)
                    digests.append(hashlib.sha256(data).hexdigest())
                except RequestError as exc:
                    log.warning("skipped %s: %s", path, exc)
                    refused += 1
            if not arrays:
                continue
            out = model.run_batched(np.concatenate(arrays))
            model.gallery.enroll(out["embedding"], name, digests,
                                 (model.kept_kind, kept) if model.kept_kind else None)
            added += len(digests)
    finally:
        model.close()
    return len(people), added, refused


def main(argv: list[str] | None = None) -> int:
    parser = StrictParser(prog="python -m serving.enroll", description=__doc__,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, required=True,
                        help="folder with one sub-folder of images per identity")
    parser.add_argument("--model-uri", default=ServeSettings().model_uri,
                        help="registered model whose gallery to fill (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        people, added, refused = enroll_folder(args.images, args.model_uri, args.batch_size)
    except (LookupError, FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if not added:
        print(f"error: enrolled nothing: every one of the {refused} images under {args.images} "
              "was refused (the warnings above say why)", file=sys.stderr)
        return 1
    print(f"enrolled {added} images of {people} identities into the gallery of "
          f"{args.model_uri}" + (f" ({refused} images refused)" if refused else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
