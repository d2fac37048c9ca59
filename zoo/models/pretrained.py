"""Pretrained backbone weights: timm's checkpoints from the Hugging Face hub cache, or a file.

``resolve_weights(timm_name, spec)`` finds the weights (``spec="true"``: the hub repository
timm's ``pretrained_cfg`` names for the model and tag, fetched by ``huggingface_hub`` into its
cache, ``HF_HUB_OFFLINE`` honoured; else a local safetensors / ``.pth`` / ``.bin`` file or a
timm training checkpoint with ``state_dict`` / ``model`` keys), reads them the way timm reads
them and compares them with the model's tensors. The model is then built by timm itself with
``pretrained=True`` and the checked state dict (``pretrained_cfg_overlay=dict(state_dict=...)``),
so timm adapts a 1-channel first convolution and drops the classifier as it always does
(``pretrained_cfg_overlay=dict(file=...)`` would read the file again, unchecked).

A file that fits less than half of the model's tensors is refused, naming the model it
looks made for; what did not fit is reported (``LoadReport``), never silently dropped.
"""
from __future__ import annotations

import hashlib
import logging
import socket
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

import torch

from zoo.data.preprocessing import DEFAULT_INTERPOLATION
from zoo.record import Lineage

log = logging.getLogger(__name__)

#: The share of the model's tensors a file must fill for it to count as the model's weights.
MIN_MATCH = 0.5
HUB_FILES = ("model.safetensors", "pytorch_model.bin")  # timm's order on the hub
#: timm's defaults (``IMAGENET_DEFAULT_MEAN``/``STD``), for weights whose config states none
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Seconds the hub may take to accept a connection before it counts as unreachable.
HUB_PROBE_S = 3.0


class PretrainedError(ValueError):
    """Weights that cannot be had or do not fit; the message says what to do."""


@dataclass
class LoadReport:
    """How a checkpoint's tensors met the model's (logged as an artifact)."""

    matched: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # the model's, not in the file
    unexpected: list[str] = field(default_factory=list)  # the file's, not in the model
    mismatched: dict[str, list[list[int]]] = field(default_factory=dict)  # file vs model shape
    classifier: list[str] = field(default_factory=list)  # dropped: the zoo has its own head
    adapted: list[str] = field(default_factory=list)  # first conv, to the run's channels

    @property
    def filled(self) -> int:
        """The model's tensors the file fills."""
        return len(self.matched) + len(self.adapted)

    @property
    def total(self) -> int:
        """The model's tensors."""
        return self.filled + len(self.missing) + len(self.mismatched)

    @property
    def fraction(self) -> float:
        """Share of the model's tensors the file fills."""
        return self.filled / max(1, self.total)

    def to_dict(self) -> dict[str, Any]:
        return {"filled": self.filled, "model_tensors": self.total,
                "fraction": round(self.fraction, 4), "missing": self.missing,
                "unexpected": self.unexpected, "mismatched": self.mismatched,
                "classifier_dropped": self.classifier, "input_conv_adapted": self.adapted}


@dataclass(frozen=True)
class WeightsPreprocessing:
    """How the weights' own training fed them images: the part of timm's ``PretrainedCfg``
    that a run started from them inherits, typed as timm types its config so that readers
    use attributes, not keys."""

    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = DEFAULT_INTERPOLATION

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean and std differ in length: {self.mean} and {self.std}")

    @classmethod
    def from_pretrained_cfg(cls, cfg: Mapping[str, Any]) -> "WeightsPreprocessing":
        """timm's ``pretrained_cfg`` as ``PretrainedCfg.to_dict`` gives it; what it leaves
        unset keeps the default."""
        return cls(mean=cfg.get("mean") or IMAGENET_MEAN, std=cfg.get("std") or IMAGENET_STD,
                   interpolation=cfg.get("interpolation") or DEFAULT_INTERPOLATION)

    def for_channels(self, channels: int) -> "WeightsPreprocessing":
        """Grey input gets the mean of the colour channels, as timm adapts the first conv."""
        if channels == 1 and len(self.mean) == 3:
            return replace(self, mean=(sum(self.mean) / 3,), std=(sum(self.std) / 3,))
        return self


@dataclass
class PretrainedWeights:
    """Checked weights for one architecture (a timm one, or a zoo family that reads its own
    files), where they came from, the preprocessing they were trained with and the licence
    their source states, where it states one."""

    architecture: str
    source: str  # hf-hub:<repo> or file:<absolute path>
    path: Path
    sha256: str
    state_dict: dict[str, torch.Tensor]
    preprocessing: WeightsPreprocessing
    report: LoadReport
    licence: str | None = None

    def lineage(self) -> Lineage:
        """Where a model built from these weights started, for its record."""
        return Lineage(pretrained=self.source, pretrained_sha256=self.sha256,
                       licence=self.licence)

    def timm_kwargs(self) -> dict[str, Any]:
        """What ``timm.create_model`` takes to build the model from these weights (timm
        loads them without the classifier, which the zoo's headless model lacks, and so
        not strictly: what the file lacks keeps its initialisation, as the report says)."""
        return {"pretrained": True,
                "pretrained_cfg_overlay": {"state_dict": dict(self.state_dict)}}

    def preprocessing_for(self, channels: int) -> WeightsPreprocessing:
        """The weights' preprocessing for a run of ``channels`` input channels."""
        return self.preprocessing.for_channels(channels)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def pretrained_cfg_of(timm_name: str) -> dict[str, Any]:
    """timm's ``pretrained_cfg`` of ``name[.tag]``; an unknown tag names the known ones."""
    import timm  # lazily, like zoo.models.image
    from timm.models import get_pretrained_cfg

    try:
        cfg = get_pretrained_cfg(timm_name)
    except RuntimeError:
        arch = timm_name.split(".", 1)[0]
        tags = [n.split(".", 1)[1] for n in timm.list_pretrained(f"{arch}.*")]
        raise PretrainedError(f"timm has no pretrained tag {timm_name.split('.', 1)[1]!r} for "
                              f"{arch}; its tags: {', '.join(tags) or 'none'}") from None
    return cfg.to_dict() if cfg is not None else {}


def hub_address() -> tuple[str, int]:
    """Where a connection to the hub goes: the HTTPS proxy of the environment (unless
    ``no_proxy`` names the hub), else the hub's own host (``HF_ENDPOINT``)."""
    import urllib.request
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    endpoint = urlsplit(constants.ENDPOINT)
    proxy = urllib.request.getproxies().get(endpoint.scheme)
    target = endpoint
    if proxy and not urllib.request.proxy_bypass(endpoint.hostname or ""):
        target = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    return target.hostname or "", target.port or (443 if target.scheme == "https" else 80)


def hub_reachable(timeout: float = HUB_PROBE_S) -> bool:
    """Whether the hub (or the proxy in between) accepts a connection within ``timeout``
    seconds, the name lookup included. Asked once before a download, because
    ``huggingface_hub`` retries an unreachable hub with back-off for 23 s per file (62 s for
    timm's two file names) before it gives up."""
    host, port = hub_address()
    answer: list[bool] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            answer.append(True)
        except OSError:
            answer.append(False)

    probe = threading.Thread(target=connect, daemon=True)  # a name lookup ignores timeouts
    probe.start()
    probe.join(timeout)
    return bool(answer and answer[0])


def hub_file(timm_name: str, cfg: dict[str, Any]) -> tuple[str, Path]:
    """The weights file of ``timm_name`` in the Hugging Face hub cache, downloaded when the
    hub can be reached; offline with nothing cached, a ``PretrainedError`` with both ways out,
    within ``HUB_PROBE_S`` seconds."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    repo = cfg.get("hf_hub_id")
    if not repo:
        raise PretrainedError(f"timm has no Hugging Face hub weights for {timm_name}; pass "
                              "pretrained=<file> with a checkpoint of it")
    repo, _, revision = repo.partition("@")
    names = (cfg["hf_hub_filename"],) if cfg.get("hf_hub_filename") else HUB_FILES
    cache = Path(constants.HF_HUB_CACHE)
    online = not constants.HF_HUB_OFFLINE and hub_reachable()
    for i, name in enumerate(names):
        try:
            return f"hf-hub:{repo}", Path(hf_hub_download(repo, name, revision=revision or None,
                                                          local_files_only=not online))
        except LocalEntryNotFoundError:
            # raised offline or unreachable, and nothing cached: try timm's next file name
            if i + 1 < len(names):
                continue
            host, port = hub_address()
            offline = ("HF_HUB_OFFLINE=1 is set" if constants.HF_HUB_OFFLINE
                       else f"the hub ({host}:{port}) cannot be reached")
            raise PretrainedError(
                f"no cached weights for timm/{timm_name} (hub repository {repo}) in {cache}, "
                f"and {offline}: run once online to fill the cache (HF_HUB_OFFLINE unset), or "
                "pass pretrained=<file> with a checkpoint of the model") from None
        except EntryNotFoundError:
            continue
    raise PretrainedError(f"hub repository {repo} has none of {', '.join(names)}")


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from safetensors, a ``.pth``/``.bin`` state dict or a timm training
    checkpoint (``state_dict``/``model`` keys), as timm reads it (``weights_only``)."""
    from timm.models import load_state_dict

    if not path.is_file():
        raise PretrainedError(f"pretrained={path}: no such file")
    try:
        state = load_state_dict(str(path), weights_only=True)
    except Exception as exc:  # noqa: BLE001 - safetensors, zip and pickle all raise their own
        raise PretrainedError(f"pretrained={path} is not a checkpoint timm can read "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
                              ) from None
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise PretrainedError(f"pretrained={path} holds no tensors")
    return tensors


def reference_tensors(timm_name: str, in_chans: int = 3, image_size: int | None = None,
                      **kwargs: Any) -> dict[str, torch.Size]:
    """Name → shape of every tensor of the full timm model (built on the meta device: no
    memory, no time), the head left out as the zoo builds it; transformers at
    ``image_size`` (their position embeddings depend on it)."""
    import timm

    kwargs = {"num_classes": 0, "in_chans": in_chans, **kwargs}
    with torch.device("meta"):
        try:
            model = timm.create_model(timm_name, pretrained=False,
                                      **({"img_size": image_size} if image_size else {}), **kwargs)
        except TypeError:  # CNNs take no img_size
            model = timm.create_model(timm_name, pretrained=False, **kwargs)
    return {k: v.shape for k, v in model.state_dict().items()}


def compare(state: dict[str, torch.Tensor], reference: dict[str, torch.Size],
            cfg: dict[str, Any]) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """The file's tensors that fit the model, and a report of the rest. The classifier is
    dropped; a first convolution that differs only in its input channels is kept for timm
    to adapt."""
    report = LoadReport()
    classifiers = cfg.get("classifier") or ()
    classifiers = (classifiers,) if isinstance(classifiers, str) else tuple(classifiers)
    first = cfg.get("first_conv") or ()
    first = {f"{c}.weight" for c in ((first,) if isinstance(first, str) else first)}
    kept: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if any(key.startswith(f"{c}.") for c in classifiers) and key not in reference:
            report.classifier.append(key)
        elif key not in reference:
            report.unexpected.append(key)
        elif tensor.shape == reference[key]:
            report.matched.append(key)
            kept[key] = tensor
        elif key in first and tensor.dim() == 4 and tensor.shape[0] == reference[key][0] \
                and tensor.shape[2:] == reference[key][2:]:
            report.adapted.append(key)
            kept[key] = tensor
        else:
            report.mismatched[key] = [list(tensor.shape), list(reference[key])]
    report.missing = [k for k in reference if k not in state]
    return kept, report


def closest_architecture(state: dict[str, torch.Tensor], candidates: list[str]) -> str | None:
    """Of ``candidates``, the timm architecture whose tensors the file fills best (if any
    fills at least half)."""
    best, best_fraction = None, MIN_MATCH
    for name in candidates:
        try:
            reference = reference_tensors(name)
        except Exception:  # noqa: BLE001 - a candidate that does not build is no candidate
            continue
        _, report = compare(state, reference, pretrained_cfg_of(name))
        if report.fraction >= best_fraction:
            best, best_fraction = name, report.fraction
    return best


def resolve_weights(timm_name: str, spec: str, in_chans: int = 3, image_size: int | None = None,
                    candidates: tuple[str, ...] = (), **timm_kwargs: Any) -> PretrainedWeights:
    """Find, read and check the weights ``spec`` names for ``timm_name`` (``true``: timm's
    own from the hub cache; else a file). ``candidates``: architectures to name when the
    file fits less than half of this one."""
    cfg = pretrained_cfg_of(timm_name)
    if spec.strip().lower() == "true":
        source, path = hub_file(timm_name, cfg)
    else:
        path = Path(spec).expanduser().resolve()
        source = f"file:{path}"
    state = read_checkpoint(path)
    kept, report = compare(state, reference_tensors(timm_name, in_chans, image_size,
                                                      **timm_kwargs), cfg)
    if report.fraction < MIN_MATCH:
        others = [c for c in candidates if c.split(".")[0] != timm_name.split(".")[0]]
        guess = closest_architecture(state, others)
        looks = (f"it looks made for {guess} (model={guess})" if guess else
                 "it fits none of the zoo's image models either")
        raise PretrainedError(
            f"pretrained={spec} fills {report.filled} of {report.total} tensors of {timm_name} "
            f"({report.fraction:.0%}, less than {MIN_MATCH:.0%}): {looks}")
    log.info("pretrained weights for %s from %s: %d of the model's tensors (%.0f%%)%s",
             timm_name, source, report.filled, 100 * report.fraction,
             f"; {len(report.missing)} missing, {len(report.unexpected)} unexpected, "
             f"{len(report.mismatched)} of another shape (see pretrained/load_report.json)"
             if report.missing or report.unexpected or report.mismatched else "")
    return PretrainedWeights(timm_name, source, path, sha256_of(path), kept,
                             WeightsPreprocessing.from_pretrained_cfg(cfg), report)
