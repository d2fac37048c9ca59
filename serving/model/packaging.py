"""Where the served bundle comes from: the MLflow store, or the BentoML model a Bento holds.

Three situations, one service module:

- ``bentoml serve serving.service:ZooService``: the bundle is fetched from MLflow
  (``ZOO_MODEL_URI``) into a cache; BentoML's model store is not involved.
- ``bentoml build -f serving/bentofile.yaml``: the bentofile sets the argument ``pack=true``;
  the bundle is fetched as above, imported into BentoML's model store as
  ``<registered name>:v<version>-<run>``, and declared as the service's ``BentoModel``, which
  is how BentoML knows to put it into the Bento.
- Serving a built Bento: the code runs from ``<bento>/src`` next to ``bento.yaml``; the
  bundle is the BentoML model the Bento lists, and no MLflow store is needed.
"""
from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

import bentoml
import yaml

from serving.settings import ServeSettings
from zoo.export.bundle import BENTO_LABEL, Bundle
from zoo.values import parse_bool

log = logging.getLogger(__name__)

PACK_ARGUMENT = "pack"
MODEL_URI_ARGUMENT = "model_uri"


def bento_root(start: Path | None = None) -> Path | None:
    """The Bento folder this code runs from (``<bento>/src/serving/...``), if any."""
    here = (start or Path(__file__)).resolve()
    for parent in here.parents:
        if (parent / "bento.yaml").is_file() and (parent / "src").is_dir():
            return parent
    return None


def packed_tag(root: Path) -> str:
    """The tag of the zoo bundle among the models ``root/bento.yaml`` lists."""
    info = yaml.safe_load((root / "bento.yaml").read_text()) or {}
    listed = list(info.get("models") or [])
    for service in info.get("services") or []:
        listed += service.get("models") or []
    tags = [str(m["tag"]) for m in listed if isinstance(m, dict) and m.get("tag")]
    if not tags:
        raise LookupError(f"{root / 'bento.yaml'} lists no model: rebuild the Bento with "
                          "`bentoml build -f serving/bentofile.yaml`")
    return tags[0]


def bento_tag(bundle: Bundle) -> str:
    """``<name>:v<version>-<run>`` in BentoML's tag alphabet (lowercase, no ``@``)."""
    info = bundle.info
    name = re.sub(r"[^a-z0-9_.-]+", "-", info.name.lower()).strip("-.") or "zoo-model"
    version = f"v{info.version}-{info.run_id[:12]}" if info.version else f"run-{info.run_id[:20]}"
    return f"{name[:63]}:{re.sub(r'[^a-z0-9_.-]+', '-', version.lower())}"


def pack(bundle: Bundle) -> str:
    """Import ``bundle`` into BentoML's model store (once per version); returns its tag."""
    tag = bento_tag(bundle)
    try:
        bentoml.models.get(tag)
        return tag
    except bentoml.exceptions.NotFound:
        pass
    info = bundle.info
    with bentoml.models.create(tag, labels={BENTO_LABEL: "true", "mlflow_uri": info.uri},
                               metadata={"mlflow_run_id": info.run_id,
                                         "mlflow_version": info.version or ""}) as model:
        for item in bundle.path.iterdir():
            target = Path(model.path) / item.name
            if item.is_dir():
                shutil.copytree(item, target)
            else:
                shutil.copy2(item, target)
    log.info("packed %s as BentoML model %s", info.uri, tag)
    return tag


def _arguments() -> dict[str, str]:
    try:
        return {k: str(v) for k, v in vars(bentoml.use_arguments()).items()}
    except Exception:  # noqa: BLE001 - no arguments outside bentoml build/serve
        return {}


def bento_model(settings: ServeSettings) -> bentoml.models.BentoModel | None:
    """The BentoModel to declare on the service, or None when serving from MLflow."""
    root = bento_root()
    if root is not None:
        return bentoml.models.BentoModel(packed_tag(root))
    args = _arguments()
    if not parse_bool(args.get(PACK_ARGUMENT) or "false", PACK_ARGUMENT):
        return None
    from mlflow_source.fetch import fetch_bundle  # `bentoml build` only: it reads MLflow

    uri = args.get(MODEL_URI_ARGUMENT) or settings.model_uri
    return bentoml.models.BentoModel(pack(fetch_bundle(uri, settings.cache_path())))
