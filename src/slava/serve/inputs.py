"""Request bodies → checked Python values, and the OpenAI-style error they raise.

Images reach the server only inside the request: a ``data:`` URL, bare
base64, or a multipart upload. A URL that names something elsewhere (http,
file, a path) is refused with the reason, never fetched or opened, so a
client cannot make the server read its own disk or reach the network.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import math
from typing import Any

from fastapi import Request

from slava.io import Micrograph, MicrographError, load_micrograph_bytes
from slava.io.readers import probe_image


class ApiError(Exception):
    """An error answered as ``{"error": {"message", "type", "code", "param"}}`` with ``status``."""

    def __init__(self, status: int, message: str, code: str | None = None,
                 type: str = "invalid_request_error", param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.type, self.param = status, message, code, type, param

    def body(self) -> dict:
        """The OpenAI-style error body."""
        return {"error": {"message": self.message, "type": self.type, "code": self.code, "param": self.param}}


def too_large(size: int, limit: int, what: str = "image") -> ApiError:
    """The 413 for an upload of ``size`` bytes over ``limit``."""
    return ApiError(413, f"{what} is {size / 2**20:.1f} MiB, over the server's limit of {limit / 2**20:.1f} MiB",
                    code="payload_too_large")


def decode_base64_image(text: str, max_bytes: int, param: str = "image", allow_bare: bool = True) -> bytes:
    """Bytes of a ``data:image/...;base64,`` URL (or of bare base64 when ``allow_bare``).

    Anything else is a 400 that says why; over ``max_bytes`` is a 413.
    """
    text = text.strip()
    scheme = text.split(":", 1)[0].lower() if ":" in text[:32] else None
    inline = "send the image inline as a data URL (data:image/png;base64,...)"
    if scheme in ("http", "https"):
        raise ApiError(400, f"{param} is an {scheme} URL: this server never fetches URLs; {inline}",
                       code="unsupported_image_url", param=param)
    if scheme == "file" or (scheme is None and not allow_bare):
        raise ApiError(400, f"{param} is not a data URL: this server never reads files named by a client; {inline}",
                       code="unsupported_image_url", param=param)
    if scheme is not None and scheme != "data":
        raise ApiError(400, f"{param} uses the {scheme!r} scheme; {inline}", code="unsupported_image_url", param=param)
    if scheme == "data":
        header, comma, payload = text.partition(",")
        media = header[5:].split(";")[0].strip().lower()
        if not comma or ";base64" not in header.lower():
            raise ApiError(400, f"{param} must be a base64 data URL (data:image/png;base64,...)",
                           code="invalid_image_url", param=param)
        if media and not media.startswith("image/") and media != "application/octet-stream":
            raise ApiError(400, f"{param} is a data URL of type {media!r}, not an image", code="invalid_image",
                           param=param)
    else:
        payload = text
    payload = "".join(payload.split())
    # Reject before decoding: base64 is 4/3 of the bytes it carries.
    estimate = len(payload) * 3 // 4
    if estimate > max_bytes + 2:
        raise too_large(estimate, max_bytes)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"{param} is not valid base64", code="invalid_image", param=param) from None
    if len(data) > max_bytes:
        raise too_large(len(data), max_bytes)
    if not data:
        raise ApiError(400, f"{param} is empty", code="invalid_image", param=param)
    return data


async def read_json(request: Request) -> dict:
    """The request body as a JSON object; 400 with the reason otherwise."""
    raw = await request.body()
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}", code="invalid_json") from None
    except RecursionError:
        raise ApiError(400, "request body is nested too deeply to be a request", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object", code="invalid_json")
    return body


async def read_image_request(request: Request, max_bytes: int) -> tuple[bytes, str, dict[str, Any]]:
    """(image bytes, file name, other fields) from a JSON body (``image``) or a multipart upload."""
    ctype = request.headers.get("content-type", "").lower()
    if ctype.startswith("multipart/form-data"):
        form = await request.form(max_files=1, max_fields=16)
        upload = form.get("image") or form.get("file")
        if upload is None or isinstance(upload, str):
            raise ApiError(400, "multipart body needs a file field named 'image'", code="missing_image", param="image")
        data = await upload.read()
        if len(data) > max_bytes:
            raise too_large(len(data), max_bytes)
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        return data, _name(upload.filename), fields
    if ctype.startswith("application/json") or not ctype:
        body = await read_json(request)
        image = body.get("image")
        if not isinstance(image, str) or not image:
            raise ApiError(400, "field 'image' (a data URL or base64 string) is required", code="missing_image",
                           param="image")
        fields = {k: v for k, v in body.items() if k != "image"}
        return decode_base64_image(image, max_bytes), _name(body.get("name")), fields
    raise ApiError(400, f"unsupported content type {ctype!r}: send application/json or multipart/form-data",
                   code="unsupported_content_type")


def _name(value: Any) -> str:
    """A client-given file name, only ever echoed in error messages: kept short and printable."""
    if not isinstance(value, str) or not value.strip():
        return "upload"
    return "".join(c for c in value if c.isprintable())[:80] or "upload"


def particle_method(fields: dict) -> str:
    """The ``particle_method`` field (how particles are found), "auto" when absent; 400 when unknown."""
    from slava.measure import PARTICLE_METHODS

    value = fields.get("particle_method") or "auto"
    if value not in PARTICLE_METHODS:
        raise ApiError(400, f"particle_method must be one of {', '.join(PARTICLE_METHODS)}", param="particle_method")
    return value


def optional_float(fields: dict, name: str) -> float | None:
    """A positive number field, or None when absent/empty; 400 otherwise."""
    value = fields.get(name)
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ApiError(400, f"{name} must be a number", param=name) from None
    if not number > 0 or number == float("inf"):
        raise ApiError(400, f"{name} must be a positive number", param=name)
    return number


async def to_micrograph(data: bytes, name: str = "upload", pixel_size_nm: float | None = None) -> Micrograph:
    """Decode an upload off the event loop; a non-image is a 400 carrying the reader's reason."""
    try:
        return await asyncio.to_thread(load_micrograph_bytes, data, name=name, pixel_size_nm=pixel_size_nm)
    except MicrographError as exc:
        raise ApiError(400, str(exc), code="invalid_image", param="image") from None


def header_pixels(data: bytes, name: str = "upload") -> int:
    """Width × height from the image's header (nothing decoded); a non-image is a 400."""
    try:
        width, height = probe_image(data, name)
    except MicrographError as exc:
        raise ApiError(400, str(exc), code="invalid_image", param="image") from None
    return width * height


def finite(value: Any) -> Any:
    """``value`` with NaN/inf replaced by None, recursively: JSON has no such numbers."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value
