"""Carry the people enrolled with one version of a model to another, then judge it on them.

    python -m serving.migrate --to models:/zoo-faces@champion [--from-gallery KEY]
        [--batch-size 64] [--force]

Every entry an enrollment kept (a face's canonical chip, a bounded image, a row; sealed in
the gallery's database) is embedded by the ``--to`` version into its own gallery, in batches
of its batch size, with a progress bar. Run it again after an interruption (even kill -9):
it continues where the gallery stands. Then the gate (``serving/gallery/gate.py``): both
versions identify the enrolled people leave-one-out, and the new version passes when it is
at least as good. The verdict and figures are printed, logged, and tagged on the version
(``zoo.gate.*``). The exit code is 0 when it passes (or ``--force``), 3 when it does not, 1
on an error. A server of the ``--to`` version then starts with everyone in its gallery.
"""
from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace

from tqdm import tqdm

from serving.lifecycle.migration import carry_and_gate
from serving.model.served import ServedModel
from serving.settings import ServeSettings
from zoo.cli import StrictParser


GATE_FAILED = 3


def migrate(model_uri: str, batch_size: int | None = None, source_key: str | None = None,
            force: bool = False) -> int:
    """The command's work; returns its exit code."""
    from mlflow_source.fetch import fetch_bundle

    settings = ServeSettings.from_env()
    settings = replace(settings, model_uri=model_uri,
                       max_batch_size=batch_size or settings.max_batch_size)
    model = ServedModel(fetch_bundle(model_uri, settings.cache_path()), settings)
    try:
        with tqdm(desc="carry", unit="entry") as bar:
            def progress(done: int, total: int) -> None:
                bar.total = total
                bar.update(done - bar.n)

            outcome = carry_and_gate(model, source_key, progress)
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
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        return migrate(args.model_uri, args.batch_size, args.source_key, args.force)
    except (LookupError, FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
