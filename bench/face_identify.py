"""Identifying people in photos: the server's ``/identify`` at 8 clients beside
face_recognition's steps run in one process, on the same photos and the same model.

    python bench/face_identify.py                      # 1920x1080 and 640x480, 15 s each
    python bench/face_identify.py --sizes 1920x1080 --seconds 30

Twenty ORL people are enrolled (five images each); the queries are their other five images,
each pasted into a frame of the given size at a random place and scale (JPEG, quality 90).

- **library loop**: what a face_recognition user writes, in this process: decode, dlib's HOG
  detector with one upsampling, the 5-point landmarks of the largest face, its 150 px chip,
  ``compute_face_descriptor``, the Euclidean nearest of the enrolled descriptors
  (``face_recognition.face_distance``). One photo at a time, as the library is used.
- **server**: ``bentoml serve`` of the zoo's ``dlib_resnet`` (``pretrained=true``,
  ``epochs=0``: the same weights) with the face stage, its gallery enrolled from the same
  images by ``serving.enroll``; 8 concurrent clients post one photo per ``/identify``
  (multipart), over HTTP on the same 2 cores as the load generator.

Photos per second for both, their ratio (the target: the server at least 1.0x), timed on the
photos where both found a face, and the share of all queries each identified correctly.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # support.*

from serve_throughput import load, multipart  # noqa: E402  (this folder)
from support.faces import ORL_FACES, paste_faces  # noqa: E402

PEOPLE = [f"s{i}" for i in range(1, 21)]
ENROLLED, QUERIES = range(1, 6), range(6, 11)
CLIENTS = 8


def prepare(root: Path) -> dict[str, str]:
    """The zoo's dlib_resnet at epochs=0 on the enrolled images, registered and exported, and
    its gallery enrolled; the env a server needs."""
    from serving import enroll
    from support.serving_store import make_store, store_env
    from training.config import TrainConfig

    people = root / "people"
    for person in PEOPLE:
        (people / person).mkdir(parents=True)
        for k in ENROLLED:
            (people / person / f"{k}.pgm").symlink_to(ORL_FACES / person / f"{k}.pgm")
    cfg = TrainConfig.of(data=str(people), model="dlib_resnet", pretrained="true", epochs=0,
                         faces="align", image_size=150, channels=3, embedding_dim=128,
                         val_fraction=0.0, test_fraction=0.4, monitor="none", checkpoint=False,
                         plots=False, experiment="face-identify")
    store = make_store(root / "store", [cfg], {"ZOO_FACE_CACHE": str(root / "chips")})
    env = store_env(store, "models:/zoo-people@champion", "gallery")
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        enroll.main(["--images", str(people), "--model-uri", env["ZOO_MODEL_URI"]])
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return env


def queries(size: tuple[int, int], rng: np.random.Generator) -> list[tuple[bytes, str]]:
    """(JPEG bytes, person) of every query image pasted into a frame of ``size``."""
    scale = (1.2, 2.0) if size[0] <= 640 else (3.0, 5.0)
    out = []
    for person in PEOPLE:
        for k in QUERIES:
            frame, _ = paste_faces([ORL_FACES / person / f"{k}.pgm"], rng, size=size, scale=scale)
            buffer = io.BytesIO()
            frame.save(buffer, format="JPEG", quality=90)
            out.append((buffer.getvalue(), person))
    return out


def as_form(jpeg: bytes) -> tuple[bytes, str]:
    return multipart(jpeg, "image/jpeg", "photo.jpg")


class Library:
    """face_recognition's steps on dlib, with its gallery of the enrolled images."""

    def __init__(self) -> None:
        import dlib

        from zoo.faces.dlib_models import PREDICTOR_FILE, model_file
        from zoo.models.dlib_resnet import MODEL_FILE

        self.dlib = dlib
        self.detector = dlib.get_frontal_face_detector()
        self.predictor = dlib.shape_predictor(str(model_file(PREDICTOR_FILE)))
        self.recogniser = dlib.face_recognition_model_v1(str(model_file(MODEL_FILE)))
        from PIL import Image

        known, self.names = [], []
        for person in PEOPLE:
            for k in ENROLLED:
                rgb = np.asarray(Image.open(ORL_FACES / person / f"{k}.pgm").convert("RGB"))
                descriptor = self.descriptor(rgb)
                if descriptor is not None:
                    known.append(descriptor)
                    self.names.append(person)
        self.known = np.stack(known)

    def descriptor(self, rgb: np.ndarray) -> np.ndarray | None:
        boxes = self.detector(rgb, 1)
        if not boxes:
            return None
        box = max(boxes, key=lambda r: r.area())
        chip = self.dlib.get_face_chip(rgb, self.predictor(rgb, box), size=150, padding=0.25)
        return np.asarray(self.recogniser.compute_face_descriptor(chip))

    def identify(self, jpeg: bytes) -> str | None:
        from PIL import Image

        descriptor = self.descriptor(np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB")))
        if descriptor is None:
            return None
        return self.names[int(np.linalg.norm(self.known - descriptor, axis=1).argmin())]


def library_answers(library: Library, photos: list[tuple[bytes, str]]) -> list[str | None]:
    """Who the library says each photo shows (None: it found no face)."""
    return [library.identify(jpeg) for jpeg, _ in photos]


def library_rate(library: Library, photos: list[tuple[bytes, str]], seconds: float) -> float:
    """Photos per second over about ``seconds``, one after another."""
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        library.identify(photos[done % len(photos)][0])
        done += 1
    return done / (time.perf_counter() - started)


def server_answers(url: str, photos: list[tuple[bytes, str]]) -> list[str | None]:
    """Who the server says each photo's largest face is (None: a 422, no face found)."""
    import httpx

    out: list[str | None] = []
    for jpeg, _ in photos:
        body, ctype = as_form(jpeg)
        response = httpx.post(f"{url}/identify", content=body, headers={"Content-Type": ctype},
                              timeout=60)
        if response.status_code == 422:
            out.append(None)
            continue
        response.raise_for_status()
        out.append(response.json()["results"][0]["identity"])
    return out


def server_rate(url: str, photos: list[tuple[bytes, str]], seconds: float, pid: int) -> float:
    """Photos per second at ``CLIENTS`` concurrent clients, one photo per request."""
    result = asyncio.run(load(url, [as_form(j) for j, _ in photos], CLIENTS, seconds,
                              "/identify", pid))
    if result.errors:
        raise RuntimeError(f"{result.errors} of {result.requests} requests failed")
    return result.rps


def share_right(answers: list[str | None], photos: list[tuple[bytes, str]]) -> str:
    right = sum(a == person for a, (_, person) in zip(answers, photos))
    found = sum(a is not None for a in answers)
    return f"{right / len(photos):.0%} ({found} found)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1920x1080,640x480")
    parser.add_argument("--seconds", type=float, default=15.0)
    args = parser.parse_args()
    if not ORL_FACES.is_dir():
        print(f"ORL faces not found at {ORL_FACES}", file=sys.stderr)
        return 2
    from support.process import Server

    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        with contextlib.redirect_stdout(sys.stderr):  # the export's report is not the table
            env = prepare(Path(tmp))
        library = Library()
        with Server("serving.service:ZooService", env) as server:
            for size in sizes:
                photos = queries(size, rng)
                ours_said = server_answers(server.url, photos)
                theirs_said = library_answers(library, photos)
                # timed on the photos where both found a face (a 422 is no failure, but no
                # work either)
                both = [p for p, a, b in zip(photos, ours_said, theirs_said)
                        if a is not None and b is not None]
                ours = server_rate(server.url, both, args.seconds, server.process.pid)
                theirs = library_rate(library, both, args.seconds)
                rows.append((size, theirs, ours, share_right(theirs_said, photos),
                             share_right(ours_said, photos)))
                print(f"{size[0]}x{size[1]} done", file=sys.stderr, flush=True)
    print(f"/identify at {CLIENTS} clients vs face_recognition's steps in one process, "
          f"{len(PEOPLE)} people enrolled, one face per photo")
    print("| photo | library photos/s | server photos/s | server / library | identified right "
          "(faces found of 100): library / server |")
    print("|---|---:|---:|---:|---|")
    for size, theirs, ours, theirs_right, ours_right in rows:
        print(f"| {size[0]}x{size[1]} | {theirs:.1f} | {ours:.1f} | {ours / theirs:.2f}x | "
              f"{theirs_right} / {ours_right} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
