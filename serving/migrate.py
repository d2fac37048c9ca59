"""Carry the people enrolled with one version of a model to another, then judge it on them.

    python -m serving.migrate --to models:/zoo-faces@champion [--from-gallery KEY]
        [--batch-size 64] [--force] [--ray-address auto|ray://head:10001|local]

Every entry an enrollment kept (a face's canonical chip, a bounded image, a row; sealed in
the gallery's database) is embedded by the ``--to`` version into its own gallery, in batches
of its batch size, with a progress bar. Run it again after an interruption (even kill -9):
it continues where the gallery stands. Then the gate (``serving/gallery/gate.py``): both
versions identify the enrolled people leave-one-out, and the new version passes when it is
at least as good. The verdict and figures are printed, logged, and tagged on the version
(``zoo.gate.*``). The exit code is 0 when it passes (or ``--force``), 3 when it does not, 1
on an error. A server of the ``--to`` version then starts with everyone in its gallery.

With ``--ray-address`` the entries are carried by Ray tasks, in parts of about equal size
(``serving/gallery/carry_ray.py``: what each node needs); the gate runs here afterwards.
"""
from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace
from typing import Callable

from tqdm import tqdm

from serving.gallery.carry import Carried, carry
from serving.gallery.gate import MAX_QUERIES
from serving.lifecycle import state as shared
from serving.lifecycle.migration import carry_and_gate
from serving.lifecycle.priority import run_nicer
from serving.model.served import ServedModel
from serving.settings import ServeSettings
from zoo.cli import StrictParser

GATE_FAILED = 3
#: what the command says when the gate begins (bench/gallery_migration.py times from it)
GATING_LINE = (f"gating: both versions identify the enrolled people, each entry against the "
               f"others (at most {MAX_QUERIES:,} of them)")


def migrate(model_uri: str, batch_size: int | None = None, source_key: str | None = None,
            force: bool = False, ray_address: str | None = None) -> int:
    """The command's work; returns its exit code. ``ray_address``: carry on that Ray cluster
    instead of in this process."""
    from mlflow_source.fetch import fetch_bundle

    settings = ServeSettings.from_env()
    settings = replace(settings, model_uri=model_uri,
                       max_batch_size=batch_size or settings.max_batch_size)
    model = ServedModel(fetch_bundle(model_uri, settings.cache_path()), settings)
    try:
        # one migration of a gallery at a time: a server following its alias takes this lock
        with shared.migrating(settings.gallery_path(model.info.name)), \
                tqdm(desc="carrying", unit="entry") as bar:
            def progress(done: int, total: int) -> None:
                bar.total = total
                bar.update(done - bar.n)

            carrier: Callable[..., Carried] = carry
            if ray_address:
                from serving.gallery.carry_ray import carry_on_ray

                def carrier(model: ServedModel, progress: Callable[[int, int], None]) -> Carried:
                    return carry_on_ray(model_uri, settings, ray_address, progress=progress,
                                        model=model)
            def stage(name: str) -> None:
                bar.set_description(name)
                if name == "gating":  # seconds with the bar still: say what runs
                    tqdm.write(GATING_LINE, file=sys.stderr)

            outcome = run_nicer(settings.migration_nice, carry_and_gate, model, source_key,
                                progress, carrier, stage)
        carried, verdict = outcome.carried, outcome.verdict
        print(f"{model.gallery.where}: {carried.added} kept entries embedded now, "
              f"{carried.done} of {carried.kept} done, in {carried.seconds:.1f} s")
        for identity, reason in carried.uncarried:
            print(f"  not carried: {identity!r}: {reason}")
        if carried.nothing_kept:
            print(f"  not carried, nothing kept (enrolled before keeping, or with "
                  f"ZOO_KEEP_ENROLLED=false): {', '.join(map(repr, carried.nothing_kept))}")
        print(f"gate against {outcome.source or 'no earlier gallery'}: "
              f"{'passed' if verdict.passed else 'FAILED'}: {verdict.reason}")
        if outcome.tagged:
            print(f"tagged {outcome.tagged} with zoo.gate.*")
    finally:
        model.close()
    if not verdict.passed and not force:
        print("the new version stays unserved: keep the current one, or pass --force",
              file=sys.stderr)
        return GATE_FAILED
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = StrictParser(prog="python -m serving.migrate", description=__doc__,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--to", required=True, dest="model_uri",
                        help="the version to carry the people to (models:/<name>@<alias>, ...)")
    parser.add_argument("--from-gallery", dest="source_key", default=None,
                        help="the gallery (key) the gate compares with (default: the newest "
                             "other gallery of the model holding kept entries)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="entries per model call (default: ZOO_MAX_BATCH_SIZE)")
    parser.add_argument("--force", action="store_true",
                        help="exit 0 even when the gate finds the new version worse")
    parser.add_argument("--ray-address", default=None, metavar="ADDRESS",
                        help="carry with Ray tasks on this cluster, one per CPU: auto (the "
                             "one running here or at RAY_ADDRESS), ray://head:10001, "
                             "head:6379, or local (start one on this machine); every node "
                             "needs the MLflow store and the gallery database (default: carry "
                             "in this process)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        return migrate(args.model_uri, args.batch_size, args.source_key, args.force,
                       args.ray_address)
    except (LookupError, FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
