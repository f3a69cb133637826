"""The FastAPI app: OpenAI-compatible chat, classify/measure/preview, the web page.

``create_app`` takes a loaded ``Assistant`` (any object with its API) and
wires it behind one ``ModelWorker`` thread. Every ``/v1/`` route needs the
bearer key unless the app was made without one (``slava serve
--insecure-local``); the page at ``/`` and ``/healthz`` are public and carry
no data. Bodies are capped before they are read (``Content-Length``) and
while they stream in, and decoded images are capped again.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import io
import logging
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from slava.errors import SlavaError
from slava.serve.batching import ModelWorker, QueueFull
from slava.serve.inputs import (ApiError, finite, header_pixels, optional_float, particle_method, read_image_request,
                                to_micrograph)
from slava.serve.limits import DEFAULT_MAX_PIXELS_IN_FLIGHT, ClientGone, PixelBudget, run_while_connected
from slava.serve.openai_routes import ChatCall, answer_chat, router

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
MAX_LABELS = 64
MAX_LABEL_CHARS = 120
PREVIEW_MAX_SIDE = 1024
JSON_SLACK_BYTES = 1 << 20
"""Room for the text of a request beside its base64 image (chat history, labels)."""

SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy",
     b"default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
     b"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"),
]


class BodyTooLarge(StarletteHTTPException):
    """A streamed body passed the cap; an HTTPException so FastAPI's body parsing re-raises it unchanged."""

    def __init__(self, limit: int):
        super().__init__(413, f"request body is over the server's limit of {limit / 2**20:.1f} MiB "
                         "(room for one base64-encoded image of the maximum upload size)")


def error_response(status: int, message: str, code: str | None = None, type: str = "invalid_request_error",
                   headers: dict | None = None) -> JSONResponse:
    """An OpenAI-style error response."""
    return JSONResponse(ApiError(status, message, code, type).body(), status_code=status, headers=headers)


def _key_matches(header: bytes | None, api_key: bytes) -> bool:
    if not header:
        return False
    scheme, _, token = header.partition(b" ")
    return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), api_key)


LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
"""Host names a loopback server answers to without a key."""
ALLOWED_CONTENT_TYPES = (b"application/json", b"multipart/form-data")


def _split_authority(value: str) -> tuple[str, str | None]:
    """("host", "port") of a Host header value or an origin's authority; IPv6 stays bracketed."""
    value = value.strip().lower()
    if value.startswith("["):
        host, _, rest = value.partition("]")
        return host + "]", rest[1:] if rest.startswith(":") else None
    host, sep, port = value.rpartition(":")
    return (host, port) if sep and port.isdigit() else (value, None)


class RequestGuard:
    """ASGI middleware: bearer key and body cap on ``/v1/``, security headers on every response.

    It runs before any route reads the body, so a request without the key or
    with an oversize ``Content-Length`` is answered without reading a byte of it.
    Without a key (``--insecure-local``) a web page elsewhere must not be able to
    use the server through the user's browser, so every request also needs a
    ``Host`` naming this server (against DNS rebinding), no foreign ``Origin``,
    and a POST to ``/v1/`` needs a JSON or multipart body (a ``text/plain`` form
    post skips the browser's CORS preflight).
    """

    def __init__(self, app, api_key: str | None, max_body: int, allowed_hosts: Sequence[str] = LOOPBACK_NAMES,
                 port: int | None = None):
        self.app = app
        self.api_key = api_key.encode() if api_key else None
        self.max_body = max_body
        self.allowed_hosts = {h.lower() for h in allowed_hosts}
        self.port = port

    def _authority_ok(self, value: str) -> bool:
        host, port = _split_authority(value)
        if host not in self.allowed_hosts:
            return False
        return self.port is None or port == str(self.port) or (port is None and self.port == 80)

    def _cross_site_refusal(self, scope, headers: dict) -> JSONResponse | None:
        """Why a keyless request may come from another site, as the response to send; None when it may not."""
        host = headers.get(b"host", b"").decode("latin-1")
        if not self._authority_ok(host):
            return error_response(403, f"Host {host!r} is not this server's address: a server without an API key "
                                  "answers only requests made to its own loopback address", "forbidden_host")
        origin = headers.get(b"origin")
        if origin is not None:
            text = origin.decode("latin-1")
            scheme, _, authority = text.partition("://")
            if scheme not in ("http", "https") or not self._authority_ok(authority):
                return error_response(403, f"Origin {text!r} is another site: a server without an API key answers "
                                      "only its own page", "forbidden_origin")
        if scope["method"] not in ("GET", "HEAD", "OPTIONS") and scope["path"].startswith("/v1/"):
            ctype = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
            if ctype not in ALLOWED_CONTENT_TYPES:
                return error_response(415, f"content type {ctype.decode('latin-1')!r} is not accepted: send "
                                      "application/json or multipart/form-data", "unsupported_content_type")
        return None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": list(message.get("headers", [])) + SECURITY_HEADERS}
            await send(message)

        headers = dict(scope["headers"])
        if self.api_key is None:
            refusal = self._cross_site_refusal(scope, headers)
            if refusal is not None:
                await refusal(scope, receive, send_with_headers)
                return
        if not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send_with_headers)
            return
        if self.api_key is not None and not _key_matches(headers.get(b"authorization"), self.api_key):
            given = b"authorization" in headers
            message = "Incorrect API key provided." if given else (
                "Missing API key: send 'Authorization: Bearer <key>' (the server's SLAVA_API_KEY).")
            response = error_response(401, message, "invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
            await response(scope, receive, send_with_headers)
            return
        length = headers.get(b"content-length")
        if length is not None:
            try:
                too_big = int(length) > self.max_body
            except ValueError:
                await error_response(400, "invalid Content-Length header")(scope, receive, send_with_headers)
                return
            if too_big:
                exc = BodyTooLarge(self.max_body)
                await error_response(413, exc.detail, "payload_too_large")(scope, receive, send_with_headers)
                return
        received = 0

        async def capped_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise BodyTooLarge(self.max_body)
            return message

        await self.app(scope, capped_receive, send_with_headers)


def _batch_handlers(assistant) -> dict:
    """The worker's handlers: how each kind of job calls the Assistant."""

    # The Assistant generates one conversation at a time, so chat batches run sequentially;
    # a call whose client left while it waited in the batch is not started.
    def chat(calls: Sequence[ChatCall]) -> list:
        return [ClientGone() if c.cancel.is_set() else _attempt(answer_chat, assistant, c) for c in calls]

    # Jobs batch only with the same labels, so one batched forward scores them all.
    def classify(calls: Sequence[tuple]) -> list:
        return list(assistant.classify_batch([image for image, _ in calls], list(calls[0][1])))

    # Jobs batch only with the same particle method.
    def measure(calls: Sequence[tuple]) -> list:
        return [_attempt(assistant.measure, image, particle_method=method) for image, method in calls]

    return {"chat": chat, "classify": classify, "measure": measure}


def _attempt(fn, *args, **kwargs):
    """``fn(...)``, or the exception it raised, so one failure in a sequential batch stays its own."""
    try:
        return fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001
        return exc


def _png_data_url(pixels: np.ndarray) -> tuple[str, float]:
    """A grey [0, 1] image as a PNG data URL, shrunk to ``PREVIEW_MAX_SIDE``; returns (url, scale)."""
    from PIL import Image

    image = Image.fromarray(np.clip(np.rint(pixels * 255.0), 0, 255).astype(np.uint8), mode="L")
    scale = min(1.0, PREVIEW_MAX_SIDE / max(image.size))
    if scale < 1.0:
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii"), scale


def _parse_labels(value: Any, default: Sequence[str]) -> list[str]:
    """Labels from a JSON list or a comma-separated string; ``default`` when none are given."""
    if value is None or value == "" or value == []:
        labels = list(default)
    elif isinstance(value, str):
        labels = [p.strip() for p in value.split(",")]
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        labels = [v.strip() for v in value]
    else:
        raise ApiError(400, "labels must be a list of strings or a comma-separated string", param="labels")
    labels = list(dict.fromkeys(label for label in labels if label))
    if len(labels) < 2:
        raise ApiError(400, "give at least two distinct labels to classify against", param="labels")
    if len(labels) > MAX_LABELS or any(len(label) > MAX_LABEL_CHARS for label in labels):
        raise ApiError(400, f"at most {MAX_LABELS} labels of at most {MAX_LABEL_CHARS} characters", param="labels")
    return labels


def create_app(
    assistant,
    api_key: str | None,
    max_upload_bytes: int = 20 * 2**20,
    max_batch: int = 8,
    model_name: str = "slava",
    labels: Sequence[str] = (),
    max_waiting: int = 1024,
    max_pixels_in_flight: int = DEFAULT_MAX_PIXELS_IN_FLIGHT,
    allowed_hosts: Sequence[str] = LOOPBACK_NAMES,
    port: int | None = None,
) -> FastAPI:
    """The server app around a loaded ``assistant``.

    ``api_key`` None serves without authentication (only for
    ``--insecure-local``). ``labels`` are the default classification labels
    (the run's classes). ``max_upload_bytes`` caps each decoded image;
    ``max_batch`` caps the jobs the worker runs as one batch and
    ``max_waiting`` the jobs in flight before requests get 503;
    ``max_pixels_in_flight`` caps the header pixels of the images all requests
    hold at once (``PixelBudget``). Without a key, only requests to
    ``allowed_hosts`` (on ``port`` when given) from no other origin are answered.
    """
    worker = ModelWorker(_batch_handlers(assistant), max_batch=max_batch, max_waiting=max_waiting)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        worker.start()
        try:
            yield
        finally:
            worker.close()

    app = FastAPI(title="sLAVA", version="0.1.0", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.worker = worker
    app.state.model_name = model_name
    app.state.created = int(time.time())
    app.state.labels = list(labels)
    app.state.max_upload_bytes = max_upload_bytes
    app.state.pixel_budget = budget = PixelBudget(max_pixels_in_flight)
    # A base64 image is 4/3 of its bytes; the slack holds the JSON around it.
    app.add_middleware(RequestGuard, api_key=api_key, max_body=max_upload_bytes * 4 // 3 + JSON_SLACK_BYTES,
                       allowed_hosts=allowed_hosts, port=port)

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(SlavaError)
    async def _user_error(_request: Request, exc: SlavaError):
        # The library's own "bad input" errors (unreadable image, bad labels) are the client's to fix.
        return error_response(400, str(exc), "invalid_request")

    @app.exception_handler(ClientGone)
    @app.exception_handler(ClientDisconnect)
    async def _client_gone(_request: Request, _exc: Exception):
        # Nobody reads this (the client left); 499 is the customary log code for it.
        return error_response(499, "client closed the request", "client_closed_request")

    @app.exception_handler(QueueFull)
    async def _queue_full(_request: Request, exc: QueueFull):
        return error_response(503, f"server busy: {exc}; retry later", "overloaded", "server_error",
                              headers={"Retry-After": "1"})

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}
        return error_response(exc.status_code, str(exc.detail), code.get(exc.status_code), headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError):
        return error_response(400, f"invalid request: {exc.errors()}", "invalid_request")

    @app.exception_handler(Exception)
    async def _server_error(_request: Request, exc: Exception):
        log.exception("request failed")
        return error_response(500, f"internal error: {type(exc).__name__}", "internal_error", "server_error")

    app.include_router(router)

    @app.get("/healthz")
    async def healthz():
        """Liveness, whether a key is needed, and worker load; public, so no run details."""
        return {"status": "ok", "auth_required": api_key is not None, "waiting": worker.waiting,
                "batches": worker.batches_run, "largest_batch": worker.largest_batch,
                "submitted": worker.submitted, "dropped": worker.dropped,
                "pixels_in_flight": budget.in_flight, "peak_pixels_in_flight": budget.peak}

    @app.get("/v1/labels")
    async def get_labels():
        """The run's classes: the default labels for ``/v1/classify``."""
        return {"object": "list", "model": model_name, "labels": app.state.labels}

    @app.post("/v1/preview")
    async def preview(request: Request):
        """The micrograph as the model sees it: data bar cropped, with its calibration."""
        data, name, fields = await read_image_request(request, max_upload_bytes)
        async with budget.hold(header_pixels(data, name)):
            micrograph = await to_micrograph(data, name, optional_float(fields, "pixel_size_nm"))
            url, scale = await asyncio.to_thread(_png_data_url, micrograph.pixels)
        return {
            "object": "preview",
            "image": url,
            "preview_scale": scale,
            "width": micrograph.width,
            "height": micrograph.height,
            "original_size": [int(micrograph.original_shape[1]), int(micrograph.original_shape[0])],
            "data_bar": list(micrograph.data_bar) if micrograph.data_bar else None,
            "pixel_size_nm": micrograph.pixel_size_nm,
            "pixel_size_source": micrograph.pixel_size_source,
            "scale_bar_nm": micrograph.scale_bar_nm,
            "bit_depth": micrograph.bit_depth,
            "sha256": micrograph.sha256,
        }

    @app.post("/v1/classify")
    async def classify(request: Request):
        """Ranked labels with probabilities for one image (JSON or multipart)."""
        data, name, fields = await read_image_request(request, max_upload_bytes)
        chosen = _parse_labels(fields.get("labels"), app.state.labels)
        async with budget.hold(header_pixels(data, name)):
            micrograph = await to_micrograph(data, name)
            result = await run_while_connected(request.receive, worker, "classify", (micrograph, tuple(chosen)),
                                               key=tuple(chosen))
        ranked = [{"label": label, "probability": float(p)} for label, p in result.ranked]
        return {"object": "classification", "model": model_name, "label": ranked[0]["label"], "ranked": ranked,
                "mode": result.mode, "method": result.method, "latency_s": result.latency_s}

    @app.post("/v1/measure")
    async def measure(request: Request):
        """Counts and sizes (nm where the pixel size is known) from the measurement toolkit."""
        data, name, fields = await read_image_request(request, max_upload_bytes)
        method = particle_method(fields)
        async with budget.hold(header_pixels(data, name)):
            micrograph = await to_micrograph(data, name, optional_float(fields, "pixel_size_nm"))
            result = await run_while_connected(request.receive, worker, "measure", (micrograph, method), key=method)
        return {"object": "measurements", "model": model_name, "pixel_size_nm": micrograph.pixel_size_nm,
                "measurements": finite(result.to_dict())}

    @app.post("/v1/overlay")
    async def overlay(request: Request):
        """A PNG of what ``/v1/measure`` counted: particle outlines, the data-bar box, the scale bar and its reading."""
        from slava.io import read_instrument
        from slava.measure.overlay import render_overlay

        data, name, fields = await read_image_request(request, max_upload_bytes)
        method = particle_method(fields)
        micrograph = await to_micrograph(data, name, optional_float(fields, "pixel_size_nm"))
        await asyncio.to_thread(read_instrument, micrograph)
        png = await asyncio.to_thread(render_overlay, micrograph, method)
        inst = micrograph.instrument
        return {"object": "overlay", "image": "data:image/png;base64," + base64.b64encode(png).decode("ascii"),
                "data_bar": list(micrograph.data_bar) if micrograph.data_bar else None,
                "scale_bar_px": micrograph.scale_bar_px, "pixel_size_nm": micrograph.pixel_size_nm,
                "pixel_size_source": micrograph.pixel_size_source,
                "instrument": finite(inst.to_dict()) if inst else None}

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
