"""The command-line parser every zoo command uses: no abbreviations, and an unknown name is
refused with the nearest known one.

argparse takes a unique prefix of an option by default, so ``-P epoch=5`` (which ``mlflow
run`` hands on as ``--epoch 5``) silently became ``--epochs``, and before ``init`` existed
``-P init=...`` became ``--init_seed``. Here both are errors that say what was meant.
"""
from __future__ import annotations

import argparse
import difflib
import sys
from typing import Any, Iterable, NoReturn, Sequence


def closest(name: str, known: Iterable[str]) -> str | None:
    """The known name ``name`` most likely misspells, if any is close enough."""
    found = difflib.get_close_matches(name, list(known), n=1, cutoff=0.7)
    return found[0] if found else None


def _prog() -> str | None:
    """``python -m <module>`` when run that way (argparse would say ``train.py``)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return f"python -m {spec.name}" if spec is not None and spec.name else None


class StrictParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` with ``allow_abbrev=False`` whose unknown options are an
    error naming the closest known one. ``noun``: what the options are to the user
    (``parameter`` for the MLflow entry points, whose ``-P`` names have no dashes)."""

    def __init__(self, *args: Any, noun: str = "option", **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("prog", _prog())
        super().__init__(*args, **kwargs)
        self.noun = noun

    def parse_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                   namespace: argparse.Namespace | None = None) -> argparse.Namespace:
        parsed, extra = self.parse_known_args(args, namespace)
        if extra:
            self.error(self.unknown(extra))
        return parsed

    def unknown(self, extra: list[str]) -> str:
        """``unknown parameter epoch; did you mean epochs?`` for each unknown option."""
        flags = [arg.split("=", 1)[0] for arg in extra if arg.startswith("-") and arg != "-"]
        if not flags:
            return f"unexpected argument {' '.join(extra)}"
        known = {s.lstrip("-"): s for action in self._actions for s in action.option_strings
                 if s.startswith("--")}
        parts = []
        for flag in flags:
            close = closest(flag.lstrip("-"), known)
            hint = f"; did you mean {self._shown(known[close])}?" if close else ""
            parts.append(f"unknown {self.noun} {self._shown(flag)}{hint}")
        return "; ".join(parts)

    def _shown(self, flag: str) -> str:
        return flag.lstrip("-") if self.noun == "parameter" else flag

    def error(self, message: str) -> NoReturn:
        """One line (argparse would print the usage of every option first), exit status 2."""
        self.exit(2, f"error: {message} ({self.prog} --help lists every {self.noun})\n")
