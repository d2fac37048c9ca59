"""Training from a folder too big to preload: the model's step rate with the lazy input
pipeline beside the same steps on preloaded images, and what the pipeline delivers alone.

    python bench/input_pipeline.py [--images 20000] [--classes 300] [--size 112]
                                   [--steps 30] [--workers 1,2] [--folder PATH]

A folder of ``--images`` JPEGs of 256-400 px (smooth shading, a colour and a stripe per class,
a little grain) is made once under ``--folder`` (default ``$TMPDIR/zoo-bench-photos-<images>``)
and reused. Then, in one run, measured in turns over ``--rounds`` so that a slow moment of the
machine touches every case, the best round counting:

- **preloaded**: the folder decoded once into 8-bit pixels at ``--size``; resnet18 + ArcFace
  takes ``--steps`` AdamW steps of batch ``--batch`` (after ``--warmup``), batches indexed in
  the training process as the loop does;
- **lazy, W workers**: the same steps, each batch decoded from the files by ``W`` DataLoader
  worker processes ahead of the step (``training.engine.input_pipeline``), and the time the
  step waited for its input (``data_wait_s``);
- **pipeline alone**: the images/s the lazy pipeline delivers with no model, per worker, so
  a GPU user can size ``loader_workers`` (a step that needs more images/s than the workers
  deliver waits for them).

Target: lazy / preloaded >= 0.9 for resnet18 at 112 px on this 2-core machine.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.engine.input_pipeline import EpochInput
from zoo.data import LazyImages, load_data
from zoo.losses import create_loss
from zoo.models import create_model


def make_folder(root: Path, images: int, classes: int) -> Path:
    """``images`` JPEGs of 256-400 px in ``classes`` folders (made once, then reused)."""
    done = root / ".complete"
    if done.exists():
        return root

    def one(i: int) -> None:
        rng = np.random.default_rng(i)
        c = i % classes
        h, w = (int(v) for v in rng.integers(256, 401, size=2))
        base = np.random.default_rng(c).integers(40, 216, size=3)
        # smooth shapes and shading with a little grain, as in a photo (white noise would make
        # every file as costly to decode as the worst photo)
        coarse = rng.normal(0, 40, size=(h // 16 + 1, w // 16 + 1, 3)) + base
        smooth = np.asarray(Image.fromarray(np.clip(coarse, 0, 255).astype(np.uint8)).resize(
            (w, h), Image.Resampling.BICUBIC), dtype=np.float64)
        smooth[:, (c * 7) % w:(c * 7) % w + w // 8] += 50
        pixels = smooth + rng.normal(0, 4, size=(h, w, 3))
        folder = root / f"c{c:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
            folder / f"{i:06d}.jpg", quality=90)

    with ThreadPoolExecutor(os.cpu_count() or 2) as pool:
        list(pool.map(one, range(images)))
    done.touch()
    return root


def index_batches(n: int, batch: int, count: int, seed: int = 0) -> list[torch.Tensor]:
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return [order[(i * batch) % (n - batch):][:batch] for i in range(count)]


def step_rate(x, y: torch.Tensor, classes: int, size: int, batch: int, steps: int, warmup: int,
              workers: int) -> tuple[float, float]:
    """Images/s of resnet18 + ArcFace steps fed from ``x``, and the seconds spent waiting."""
    torch.manual_seed(0)
    model = create_model("resnet18", classes, 128, image_size=size)
    loss_fn = create_loss("arcface", classes, 128)
    model.train().set_head(None)
    opt = torch.optim.AdamW([*model.parameters(), *loss_fn.parameters()], lr=1e-3)
    epoch = EpochInput(x, index_batches(len(y), batch, warmup + steps), torch.device("cpu"),
                       workers)
    started, waited = time.perf_counter(), 0.0
    for i, (idx, xb) in enumerate(epoch):
        if i == warmup:
            started, waited = time.perf_counter(), epoch.wait_s
        loss = loss_fn(model(xb)["embedding"], y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return steps * batch / (time.perf_counter() - started), epoch.wait_s - waited


def pipeline_rate(x: LazyImages, n: int, batch: int, count: int, workers: int) -> float:
    """Images/s the lazy pipeline delivers with nothing else running."""
    epoch = EpochInput(x, index_batches(n, batch, count, seed=1), torch.device("cpu"), workers)
    started = time.perf_counter()
    for _ in epoch:
        pass
    return count * batch / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--classes", type=int, default=300)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--folder", type=Path, default=None)
    args = parser.parse_args()
    folder = args.folder or Path(tempfile.gettempdir()) / f"zoo-bench-photos-{args.images}"
    started = time.perf_counter()
    make_folder(folder, args.images, args.classes)
    print(f"folder: {folder} ({args.images} JPEGs, {args.classes} classes; "
          f"{time.perf_counter() - started:.0f} s to make or find)", file=sys.stderr)

    started = time.perf_counter()
    stored = load_data(str(folder), image_size=args.size)
    preload_s = time.perf_counter() - started
    lazy = load_data(str(folder), image_size=args.size, memory_budget=0)
    assert isinstance(lazy.x, LazyImages)
    workers = [int(w) for w in args.workers.split(",")]
    run = dict(classes=len(stored.class_names), size=args.size, batch=args.batch,
               steps=args.steps, warmup=args.warmup)

    cases = [("preloaded (uint8)", stored, 0)] + [
        (f"lazy, {w} worker{'s' * (w > 1)}", lazy, w) for w in workers]
    best: dict[str, tuple[float, float]] = {}
    for _ in range(args.rounds):
        for name, data, w in cases:
            rate, wait = step_rate(data.x, data.y, workers=w, **run)
            if rate > best.get(name, (0.0, 0.0))[0]:
                best[name] = (rate, wait)
    base = best[cases[0][0]][0]
    rows = [(name, *best[name], None if w == 0 else
             pipeline_rate(lazy.x, len(lazy.y), args.batch, 20, w)) for name, _, w in cases]

    print(f"| input (resnet18, {args.size} px, batch {args.batch}) | steps images/s | "
          f"× preloaded | waited for input s | pipeline alone images/s | per worker |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, rate, wait, alone in rows:
        per = "" if alone is None else f"{alone:.0f} | {alone / int(name.split()[1]):.0f}"
        print(f"| {name} | {rate:.1f} | {rate / base:.2f} | {wait:.2f} | "
              f"{per if per else ' | '} |")
    print(f"\npreloading {args.images} images took {preload_s:.0f} s; torch threads: "
          f"{torch.get_num_threads()}; cores: {os.cpu_count()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
