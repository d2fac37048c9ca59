"""Server settings: one dataclass, read from ``ZOO_*`` environment variables.

Environment variables are how BentoML services are configured (``bentoml serve`` passes no
arguments to a service), so every knob of the server is a field here with its variable name,
default and meaning in one place.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path

from training.model_source import DEFAULT_MODEL_URI

ENV_PREFIX = "ZOO_"


def _state_home() -> Path:
    """Where enrolled identities live by default (XDG state: data a user would miss)."""
    return Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "model-zoo"


def _cache_home() -> Path:
    """Where models fetched from MLflow are kept between starts (can be deleted any time)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "model-zoo"


@dataclass(frozen=True)
class ServeSettings:
    """Everything the server can be told; each field is ``ZOO_<FIELD>`` in the environment."""

    model_uri: str = DEFAULT_MODEL_URI  # registry URI of an exported model
    gallery_dir: str = ""  # enrolled identities; default <state>/galleries/<model>-v<version>
    cache_dir: str = ""  # models fetched from MLflow; default ~/.cache/model-zoo/bundles
    max_images: int = 256  # images (or rows) per request
    max_image_bytes: int = 10 * 2**20  # one uploaded image file
    max_image_pixels: int = 4096 * 4096  # one decoded image (decompression bombs)
    max_request_bytes: int = 64 * 2**20  # one request body
    max_batch_size: int = 64  # inputs per ONNX Runtime call across concurrent requests
    workers: int = 1  # server processes, each with its own model
    threads: int = 0  # ONNX Runtime intra-op threads per worker (0: cores / workers)
    spin: bool = False  # ONNX Runtime threads spin between calls (steals CPU from HTTP work)
    top_k: int = 5  # default of /classify and /identify
    device: str = "auto"  # auto (CUDA when there is a GPU), cpu, cuda or cuda:N

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "ServeSettings":
        """Read ``ZOO_*`` variables; a malformed one is an error that names it."""
        env = dict(os.environ if env is None else env)
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is None or raw.strip() == "":
                continue
            raw = raw.strip()
            kind = type(f.default)
            try:
                if kind is bool:
                    if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
                        raise ValueError(raw)
                    values[f.name] = raw.lower() in ("1", "true", "yes")
                else:
                    values[f.name] = kind(raw)
            except ValueError:
                raise ValueError(f"{ENV_PREFIX}{f.name.upper()}={raw!r} is not a valid "
                                 f"{kind.__name__}") from None
        settings = cls(**values)  # type: ignore[arg-type]
        settings.check()
        return settings

    def check(self) -> None:
        for name in ("max_images", "max_image_bytes", "max_image_pixels", "max_request_bytes",
                     "max_batch_size", "top_k", "workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{ENV_PREFIX}{name.upper()} must be at least 1, "
                                 f"got {getattr(self, name)}")
        if self.threads < 0:
            raise ValueError(f"{ENV_PREFIX}THREADS must be 0 (one per core) or more")

    def gallery_path(self, model_key: str) -> Path:
        return Path(self.gallery_dir) if self.gallery_dir else _state_home() / "galleries" / model_key

    def cache_path(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else _cache_home() / "bundles"
