"""The face stage's time per photo beside the same steps written directly on dlib, as
face_recognition takes them, in one process.

    python bench/face_stage.py [--photos 10] [--rounds 3]

Photos are ORL faces (``../shared/data/orl_faces``) pasted at random places and scales into
640x480 and 1920x1080 frames, with one and with five faces. For each kind, measured in turns
over ``--rounds`` (the best round counting):

- **dlib, as face_recognition**: ``detector(img, 1)`` on the full photo, the 5-point
  ``shape_predictor`` on each box, ``dlib.get_face_chip(img, shape, 150, 0.25)``;
- **zoo stage**: ``zoo.faces.detect.face_chips`` with ``FaceStage(size=150)``: the detector
  on a copy at most 1,024 px long, landmarks and chips on the full photo.

Both find the same faces on these photos (the table says how many of the pasted ones each
found). The server's /identify throughput at 8 clients against a library loop that also
embeds (dlib's face ResNet) belongs with the pretrained face model (the next step).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support.faces import ORL_FACES, contains, paste_faces
from zoo.faces import FaceStage
from zoo.faces.detect import face_chips
from zoo.faces.dlib_models import dlib_module, model_file

KINDS = (((640, 480), 1), ((640, 480), 5), ((1920, 1080), 1), ((1920, 1080), 5))


def photos(size: tuple[int, int], faces: int, count: int, rng: np.random.Generator) -> list:
    people = sorted(p for p in ORL_FACES.iterdir() if p.is_dir())[2:]
    out = []
    scale = (1.2, 2.0) if size[0] <= 640 and faces == 1 else (1.0, 1.4)
    if size[0] > 640:
        scale = (scale[0] * 2.5, scale[1] * 2.5)
    for _ in range(count):
        chosen = [people[int(i)] / "1.pgm" for i in rng.choice(len(people), faces, replace=False)]
        frame, pasted = paste_faces(chosen, rng, size=size, scale=scale)
        out.append((np.asarray(frame), pasted))
    return out


def dlib_loop(rgb: np.ndarray, detector, predictor, dlib) -> list:
    """face_recognition's steps: detect with one upsampling, landmarks, chip."""
    chips = []
    for rect in detector(rgb, 1):
        shape = predictor(rgb, rect)
        chips.append((rect, dlib.get_face_chip(rgb, shape, size=150, padding=0.25)))
    return chips


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=10, help="photos of each kind")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    if not ORL_FACES.is_dir():
        print(f"ORL faces not found at {ORL_FACES}", file=sys.stderr)
        return 1
    dlib = dlib_module()
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(model_file("shape_predictor_5_face_landmarks.dat")))
    stage = FaceStage(size=150)
    rng = np.random.default_rng(0)
    sets = {kind: photos(*kind, args.photos, rng) for kind in KINDS}
    face_chips(sets[KINDS[0]][0][0], stage)  # load the stage's models before timing
    best: dict[tuple, dict[str, float]] = {kind: {} for kind in KINDS}
    found: dict[tuple, dict[str, int]] = {kind: {} for kind in KINDS}
    for _ in range(args.rounds):
        for kind, shots in sets.items():
            for name in ("dlib", "zoo"):
                started, hits = time.perf_counter(), 0
                for rgb, pasted in shots:
                    if name == "dlib":
                        boxes = [(r.left(), r.top(), r.right() + 1, r.bottom() + 1)
                                 for r, _ in dlib_loop(rgb, detector, predictor, dlib)]
                    else:
                        boxes = [c.face.box for c in face_chips(rgb, stage)]
                    hits += sum(any(contains(p.place, b) for b in boxes) for p in pasted)
                per_photo = (time.perf_counter() - started) / len(shots) * 1000
                best[kind][name] = min(best[kind].get(name, float("inf")), per_photo)
                found[kind][name] = hits
    print("| frame | faces | dlib ms/photo | zoo stage ms/photo | zoo / dlib speed | "
          "found dlib / zoo (of pasted) |")
    print("|---|---:|---:|---:|---:|---|")
    for (size, faces), times in best.items():
        pasted = faces * args.photos
        print(f"| {size[0]}x{size[1]} | {faces} | {times['dlib']:.1f} | {times['zoo']:.1f} | "
              f"{times['dlib'] / times['zoo']:.2f}x | {found[(size, faces)]['dlib']} / "
              f"{found[(size, faces)]['zoo']} (of {pasted}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
