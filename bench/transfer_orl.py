"""What transfer gives on faces: people 1-20 teach a model that then meets people 21-40.

    python bench/transfer_orl.py                 # split seeds 0,1,2 (about 15 min here)
    python bench/transfer_orl.py --seeds 0

First a model is trained with the faces-small preset on ORL people 1-20 (all of them: no
open set) and registered. Then, on people 21-40 split with ``open_set=0.5`` (10 people to
fine-tune on, 10 never seen by any run), three settings are compared on the same splits:

- (a) from scratch: the preset alone;
- (b) ``init=`` the first model: the preset, starting from its weights (and the fine-tuning
  defaults: one frozen epoch, the backbone at a tenth of the learning rate);
- (c) zero-shot: the first model, evaluated with ``-e evaluate`` on the 10 unseen people.

The table gives the open-set retrieval metrics on those 10 unseen people (100 images, each
against the other 99) as mean ± std over the split seeds. People are split through folders
of symbolic links in a temporary directory: nothing is copied. The runs go to the store
``MLFLOW_TRACKING_URI`` (default: a temporary one, removed afterwards).
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from orl_faces import ORL, cell  # noqa: E402  (bench/, beside this script)

METRICS = ("open_map_at_r", "open_precision_at_1")
NAME = "zoo-orl-first"


def people(root: Path, numbers: range, into: Path) -> Path:
    """A folder of links to ORL's ``s<n>`` people folders."""
    into.mkdir(parents=True)
    for n in numbers:
        (into / f"s{n}").symlink_to(root / f"s{n}", target_is_directory=True)
    return into


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args()
    if not ORL.is_dir():
        print(f"ORL faces not found at {ORL}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="zoo-transfer-") as tmp:
        folder = Path(tmp)
        os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{folder / 'mlflow.db'}")
        import mlflow

        from training.config import TrainConfig
        from training.pipeline.evaluate import EvaluateConfig, evaluate_models
        from training.pipeline.run import config_splits, load_config_data, train

        first = people(ORL, range(1, 21), folder / "people-1-20")
        second = people(ORL, range(21, 41), folder / "people-21-40")
        source = train(TrainConfig.of(preset="faces-small", data=str(first), open_set=0.0,
                                      experiment="transfer-first"))
        version = mlflow.register_model(source.model_uri, NAME)
        mlflow.MlflowClient().set_registered_model_alias(NAME, "champion", version.version)
        uri = f"models:/{NAME}@champion"
        print(f"first model: people 1-20, test P@1 {source.metrics['test_precision_at_1']:.3f}, "
              f"MAP@R {source.metrics['test_map_at_r']:.3f} ({uri})", flush=True)

        rows: dict[str, dict[str, list[float]]] = {
            r: {k: [] for k in METRICS} for r in ("scratch", "init", "zero-shot")}
        for seed in (int(s) for s in args.seeds.split(",")):
            common = dict(preset="faces-small", data=str(second), open_set=0.5, seed=seed,
                          experiment="transfer-second")
            for row, extra in (("scratch", {}), ("init", {"init": uri})):
                result = train(TrainConfig.of(**common, **extra))
                for key in METRICS:
                    rows[row][key].append(result.metrics[key])
            # (c) the same 10 unseen people, as a folder of their own
            cfg = TrainConfig.of(**common)
            unseen = config_splits(cfg, load_config_data(cfg)).open_class_names
            only = people(ORL, [int(re.sub(r"\D", "", p)) for p in unseen],
                          folder / f"unseen-seed{seed}")
            metrics = evaluate_models(EvaluateConfig(model_uri=uri, data=str(only), tta="flip"))
            for key in METRICS:
                rows["zero-shot"][key].append(metrics[key])
            print(f"seed {seed}: " + ", ".join(
                f"{r} {v['open_map_at_r'][-1]:.3f}" for r, v in rows.items()), flush=True)

    labels = {"scratch": "(a) from scratch (faces-small)",
              "init": "(b) init= the people 1-20 model, fine-tuned",
              "zero-shot": "(c) the people 1-20 model, zero-shot"}
    print("\n| setting | open MAP@R | open P@1 |\n|---|---:|---:|")
    for row, values in rows.items():
        print(f"| {labels[row]} | {cell(values['open_map_at_r'])} | "
              f"{cell(values['open_precision_at_1'])} |")
    print(f"\nORL people 21-40, open_set=0.5 (10 people unseen); split seeds {args.seeds}; "
          "mean ± std over them")
    return 0


if __name__ == "__main__":
    sys.exit(main())
