"""dlib's face model run by the zoo (ONNX Runtime) beside dlib running it itself, on 150 px
aligned chips, in one process, side by side.

    python bench/face_model_speed.py                 # batch 1 and 32, 5 s each
    python bench/face_model_speed.py --batches 1,8,32 --seconds 10

Both embed the same chips (real ORL faces aligned by the face stage when ORL is beside the
checkout, else random pixels): dlib's ``compute_face_descriptor`` on a list of chips (dlib
batches it), and the zoo's ``dlib_resnet`` exported to ONNX (``zoo.export``) in an ONNX
Runtime session with the machine's threads. Images per second and the zoo / dlib ratio;
the descriptors are checked to agree first.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from zoo.data.preprocessing import normalise, to_unit  # noqa: E402
from zoo.export import export_format, load_exported  # noqa: E402
from zoo.models import create_model  # noqa: E402
from zoo.models.dlib_resnet import (CHIP_SIZE, package_file, preprocessing,  # noqa: E402
                                    resolve_weights)

ORL = REPO.parent / "shared" / "data" / "orl_faces"


def chips(count: int) -> np.ndarray:
    """``count`` aligned chips (uint8 ``[N, 150, 150, 3]``)."""
    if not ORL.is_dir():
        return np.random.default_rng(0).integers(0, 256, (count, CHIP_SIZE, CHIP_SIZE, 3),
                                                 dtype=np.uint8)
    from PIL import Image

    from zoo.faces import FaceStage
    from zoo.faces.detect import face_chips

    stage, out = FaceStage(size=CHIP_SIZE), []
    for path in sorted(ORL.rglob("*.pgm")):
        found = face_chips(Image.open(path).convert("RGB"), stage, max_faces=1)
        if found:
            out.append(found[0].chip)
        if len(out) == count:
            break
    return np.stack(out)


def rate(run, batch: np.ndarray, seconds: float) -> float:
    """Images per second of ``run(batch)`` over about ``seconds`` (after a warm-up call)."""
    run(batch)
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        run(batch)
        done += len(batch)
    return done / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    import dlib

    batches = [int(b) for b in args.batches.split(",")]
    pixels = chips(max(batches))
    recogniser = dlib.face_recognition_model_v1(str(package_file()))
    model = create_model("dlib_resnet", 0, 128, weights=resolve_weights("true")).eval()
    pre = preprocessing()

    def inputs(batch: np.ndarray) -> np.ndarray:
        x = normalise(to_unit(batch.transpose(0, 3, 1, 2)), pre.mean, pre.std)
        return x.numpy()

    with tempfile.TemporaryDirectory() as tmp:
        exported = export_format("onnx", model, torch.from_numpy(inputs(pixels[:2])), Path(tmp))
        onnx = load_exported("onnx", exported.path)

        def dlib_run(batch: np.ndarray) -> np.ndarray:
            return np.array([np.array(d) for d in recogniser.compute_face_descriptor(list(batch))])

        def zoo_run(batch: np.ndarray) -> np.ndarray:
            return onnx(inputs(batch))["embedding"]

        theirs = dlib_run(pixels[:4])
        theirs /= np.linalg.norm(theirs, axis=1, keepdims=True)
        assert np.abs(zoo_run(pixels[:4]) - theirs).max() < 1e-4, "the descriptors disagree"
        print(f"dlib {dlib.__version__} compute_face_descriptor vs the zoo's dlib_resnet in ONNX "
              f"Runtime, {CHIP_SIZE} px chips, {torch.get_num_threads()} threads")
        print("| batch | dlib images/s | zoo (ONNX Runtime) images/s | zoo / dlib |")
        print("|---:|---:|---:|---:|")
        for size in batches:
            batch = pixels[:size]
            ours, theirs_rate = rate(zoo_run, batch, args.seconds), rate(dlib_run, batch,
                                                                         args.seconds)
            print(f"| {size} | {theirs_rate:.1f} | {ours:.1f} | {ours / theirs_rate:.2f}x |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
