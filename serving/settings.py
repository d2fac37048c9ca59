"""Server settings: one dataclass, read from ``ZOO_*`` environment variables.

Environment variables are how BentoML services are configured (``bentoml serve`` passes no
arguments to a service), so every knob of the server is a field here with its variable name,
default and meaning in one place.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, get_type_hints

from zoo.names import DEFAULT_MODEL_URI
from zoo.values import parse_value

if TYPE_CHECKING:
    from serving.http.keys import Keys


ENV_PREFIX = "ZOO_"


def _state_home() -> Path:
    """Where enrolled identities live by default (XDG state: data a user would miss)."""
    return Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "model-zoo"


def _file_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "model"


def _cache_home() -> Path:
    """Where models fetched from MLflow are kept between starts (can be deleted any time)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "model-zoo"


@dataclass(frozen=True)
class ServeSettings:
    """Everything the server can be told; each field is ``ZOO_<FIELD>`` in the environment."""

    model_uri: str = DEFAULT_MODEL_URI  # registry URI of an exported model
    # enrolled identities: the galleries of every version of a registered model, and what
    # enrollments keep for its next versions; default <state>/galleries/<registered name>
    gallery_dir: str = ""
    # where the gallery's table lives: empty for SQLite in gallery_dir, or postgresql://...
    # for one gallery shared by several servers (serving/gallery_db.py)
    gallery_uri: str = field(default="", repr=False)  # may hold a password
    gallery_index: str = "auto"  # auto, flat, ivf or hnsw (serving/gallery/index.py)
    # what an enrollment keeps for the model's next versions (a face's chip, a bounded image,
    # the row), sealed with AES-GCM (serving/gallery/kept.py); false: embeddings only
    keep_enrolled: bool = True
    # the key that seals it: 32 bytes in base64; empty: gallery.key beside the gallery, made
    # 0600 on first start (back it up)
    gallery_key: str = field(default="", repr=False)
    cache_dir: str = ""  # models fetched from MLflow; default ~/.cache/model-zoo/bundles
    # follow the alias ZOO_MODEL_URI names (serving/lifecycle/): a version it moves to is
    # loaded, the gallery carried to it and gated in the background, then served
    follow_alias: bool = False
    follow_every_s: float = 60.0  # how often the alias is read
    # a migration's threads run this much nicer than the requests (0-19), so that requests
    # come first under load (bench/gallery_migration.py: the p99 within 2x of steady)
    migration_nice: int = 10
    max_images: int = 256  # images (or rows) per request
    max_faces: int = 32  # faces answered per photo (a face model); requests may ask fewer
    # a face model's work per request, over all its photos: faces given landmarks and chips,
    # and the pixels the detector scans (its copies, upsampled; ~90 ns each on one core here)
    max_request_faces: int = 256
    max_detector_pixels: int = 64 * 2**20
    max_image_bytes: int = 10 * 2**20  # one uploaded image file
    max_image_pixels: int = 4096 * 4096  # one decoded image (decompression bombs)
    # all images of one request together, read from their headers before decoding; also what
    # one worker holds decoded at once, over all requests (serving.inputs.images.PixelBudget)
    max_request_pixels: int = 2 * 4096 * 4096
    image_formats: str = "PNG,JPEG,WEBP,BMP,TIFF,PPM"  # Pillow formats decoded (PPM: PGM too)
    max_request_bytes: int = 64 * 2**20  # one request body
    # slow clients (serving/http/connections.py): headers complete within this many seconds,
    # no pause in a body longer than this, headers this large at most, connections per worker
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    max_header_bytes: int = 64 * 1024
    max_connections: int = 1024
    max_batch_size: int = 64  # inputs per ONNX Runtime call across concurrent requests
    workers: int = 0  # server processes, each with its own model (0: auto, see .worker_count)
    threads: int = 0  # ONNX Runtime intra-op threads per worker (0: cores / workers)
    spin: bool = False  # ONNX Runtime threads spin between calls (steals CPU from HTTP work)
    # what runs the model: auto (the runtime the export timed as faster on the version),
    # onnxruntime or pytorch (serving/runtimes.py)
    runtime: str = "auto"
    access_log: bool = False  # one log line per request (BentoML's access log; costs ~25 %)
    trace: bool = False  # OpenTelemetry spans for the model endpoints (BentoML's tracing)
    top_k: int = 5  # default of /classify and /identify
    max_top_k: int = 20  # the most matches /identify lists per input (the admin key: any)
    device: str = "auto"  # auto (CUDA when there is a GPU), cpu, cuda or cuda:N
    host: str = "127.0.0.1"  # where `bentoml serve` listens (0.0.0.0: every interface)
    # keys (serving/auth.py): never printed, never in an answer
    api_key: str = field(default="", repr=False)  # model routes need Bearer <key> (empty: open)
    api_key_file: str = ""  # a file holding the API key (instead of ZOO_API_KEY)
    admin_key: str = field(default="", repr=False)  # /enroll and /identities need Bearer <key>
    admin_key_file: str = ""  # a file holding the admin key
    open_enroll: bool = False  # without an admin key, let anyone enroll and remove identities
    open_docs: bool = False  # the API's pages and schemas (/, /docs, ...) open without a key

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "ServeSettings":
        """Read ``ZOO_*`` variables; a malformed one is an error that names it."""
        env = dict(os.environ if env is None else env)
        values: dict[str, object] = {}
        hints = get_type_hints(cls)
        for f in fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is None or raw.strip() == "":
                continue
            values[f.name] = parse_value(hints[f.name], raw, ENV_PREFIX + f.name.upper())
        settings = cls(**values)  # type: ignore[arg-type]
        settings.check()
        return settings

    def check(self) -> None:
        for name in ("max_images", "max_faces", "max_request_faces", "max_detector_pixels",
                     "max_image_bytes", "max_image_pixels",
                     "max_request_pixels", "max_request_bytes", "max_batch_size", "top_k",
                     "max_top_k", "max_header_bytes", "max_connections"):
            if getattr(self, name) < 1:
                raise ValueError(f"{ENV_PREFIX}{name.upper()} must be at least 1, "
                                 f"got {getattr(self, name)}")
        from PIL import Image

        Image.init()
        unknown = [f for f in self.image_formats.upper().replace(" ", "").split(",")
                   if f and f not in Image.OPEN]
        if unknown or not self.image_formats.strip(" ,"):
            raise ValueError(f"{ENV_PREFIX}IMAGE_FORMATS={self.image_formats!r}: "
                             + (f"Pillow cannot open {', '.join(unknown)}" if unknown else
                                "name at least one format") + " (e.g. PNG,JPEG,WEBP)")
        from serving.gallery.index import choose_kind
        from serving.gallery.database import check_uri

        choose_kind(self.gallery_index, 0)
        check_uri(self.gallery_uri)
        if self.follow_alias and not re.match(r"^models:/[^/@]+@[^/@]+$", self.model_uri.strip()):
            raise ValueError(f"{ENV_PREFIX}FOLLOW_ALIAS=true follows an alias, but "
                             f"{ENV_PREFIX}MODEL_URI={self.model_uri!r} names none: use "
                             "models:/<name>@<alias>")
        for name in ("header_timeout_s", "body_timeout_s", "follow_every_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{ENV_PREFIX}{name.upper()} must be more than 0 seconds, "
                                 f"got {getattr(self, name)}")
        if not 0 <= self.migration_nice <= 19:
            raise ValueError(f"{ENV_PREFIX}MIGRATION_NICE must be 0-19 (a Unix niceness), "
                             f"got {self.migration_nice}")
        for name in ("threads", "workers"):
            if getattr(self, name) < 0:
                raise ValueError(f"{ENV_PREFIX}{name.upper()} must be 0 (auto) or more")
        from zoo.export.runtime_timing import RUNTIMES

        if self.runtime.strip().lower() not in ("auto", *RUNTIMES):
            raise ValueError(f"{ENV_PREFIX}RUNTIME={self.runtime!r}: choose auto, "
                             f"{' or '.join(RUNTIMES)}")
        self.keys()

    def keys(self) -> "Keys":
        """The API and admin keys, from the variables or the files they name."""
        from serving.http.keys import Keys

        found = {}
        for name in ("api_key", "admin_key"):
            value, file = getattr(self, name), getattr(self, f"{name}_file")
            if value and file:
                raise ValueError(f"set {ENV_PREFIX}{name.upper()} or "
                                 f"{ENV_PREFIX}{name.upper()}_FILE, not both")
            if file:
                try:
                    value = Path(file).expanduser().read_text().strip()
                except OSError as exc:
                    raise ValueError(f"{ENV_PREFIX}{name.upper()}_FILE={file}: cannot read it "
                                     f"({exc.strerror})") from None
                if not value:
                    raise ValueError(f"{ENV_PREFIX}{name.upper()}_FILE={file} is empty")
            found[name] = value
        if found["api_key"] and found["api_key"] == found["admin_key"]:
            raise ValueError(f"{ENV_PREFIX}API_KEY and {ENV_PREFIX}ADMIN_KEY are the same key: "
                             "give the admin key only to those who may change the gallery")
        return Keys(found["api_key"], found["admin_key"], self.open_enroll, self.open_docs)

    @property
    def worker_count(self) -> int:
        """``workers``, or on CPU one per core up to 4 (each with ONNX Runtime on
        cores / workers threads), and 1 with a GPU.

        Two single-threaded workers beat one two-threaded worker on two cores: a worker's
        event loop preempts its own ONNX Runtime threads, and a parallel section waits for its
        slowest thread (bench/serve_throughput.py: 1.1-1.2x the requests/s).
        """
        if self.workers:
            return self.workers
        from zoo.export.runtime_timing import auto_workers

        return auto_workers(self.device)

    def gallery_path(self, family: str) -> Path:
        """The folder of a registered model's galleries (``ZOO_GALLERY_DIR``, or one per
        registered model in the state folder)."""
        return (Path(self.gallery_dir) if self.gallery_dir
                else _state_home() / "galleries" / _file_name(family))

    def legacy_gallery_path(self, version_key: str) -> Path | None:
        """Where a model-zoo before the gallery kept its people kept one version's gallery
        (``<state>/galleries/<model>-v<version>-<run>``), if it is there."""
        path = _state_home() / "galleries" / _file_name(version_key)
        return path if not self.gallery_dir and path.is_dir() else None

    def cache_path(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else _cache_home() / "bundles"
