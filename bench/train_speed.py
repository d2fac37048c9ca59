"""Training throughput of image models side by side, as a ratio to resnet18.

    python bench/train_speed.py                          # 32 px, batch 32
    python bench/train_speed.py --models hybrid,resnet18 --size 64

Each model takes ``--steps`` AdamW steps of ArcFace on random images after ``--warmup`` steps;
models are measured in turns (``--rounds``) so that a slow moment of the machine touches all
of them, and the best round counts.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zoo.losses import create_loss
from zoo.models import create_model

MODELS = "resnet18,convnext_atto,mobilenetv3_small_100,hybrid,timm/vgg11_bn@faces-small"


def build(spec: str, size: int) -> tuple[torch.nn.Module, torch.nn.Module, int]:
    """A model, its loss and its input channels; ``name@faces-small`` is the preset's read-out."""
    name, _, variant = spec.partition("@")
    if variant == "faces-small":
        return (create_model(name, 10, 256, in_chans=1, image_size=size, stage=2, grid=2,
                             parts=True), create_loss("cosface", 10, 256, parts=4), 1)
    return create_model(name, 10, 128, image_size=size), create_loss("arcface", 10, 128), 3


def images_per_second(spec: str, size: int, batch: int, steps: int, warmup: int) -> float:
    torch.manual_seed(0)
    model, loss_fn, chans = build(spec, size)
    model.train().set_head(None)
    opt = torch.optim.AdamW([*model.parameters(), *loss_fn.parameters()], lr=1e-3)
    x, y = torch.randn(batch, chans, size, size), torch.arange(batch) % 10
    for i in range(warmup + steps):
        if i == warmup:
            started = time.perf_counter()
        loss = loss_fn(model(x)["embedding"], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return steps * batch / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=MODELS)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    specs = args.models.split(",")
    best = {spec: 0.0 for spec in specs}
    for _ in range(args.rounds):
        for spec in specs:
            best[spec] = max(best[spec], images_per_second(spec, args.size, args.batch,
                                                           args.steps, args.warmup))
    base = best.get("resnet18")
    print(f"| model | params | images/s ({args.size} px, batch {args.batch}) | × resnet18 |")
    print("|---|---:|---:|---:|")
    for spec in specs:
        params = sum(p.numel() for p in build(spec, args.size)[0].parameters())
        ratio = f"{best[spec] / base:.2f}" if base else "—"
        print(f"| {spec} | {params / 1e6:.1f} M | {best[spec]:.0f} | {ratio} |")
    print(f"\ntorch threads: {torch.get_num_threads()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
