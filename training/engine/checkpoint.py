"""Per-epoch checkpoints: written atomically, logged to the run, read back to resume it.

Every epoch the loop's whole state (model and loss weights, EMA, optimiser, schedule, AMP
scaler, history, best epoch and every random generator) is saved to a local file under a
temporary name and renamed into place, so a process killed mid-write leaves the previous
file whole. The file is then logged to the run's artifacts under ``checkpoints/``, in one of
two slots taken in turn (``epoch-odd.pt``, ``epoch-even.pt``): a kill while one slot is being
copied leaves the other, one epoch older, readable. Resuming reads every slot and continues
from the newest one that loads. A finished run's checkpoints are deleted (they are several
times the model's size); a failed or killed run keeps them.

The saved state is plain data only (tensors, Python numbers, strings, lists, tuples and dicts;
the numpy random states are turned into lists), so a checkpoint is read with
``torch.load(weights_only=True)`` and loading one unpickles no code: a file from the artifact
store that holds any other object (an older format, a foreign or tampered file) is refused
with a ``CheckpointError`` naming it, before anything in it runs.
"""
from __future__ import annotations

import logging
import os
import pickle
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch

from zoo import names

log = logging.getLogger(__name__)

SLOTS = ("epoch-odd.pt", "epoch-even.pt")
FORMAT = 2  # bumped when the state's layout changes (2: plain data, loaded weights-only)
#: The model's record (``zoo.record``, as a dict) in the state: resume rebuilds the run's
#: config from its training recipe. Checkpoints written before it had none.
RECORD_KEY = "record"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable or of another run's shape; names the file."""


def slot_name(epoch: int) -> str:
    """The slot the checkpoint of ``epoch`` is written to."""
    return SLOTS[epoch % 2 == 0]


def save_atomic(state: dict[str, Any], path: Path, durable: bool = True) -> Path:
    """``torch.save`` to ``<path>.tmp``, flushed to disk (``durable``), then renamed over
    ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".tmp")
    with open(partial, "wb") as handle:
        torch.save(state, handle)
        handle.flush()
        if durable:
            os.fsync(handle.fileno())
    os.replace(partial, path)
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    """The state saved in ``path``, read weights-only (no code in the file runs); a missing,
    truncated, foreign or older-format file is a ``CheckpointError`` that names it."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = re.search(r"GLOBAL (\S+)", str(exc))
        if refused:  # an object only code could rebuild: never unpickled here
            raise CheckpointError(
                f"checkpoint {path} is not a model-zoo training checkpoint (format {FORMAT}): "
                f"it holds a Python object ({refused.group(1)}) that loading refuses to "
                "unpickle (an older checkpoint format, or a foreign or tampered file)") from None
        raise CheckpointError(f"checkpoint {path} is unreadable (truncated or not a "
                              f"checkpoint): {_unpickling_reason(exc)}") from None
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds for a bad file
        raise CheckpointError(f"checkpoint {path} is unreadable (truncated or not a "
                              f"checkpoint): {type(exc).__name__}: {exc}".splitlines()[0]) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT or "epoch" not in state:
        raise CheckpointError(f"checkpoint {path} is not a model-zoo training checkpoint "
                              f"(format {FORMAT})")
    return state


def _unpickling_reason(exc: pickle.UnpicklingError) -> str:
    """The unpickler's own complaint, without torch's advice to load with weights_only=False."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()
             and not line.startswith(("Weights only load failed", "Check the documentation"))]
    reason = lines[-1].split("WeightsUnpickler error:")[-1].strip() if lines else ""
    return f"UnpicklingError: {reason}" if reason else "UnpicklingError"


class RunCheckpoints:
    """The checkpoints of one MLflow run: written by the loop, read to resume."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.folder = Path(tempfile.mkdtemp(prefix=f"zoo-checkpoint-{run_id[:8]}-"))

    def save(self, state: dict[str, Any]) -> None:
        """Write the epoch's state atomically, then log it to the run."""
        # the local file is a staging copy (resume reads the logged one, and the two slots
        # cover a copy cut short): syncing it cost 1.2 s of every epoch (resnet18) for nothing
        path = save_atomic(state, self.folder / slot_name(int(state["epoch"])), durable=False)
        mlflow.MlflowClient().log_artifact(self.run_id, str(path), names.CHECKPOINT_DIR)
        log.debug("checkpoint of epoch %d logged to run %s", state["epoch"], self.run_id)

    def latest(self) -> dict[str, Any]:
        """The newest readable checkpoint logged to the run."""
        client = mlflow.MlflowClient()
        logged = {Path(a.path).name
                  for a in client.list_artifacts(self.run_id, names.CHECKPOINT_DIR)}
        found = [name for name in SLOTS if name in logged]
        if not found:
            raise CheckpointError(f"run {self.run_id} has no checkpoint under "
                                  f"{names.CHECKPOINT_DIR}/ (it was trained with checkpoint=false, "
                                  "finished, or stopped before its first epoch ended)")
        states, errors = [], []
        for name in found:
            try:
                local = client.download_artifacts(self.run_id, f"{names.CHECKPOINT_DIR}/{name}",
                                                  str(self.folder))
                states.append(load_checkpoint(Path(local)))
            except CheckpointError as exc:
                errors.append(str(exc))
        if not states:
            raise CheckpointError("; ".join(errors))
        for error in errors:
            log.warning("%s; resuming from the other slot", error)
        return max(states, key=lambda s: int(s["epoch"]))

    def delete(self) -> None:
        """Drop the run's logged checkpoints (where the artifact store can delete)."""
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        run = mlflow.MlflowClient().get_run(self.run_id)
        try:
            get_artifact_repository(run.info.artifact_uri).delete_artifacts(names.CHECKPOINT_DIR)
        except Exception as exc:  # noqa: BLE001 - some stores cannot delete; keep going
            log.info("checkpoints of run %s kept: the artifact store cannot delete (%s)",
                     self.run_id, exc)

    def close(self) -> None:
        """Remove the local copies (the logged ones are what a resume reads)."""
        shutil.rmtree(self.folder, ignore_errors=True)


def _plain(value: Any) -> Any:
    """``value`` with numpy arrays as lists and numpy scalars as Python numbers, so that a
    weights-only load reads it back with no allow-listing."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(item) for item in value)
    return value


def rng_state(generator: np.random.Generator) -> dict[str, Any]:
    """Every random stream the loop draws from (augmentation and dropout use torch's), as
    plain data: tensors, and the numpy states with their arrays as lists of ints."""
    state = {"torch": torch.get_rng_state(), "numpy": _plain(np.random.get_state()),
             "python": random.getstate(), "loop": _plain(generator.bit_generator.state)}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any], generator: np.random.Generator) -> None:
    """Put every random stream back where ``rng_state`` found it."""
    torch.set_rng_state(state["torch"])
    name, key, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(key, dtype=np.uint32), *rest))
    random.setstate(state["python"])
    generator.bit_generator.state = state["loop"]  # the setter takes lists for arrays
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
