"""The BentoML service: embeddings, classes, identities and GradCAM over HTTP.

    bentoml serve serving.service:ZooService            # model: ZOO_MODEL_URI
    curl -F images=@face.png localhost:3000/embed

One service class, the model loaded once per worker in ``__init__``, each endpoint a typed
method. Images arrive as multipart files named ``images`` (repeat the field for several);
tabular rows as JSON ``{"rows": [[...], ...]}``. Bad input gets a 400 or 413 whose
``error`` names the problem; the model is resolved while the module is imported, so a
missing model stops ``bentoml serve`` before any worker starts.

Each endpoint is one straight pipeline through the rooms of ``serving/``: the HTTP edge
(``http/``: keys, limits; the whole chain is listed in ``http/chain.py``) → decode and the
face stage (``inputs/``) → the model (``model/``) → the gallery (``gallery/``) → the
answer (``schemas.py``).
"""
import functools
import hashlib
import json
import logging
from typing import Annotated, Any, Awaitable, Callable, Literal

import bentoml
import numpy as np
import torch
from fastapi import FastAPI, HTTPException, Query
from PIL import Image
from pydantic import Field, WithJsonSchema
from starlette.responses import JSONResponse

from serving.errors import RequestError, shown
from serving.gallery.kept import keep_chips, keep_image, keep_row
from serving.gallery.names import identity_name
from serving.http import chain, latency, openai_api, route_metrics
from serving.http.keys import ADMIN_SCOPE_KEY
from serving.http.limits import Limit, json_limit
from serving.inputs.faces import FaceRequest, chip_picture, keep_photo
from serving.inputs.images import keep_picture
from serving.inputs.reader import InputReader, Rows as RowValues, Uploads
from serving.inputs.rows import rows_as_lists
from serving.inputs.uploads import ImageFile, Text, Upload
from serving.lifecycle.answering import ANSWERING, Answering, pinned_uri
from serving.lifecycle.follow import Lifecycle, starting_uri
from serving.model.packaging import bento_model
from serving.model.served import ServedModel
from serving.page import routes as page
from serving.schemas import (ClassifyResponse, EmbedResponse, EnrollResponse, FaceEmbedding,
                             FaceIdentification, Identification, IdentifyResponse, Match,
                             MigrateRequest, VerifyResponse, header_value)
from serving.settings import ServeSettings
from zoo.export.bundle import Bundle
from zoo.gallery import normalised

log = logging.getLogger("serving")

try:  # fail here, before any worker starts, with one line that says what is missing
    SETTINGS = ServeSettings.from_env()
    KEYS = SETTINGS.keys()
    PACKED = bento_model(SETTINGS)
    if PACKED is None:  # from the MLflow store (a built Bento holds its model: no MLflow)
        from mlflow_source.fetch import fetch_bundle

        def fetch(uri: str) -> Bundle:
            return fetch_bundle(uri, SETTINGS.cache_path())

        BUNDLE = fetch(SETTINGS.model_uri)
        # a version the deployment moved to since (following its alias, or a restarted worker)
        if (uri := starting_uri(SETTINGS, BUNDLE.info.name, pinned_uri(BUNDLE))) is not None:
            BUNDLE = fetch(uri)
    else:
        BUNDLE, fetch = None, None  # type: ignore[assignment]
except (LookupError, FileNotFoundError, ValueError) as exc:
    raise SystemExit(f"error: cannot serve: {exc}") from None

# Schemas of type "file": BentoML's clients send such fields as multipart files (a Path, a
# PIL image opened from a file, a binary file object), not as JSON.
_FILES = {"type": "array", "items": {"type": "file", "format": "binary"}}
Images = Annotated[list[ImageFile] | None, Field(description="image files (multipart)"),
                   WithJsonSchema({**_FILES, "description": "image files (multipart)"})]
# A value is a number, a table's category as text (or a flag), or null where missing; bool
# first, or JSON true would become 1.0. A row is a list in the model's column order, or a
# record keyed by column name (a column left out is missing).
Value = bool | float | str | None
Rows = Annotated[list[list[Value] | dict[str, Value]] | None,
                 Field(description="rows of raw features (JSON): lists of values in column "
                       "order, or records keyed by column name")]
Reference = Annotated[list[ImageFile] | None, Field(
    max_length=1, description="an image to explain the similarity to (instead of a class)"),
    WithJsonSchema({**_FILES, "maxItems": 1, "description": "an image to explain the "
                    "similarity to (instead of a class)"})]
TopK = Annotated[int | None, Field(ge=1, le=1000, description="how many answers per input")]
MaxFaces = Annotated[int | None, Field(ge=1, le=1000, description="a face model: at most this "
                                       "many faces per photo, largest first (ZOO_MAX_FACES caps "
                                       "it)")]
MinFacePx = Annotated[int | None, Field(ge=0, le=100_000, description="a face model: faces "
                                        "narrower than this many pixels are left out")]

Far = Annotated[Text, Field(
    max_length=40, description="the false-accept rate whose threshold decides: 1e-3 (the "
    "default), or another the model's export kept (1e-2, 1e-4; GET /model lists them)")]

MODEL_ROUTES = ("embed", "classify", "identify", "verify", "enroll", "gradcam",
                "v1/embeddings")
#: the last page /identities serves: past it the row offset would overflow the database's
#: 64-bit integers (a 500 from SQLite) long before any gallery has that many names
MAX_PAGE = 1_000_000_000
# Inputs per ONNX Runtime call, on /metrics: how well concurrent requests are batched.
BATCH_SIZES = bentoml.metrics.Histogram(
    name="zoo_batch_size", documentation="inputs per model call (adaptive batching)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))

info_app = FastAPI(title="model-zoo model info")
page.add_routes(info_app)  # the page at /ui (serving/page/)
_RUNNING: list["ZooService"] = []  # this worker's service, once it has started


def answers_errors(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """``RequestError`` becomes its status with ``{"error": message}`` (OpenAI's error shape
    for an ``OpenAIError``)."""
    @functools.wraps(method)
    async def wrapper(self: "ZooService", *args: Any, **kwargs: Any) -> Any:
        try:
            return await method(self, *args, **kwargs)
        except RequestError as exc:
            log.info("%s: %d %s", method.__name__, exc.status, exc)
            ctx = kwargs.get("ctx")
            if ctx is not None:  # BentoML copies the context's status onto the response
                ctx.response.status_code = exc.status
            body = (exc.body() if isinstance(exc, openai_api.OpenAIError)
                    else {"error": str(exc)})
            return JSONResponse(body, status_code=exc.status)
    return wrapper


@bentoml.asgi_app(info_app, path="/")
@bentoml.service(
    name="zoo",
    traffic={"timeout": 300},
    http={"host": SETTINGS.host},
    workers=SETTINGS.worker_count,
    logging={"access": {"enabled": SETTINGS.access_log}},
    # BentoML samples no traces unless tracing is configured, but its OpenTelemetry middleware
    # costs about a tenth of a small request even so: skipped for the model endpoints.
    tracing={"excluded_urls": None if SETTINGS.trace else ",".join(MODEL_ROUTES)},
)
class ZooService:
    """A registered model-zoo model behind HTTP."""

    bundle_ref = PACKED

    def __init__(self) -> None:
        bundle = BUNDLE if BUNDLE is not None else Bundle.open(self.bundle_ref.path)
        try:
            model = ServedModel(bundle, SETTINGS, on_batch=BATCH_SIZES.observe)
        except (ValueError, RuntimeError) as exc:  # e.g. a gallery of another model
            raise SystemExit(f"error: cannot serve: {exc}") from None
        # the version answering; a request takes it once, as it arrives (http/version.py)
        self.current = Answering(model, SETTINGS)
        info = self.current.model.info
        log.info("serving %s (v%s, run %s): %d gallery entries", info.uri, info.version,
                 info.run_id, len(self.current.model.gallery))
        self.lifecycle = Lifecycle(self, SETTINGS, fetch, BATCH_SIZES.observe)
        _RUNNING[:] = [self]  # what the edge asks for limits and raw bodies (http/chain.py)
        latency.freeze_startup_heap()  # full collections walk only what requests make

    @property
    def answering(self) -> Answering:
        """The version this request is answered by (taken as it arrived), or, outside a
        request, the one answering now."""
        return ANSWERING.get() or self.current

    @property
    def model(self) -> ServedModel:
        return self.answering.model

    @property
    def inputs(self) -> InputReader:
        return self.answering.inputs

    @property
    def served(self) -> dict[str, Any]:
        """What every answer says it came from: the model and its version."""
        return self.answering.served

    def json_limit(self, path: str) -> Limit:
        """What a JSON body to ``path`` may hold (``serving/http/limits.py``): the rows this
        model can take, or a few fields."""
        pre = self.model.pre
        return json_limit(pre.kind, pre.row_width if pre.kind == "tabular" else 0, path,
                          SETTINGS.max_images, SETTINGS.max_request_bytes,
                          self.answering.row_name_bytes)

    async def embed_body(self, data: bytes) -> dict[str, Any]:
        """``/embed`` of one image sent as the whole body (``serving/http/raw_body.py``):
        the multipart route's answer, the embeddings left as arrays for orjson."""
        images = [Upload("body", data)]
        if self.model.faces is not None:  # every face, as the multipart route answers
            answer = await self.face_embeddings(images, None, FaceRequest.of(SETTINGS))
            return answer.model_dump()
        x, _ = await self.inputs.read(images, None)
        out = await self.model.infer(x)
        return {**self.served, "embeddings": np.ascontiguousarray(out["embedding"])}

    def _face_request(self, max_faces: int | None, min_face_px: int | None) -> FaceRequest:
        if self.model.faces is None:
            if max_faces is not None or min_face_px is not None:
                raise RequestError("max_faces and min_face_px are for models with a face "
                                   "stage; this model embeds each image whole")
            return FaceRequest(1)
        return FaceRequest.of(SETTINGS, max_faces, min_face_px)

    @bentoml.api
    @answers_errors
    async def embed(self, images: Images = None, rows: Rows = None,
                    max_faces: MaxFaces = None, min_face_px: MinFacePx = None) -> EmbedResponse:
        """One L2-normalised embedding per image or row; a face model's answer holds every
        face of each photo (``faces``) and each photo's largest face (``embeddings``)."""
        request = self._face_request(max_faces, min_face_px)
        if self.model.faces is not None:
            return await self.face_embeddings(images, rows, request)
        x, _ = await self.inputs.read(images, rows)
        out = await self.model.infer(x)
        return EmbedResponse(**self.served, embeddings=out["embedding"].tolist())

    async def face_embeddings(self, images: Uploads, rows: RowValues,
                              request: FaceRequest) -> EmbedResponse:
        """``/embed`` of a face model (also the raw-image route's)."""
        found = await self.inputs.read_faces(images, rows, request)
        embeddings = (await self.model.infer(found.x))["embedding"]
        faces = [[FaceEmbedding(**face.to_dict(), embedding=embeddings[at.start + j].tolist())
                  for j, face in enumerate(photo)]
                 for photo, at in zip(found.faces, found.rows())]
        return EmbedResponse(**self.served, embeddings=embeddings[found.largest()].tolist(),
                             faces=faces)

    @bentoml.api
    @answers_errors
    async def classify(self, images: Images = None, rows: Rows = None,
                       top_k: TopK = None) -> ClassifyResponse:
        """The ``top_k`` most probable classes of each image or row."""
        if not self.model.has_classes:
            raise RequestError("this model has no classifier head: use /embed or /identify")
        x, _ = await self.inputs.read(images, rows)
        out = await self.model.infer(x)
        top = self.model.top_classes(out["logits"], top_k or SETTINGS.top_k)
        return ClassifyResponse(**self.served, predictions=top)

    @bentoml.api
    @answers_errors
    async def identify(self, ctx: bentoml.Context, images: Images = None, rows: Rows = None,
                       top_k: TopK = None, max_faces: MaxFaces = None,
                       min_face_px: MinFacePx = None, far: Far = "") -> IdentifyResponse:
        """Nearest gallery identities; ``unknown`` below the threshold at FAR 1e-3 (or at
        ``far``). A face model answers every face of each photo (``faces``) and each photo's
        largest face (``results``). Without the admin key, only matches at or above the
        threshold are listed, at most ``ZOO_MAX_TOP_K``."""
        admin = bool(ctx.request.scope.get(ADMIN_SCOPE_KEY))
        if top_k is not None and top_k > SETTINGS.max_top_k and not admin:
            raise RequestError(f"top_k={top_k} is over this server's limit of "
                               f"{SETTINGS.max_top_k} (ZOO_MAX_TOP_K)")
        threshold, at = self.model.threshold_at(far)
        request = self._face_request(max_faces, min_face_px)
        found = (await self.inputs.read_faces(images, rows, request)
                 if self.model.faces is not None else None)
        x = found.x if found is not None else (await self.inputs.read(images, rows))[0]
        out = await self.model.infer(x)
        answers = await _in_thread(self.model.identify, out["embedding"],
                                   top_k or SETTINGS.top_k, threshold, admin)
        results = [_identification(a) for a in answers]
        if found is None:
            return IdentifyResponse(**self.served, threshold=threshold, far=at,
                                    results=results)
        faces = [[FaceIdentification(**face.to_dict(), **results[span.start + j].model_dump())
                  for j, face in enumerate(photo)]
                 for photo, span in zip(found.faces, found.rows())]
        return IdentifyResponse(**self.served, threshold=threshold, far=at,
                                results=[results[i] for i in found.largest()], faces=faces)

    @bentoml.api
    @answers_errors
    async def verify(self, ctx: bentoml.Context, images: Images = None,
                     identity: Text = "", far: Far = "") -> VerifyResponse:
        """Whether two photos show one person, or whether a photo shows the enrolled
        ``identity`` (send one photo and the name): the similarity, the version's threshold
        (at FAR 1e-3, or at ``far``) and ``same``. A face model compares each photo's
        largest face."""
        admin = bool(ctx.request.scope.get(ADMIN_SCOPE_KEY))
        threshold, at = self.model.threshold_at(far)
        claimed = identity_name(identity) if identity.strip() else None
        wanted = 1 if claimed is not None else 2
        if len(images or []) != wanted:
            raise RequestError("send two images (are they one person?), or one image and an "
                               f"identity (is it them?); got {len(images or [])} image(s)"
                               + (f" and identity {shown(claimed)}" if claimed else ""))
        if self.model.faces is not None:
            found = await self.inputs.read_faces(images, None,
                                                 FaceRequest.of(SETTINGS, largest=True))
            x = found.x[found.largest()]
        else:
            x, _ = await self.inputs.read(images, None)
        embeddings = (await self.model.infer(x))["embedding"]
        if claimed is None:
            a, b = normalised(embeddings, self.model.embedding_dim)
            similarity: float | None = float(a @ b)
        else:
            similarity = await _in_thread(self.model.gallery.similarity_to, claimed,
                                          embeddings[0])
            if similarity is None and admin:
                raise RequestError(f"no identity {shown(claimed)} in the gallery", 404)
        same = (None if threshold is None
                else similarity is not None and similarity >= threshold)
        if not admin and not same:  # who is enrolled is for the admin to see
            similarity = None
        return VerifyResponse(**self.served, identity=claimed, similarity=similarity,
                              threshold=threshold, far=at, same=same)

    @bentoml.api
    @answers_errors
    async def enroll(self, identity: Text = "", images: Images = None,
                     rows: Rows = None, face: Text = "") -> EnrollResponse:
        """Add images (or rows) of ``identity`` to the gallery, and what each keeps for the
        model's later versions, saved before answering. A face model needs one face per photo
        (``face=largest`` takes the largest)."""
        name = identity_name(identity)
        if face.strip() not in ("", "largest"):
            raise RequestError(f"face={shown(face.strip())}: send face=largest, or nothing")
        kind = self.model.kept_kind
        if self.model.faces is not None:
            request = FaceRequest.of(SETTINGS, one=True, largest=face.strip() == "largest")
            found = await self.inputs.read_faces(images, rows, request,
                                                 keep_chips if kind else None)
            x, kept = found.x, [chips[0] for chips in found.pictures]
        else:
            x, kept = await self.inputs.read(images, rows, keep_image if kind else None)
        out = await self.model.infer(x)
        if images:
            digests = [hashlib.sha256(upload.data).hexdigest() for upload in images]
        else:
            listed = rows_as_lists(rows or [], self.model.pre)
            digests = [hashlib.sha256(json.dumps(row).encode()).hexdigest() for row in listed]
            kept = [keep_row(row, self.model.pre) for row in listed] if kind else []
        entries = await _in_thread(self.model.gallery.enroll, out["embedding"], name, digests,
                                   (kind, kept) if kind else None)
        return EnrollResponse(**self.served, identity=name, added=len(x), entries=entries,
                              gallery_size=len(self.model.gallery))

    @bentoml.api
    @answers_errors
    async def gradcam(self, ctx: bentoml.Context, image: ImageFile,
                      method: Literal["gradcam", "gradcam++"] = "gradcam",
                      target: Text = "", reference: Reference = None) -> Image.Image:
        """A PNG heatmap over ``image``: why ``target`` (default the predicted class), or,
        given a ``reference`` image, why the two embeddings are similar."""
        if self.model.pre.kind != "image":
            raise RequestError("GradCAM explains image models; this model takes rows")
        face = None
        if self.model.faces is not None:  # the largest face's chip, as the model saw it
            found = await self.inputs.read_faces(
                [image], None, FaceRequest.of(SETTINGS, largest=True), keep=keep_photo)
            x_uint8, face, photo = found.x, found.faces[0][0], found.pictures[0]
            picture = chip_picture(x_uint8[0])
        else:
            x_uint8, pictures = await self.inputs.read([image], None, keep=keep_picture)
            picture = pictures[0]
        x = torch.from_numpy(self.model.model_input(x_uint8))
        class_index = None
        if target.strip():
            if not self.model.has_classes:
                raise RequestError("this model has no classes: send a reference image instead")
            if target.strip() not in self.model.class_names:
                known = ", ".join(self.model.class_names[:20])
                raise RequestError(f"unknown class {shown(target.strip())} as GradCAM target; the "
                                   f"model's classes are: {known}"
                                   + (" ..." if len(self.model.class_names) > 20 else ""))
            class_index = self.model.class_names.index(target.strip())
        ref = None
        if reference:
            if target.strip():
                raise RequestError("send a target class or a reference image, not both")
            ref_x, _ = await self.inputs.read(reference, None)
            ref = torch.from_numpy((await self.model.infer(ref_x))["embedding"])
        elif not self.model.has_classes:
            raise RequestError("this model has no classes: send a reference image to explain "
                               "a similarity")
        try:
            explainer = await _in_thread(lambda: self.model.explainer)
        except (LookupError, ValueError) as exc:  # the version, not the request: say so, 409
            log.warning("gradcam: %s", exc)
            raise RequestError("GradCAM is unavailable for this model version: it was exported "
                               "without its GradCAM weights, or they cannot be loaded (the "
                               "server log says which); export the version again", 409) from None
        result = await _in_thread(explainer.explain, x, picture, method, class_index, ref,
                                  self.model.class_names)
        picture = result.overlay
        if face is not None:  # the map carried back onto the photo, the face's box drawn
            from serving.model.gradcam import face_overlay

            picture = await _in_thread(face_overlay, photo, result.heat, face,
                                       self.model.faces)
        ctx.response.headers["X-Zoo-Target"] = header_value(result.target)
        ctx.response.headers["X-Zoo-Score"] = f"{result.score:.6g}"
        ctx.response.headers["X-Zoo-Layer"] = result.layer
        picture.format = "PNG"
        return picture

    @bentoml.api(route="/v1/embeddings")
    @answers_errors
    async def v1_embeddings(self, input: Any = None, model: str | None = None,
                            encoding_format: str | None = None, dimensions: int | None = None,
                            user: str | None = None) -> dict[str, Any]:
        """OpenAI's embeddings API: data URLs of images (or rows of values) in, embeddings
        in OpenAI's answer out (``openai.OpenAI(base_url=.../v1).embeddings.create``)."""
        info = self.model.info
        encoding = openai_api.check_request(model, encoding_format, dimensions,
                                            self.served_names, self.model.embedding_dim)
        images, rows = openai_api.parse_input(input, self.model.pre.kind)
        try:
            x, _ = await self.inputs.read(images, rows)
        except RequestError as exc:
            raise openai_api.OpenAIError(str(exc), exc.status, "input") from None
        out = await self.model.infer(x)
        return openai_api.embedding_response(out["embedding"], info.name, encoding)

    @property
    def served_names(self) -> set[str]:
        """What ``model`` may say in an OpenAI request."""
        info = self.model.info
        return {info.name, info.uri, f"{info.name}/{info.version}",
                f"models:/{info.name}/{info.version}"}

    @info_app.get("/v1/models")
    def v1_models(self) -> dict[str, Any]:
        """OpenAI's model list: the one served model."""
        return {"object": "list", "data": [{"id": self.model.info.name, "object": "model",
                                            "created": 0, "owned_by": "model-zoo"}]}

    @info_app.get("/model")
    def describe(self) -> dict[str, Any]:
        """Model URI, version, classes, input size, metrics and gallery of the served version."""
        return self.model.describe()

    @info_app.post("/gallery/migrate", status_code=202)
    def start_migration(self, request: MigrateRequest) -> dict[str, Any]:
        """Carry the enrolled people to another version of this model, gate it on them, and
        answer with it when it passes (admin); runs in the background: ``GET
        /gallery/migration`` says how far it is."""
        try:
            return self.lifecycle.start(request.to, request.force)
        except RequestError as exc:
            raise HTTPException(exc.status, str(exc)) from None

    @info_app.get("/gallery/migration")
    def migration(self) -> dict[str, Any]:
        """The version answering, the latest migration's stage, progress, ETA and gate
        figures, and the versions refused (admin)."""
        return self.lifecycle.status()

    @info_app.get("/identities")
    def identities(self, page: int = Query(1, ge=1, le=MAX_PAGE),
                   page_size: int = Query(100, ge=1, le=1000),
                   search: str = Query("", max_length=200, description="only names that "
                                       "hold this text")) -> dict[str, Any]:
        """Enrolled identities with their entry counts, by name, one page at a time (admin);
        ``total`` counts those whose names hold ``search``."""
        gallery = self.model.gallery.refresh()
        counts = gallery.counts((page - 1) * page_size, page_size, search)
        return {"identities": [{"name": n, "entries": c} for n, c in counts.items()],
                "page": page, "page_size": page_size, "search": search,
                "total": gallery.count_identities(search)}

    @info_app.get("/identities/{name:path}")
    def identity(self, name: str) -> dict[str, Any]:
        """One identity's enrollments: when, and each image's sha256 (admin)."""
        name = _lookup_name(name)
        entries = self.model.gallery.enrollments(name)
        if not entries:
            raise HTTPException(404, f"no identity {shown(name)} in the gallery")
        return {"name": name, "entries": len(entries), "enrollments": entries}

    @info_app.delete("/identities/{name:path}")
    def remove_identity(self, name: str) -> dict[str, Any]:
        """Remove every entry of one identity from the gallery, for every worker (admin)."""
        name = _lookup_name(name)
        removed = self.model.gallery.remove(name)
        if not removed:
            raise HTTPException(404, f"no identity {shown(name)} in the gallery")
        return {"name": name, "removed": removed,
                "gallery_size": len(self.model.gallery)}


chain.install(ZooService, SETTINGS, KEYS, running=lambda: _RUNNING[0] if _RUNNING else None,
              templates=lambda: [*route_metrics.BENTOML_ROUTES, *(f"/{r}" for r in MODEL_ROUTES),
                                 *route_metrics.route_templates(info_app.routes)])


def _identification(answer: Any) -> Identification:
    return Identification(identity=answer.identity, known=answer.known,
                          similarity=None if np.isnan(answer.similarity) else answer.similarity,
                          matches=[Match(**m) for m in answer.matches])


async def _in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    import anyio

    return await anyio.to_thread.run_sync(functools.partial(fn, *args))


def _lookup_name(name: str) -> str:
    """An identity name from a URL, normalised as ``/enroll`` stores names."""
    try:
        return identity_name(name)
    except RequestError as exc:
        raise HTTPException(400, str(exc)) from None

