"""The HTTP application: FastAPI routes, token check, upload limits, bounded admission and JSON errors.

Routes:

* ``POST /v1/classify``: a multipart upload (field ``file``) or JSON ``{"audio_data": "<base64>"}``; query
  ``top_k`` and ``include`` (comma-separated ``spectrogram``, ``waveform``, ``feature_maps`` or ``all``).
* ``GET /v1/model``: classes, sample rate, clip length, method, encoder, front end, commit, server limits.
* ``GET /healthz``: liveness plus queue and batching counters.
* ``GET /``: the web page (one HTML document with its script and style inline: nothing from elsewhere).
* ``GET /docs``, ``GET /redoc``, ``GET /openapi.json``: API documentation, served offline (fastapi-offline).

Every error is JSON ``{"error": "<code>", "detail": "<what is wrong>"}`` with the status: 400 malformed request,
401 missing or wrong token, 404/405, 413 upload or recording too large, 415 not JSON/multipart or audio in no
format the decoder knows, 422 audio that is recognised but corrupt or empty, 503 queue full (``Retry-After``),
504 request took longer than the timeout, 500 anything else. None of them stops the server.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import parse_qs

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi_offline import FastAPIOffline
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from audio_ssl.serve.batcher import Batcher
from audio_ssl.serve.model import AudioRejected, ServedModel

__all__ = ["INCLUDE_OPTIONS", "ServeSettings", "TOKEN_COOKIE", "create_app"]

INCLUDE_OPTIONS = ("spectrogram", "waveform", "feature_maps")
"""What ``include=`` may ask for besides the prediction (``all`` = every one)."""
TOKEN_COOKIE = "audio_ssl_token"
"""Cookie set when a request carries a valid ``?token=``, so the page's own requests carry it too."""
STATIC = Path(__file__).with_name("static")


@dataclass
class ServeSettings:
    """Server limits and batching (``audio-ssl serve --help`` describes each)."""

    max_upload_mb: float = 25.0
    max_seconds: float = 600.0
    max_batch: int = 16
    max_wait_ms: float = 5.0
    max_queue: int = 32
    timeout: float = 60.0
    top_k: int = 5
    token: str | None = None
    threads: int | None = None
    decode_workers: int = 2
    spectrogram_columns: int = 600
    waveform_points: int = 1200

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)


def error_response(status: int, code: str, detail: str, headers: dict | None = None) -> JSONResponse:
    """The JSON error body every failure gets: ``{"error": code, "detail": detail}``."""
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


class RequestTooLarge(Exception):
    """Raised from the body stream when a request outgrows the upload limit."""


class Admission:
    """Counts requests between admission and response; refuses past ``limit`` (the bounded queue).

    Used only from the event loop's thread, so a plain counter is enough."""

    def __init__(self, limit: int):
        self.limit, self.active, self.refused, self.served = int(limit), 0, 0, 0

    def enter(self) -> bool:
        if self.active >= self.limit:
            self.refused += 1
            return False
        self.active += 1
        return True

    def leave(self) -> None:
        self.active -= 1
        self.served += 1


# ---------------------------------------------------------------------------------------------- middleware
class UploadLimit:
    """ASGI middleware: 413 for a declared ``Content-Length`` over the limit, before any byte is read; a body
    that streams past the limit (chunked, or a false length) raises :class:`RequestTooLarge` from ``receive``,
    which the app answers with 413."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, int(max_bytes)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.max_bytes:
                    response = error_response(413, "upload_too_large", self._message(declared))
                    return await response(scope, receive, send)
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise RequestTooLarge(self._message(seen, at_least=True))
            return message

        await self.app(scope, limited_receive, send)

    def _message(self, size: int, at_least: bool = False) -> str:
        return (f"the request body is {'more than ' if at_least else ''}{size} bytes; this server takes at most "
                f"{self.max_bytes} bytes (--max-upload-mb)")


class TokenCheck:
    """ASGI middleware: every request must carry the token, as ``Authorization: Bearer <token>``, an
    ``X-API-Token`` header, a ``?token=`` query parameter (which also sets a same-site cookie, so that a browser
    opening ``/?token=...`` carries it on the page's own requests) or that cookie. Compared in constant time."""

    def __init__(self, app, token: str):
        self.app, self.token = app, token.encode()

    def _supplied(self, scope) -> tuple[bytes | None, bool]:
        headers = dict(scope["headers"])
        auth = headers.get(b"authorization", b"")
        if auth[:7].lower() == b"bearer ":
            return auth[7:].strip(), False
        if b"x-api-token" in headers:
            return headers[b"x-api-token"].strip(), False
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if query.get("token"):
            return query["token"][0].encode(), True
        for part in headers.get(b"cookie", b"").split(b";"):
            name, _, value = part.strip().partition(b"=")
            if name == TOKEN_COOKIE.encode():
                return value, False
        return None, False

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        supplied, from_query = self._supplied(scope)
        if supplied is None or not hmac.compare_digest(supplied, self.token):
            detail = ("this server needs a token: send 'Authorization: Bearer <token>' (or open the page as "
                      "/?token=<token>)" if supplied is None else "the token is not valid")
            response = error_response(401, "unauthorized", detail, headers={"WWW-Authenticate": "Bearer"})
            return await response(scope, receive, send)
        if not from_query:
            return await self.app(scope, receive, send)
        cookie = f"{TOKEN_COOKIE}={self.token.decode()}; Path=/; HttpOnly; SameSite=Strict"

        async def send_with_cookie(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"set-cookie", cookie.encode())]}
            await send(message)

        await self.app(scope, receive, send_with_cookie)


# ---------------------------------------------------------------------------------------------- request body
CLASSIFY_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {"type": "object", "required": ["file"],
                       "properties": {"file": {"type": "string", "format": "binary",
                                               "description": "an audio file (WAV, FLAC, OGG, AIFF, ...)"}}}},
        "application/json": {
            "schema": {"type": "object", "required": ["audio_data"],
                       "properties": {"audio_data": {"type": "string", "description":
                                                     "the audio file's bytes, base64 (a data: URL prefix is allowed)"},
                                      "filename": {"type": "string", "description": "optional, for messages"}}},
            "example": {"audio_data": "UklGRi..."}},
    },
}


def _parse_include(include: str) -> set[str]:
    wanted = {part.strip() for part in include.split(",") if part.strip()}
    if "all" in wanted:
        return set(INCLUDE_OPTIONS)
    unknown = wanted - set(INCLUDE_OPTIONS)
    if unknown:
        raise AudioRejected(400, "bad_request", f"include: unknown value(s) {sorted(unknown)}; choose from "
                            f"{', '.join(INCLUDE_OPTIONS)} or all")
    return wanted


async def read_audio_upload(request: Request) -> tuple[bytes, str | None]:
    """The uploaded file's bytes and name from a multipart form (field ``file``) or a JSON body
    (``audio_data``, base64). Raises :class:`AudioRejected` (400/415) naming what is wrong."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        async with request.form(max_files=1, max_fields=16) as form:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                files = [v for v in form.values() if isinstance(v, UploadFile)]
                if not files:
                    raise AudioRejected(400, "missing_audio", "the multipart form has no file: send the audio in a "
                                        "field named 'file'")
                upload = files[0]
            return await upload.read(), upload.filename
    if content_type == "application/json" or content_type.endswith("+json"):
        body = await request.body()
        try:
            payload = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise AudioRejected(400, "bad_request", f"the body is not valid JSON ({err})") from None
        if not isinstance(payload, dict) or "audio_data" not in payload:
            raise AudioRejected(400, "missing_audio", "the JSON body needs an 'audio_data' field holding the audio "
                                "file's bytes in base64")
        data = payload["audio_data"]
        if not isinstance(data, str):
            raise AudioRejected(400, "bad_request", f"'audio_data' must be a base64 string, got {type(data).__name__}")
        if data.startswith("data:") and "," in data:  # a data: URL, as browsers write them
            data = data.split(",", 1)[1]
        try:
            raw = base64.b64decode("".join(data.split()), validate=True)
        except (binascii.Error, ValueError) as err:
            raise AudioRejected(400, "invalid_base64", f"'audio_data' is not valid base64 ({err})") from None
        filename = payload.get("filename")
        return raw, filename if isinstance(filename, str) else None
    raise AudioRejected(415, "unsupported_media_type", f"Content-Type {content_type or '(none)'!r} is not accepted: "
                        "send multipart/form-data with a 'file' field or application/json with 'audio_data' (base64)")


# ---------------------------------------------------------------------------------------------- the app
def create_app(served: ServedModel, settings: ServeSettings | None = None) -> FastAPI:
    """The FastAPI application serving ``served`` with ``settings`` (model worker started by the lifespan)."""
    settings = settings or ServeSettings()
    batcher = Batcher(served.score, settings.max_batch, settings.max_wait_ms, settings.threads)
    admission = Admission(settings.max_queue)
    pool: dict[str, ThreadPoolExecutor] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        pool["decode"] = ThreadPoolExecutor(max(1, settings.decode_workers), thread_name_prefix="audio-ssl-decode")
        try:
            yield
        finally:
            batcher.stop()
            pool.pop("decode").shutdown(wait=False, cancel_futures=True)

    app = FastAPIOffline(
        title="audio-ssl serve", version=served.meta.get("audio_ssl_version") or "0",
        description=f"Environmental sound classification with **{served.name}** "
                    f"({len(served.class_names)} classes, {served.sample_rate} Hz, {served.clip_seconds:g} s windows).",
        lifespan=lifespan,
    )
    app.state.served, app.state.batcher, app.state.admission, app.state.settings = served, batcher, admission, settings

    # Errors: every one is JSON naming the problem.
    @app.exception_handler(AudioRejected)
    async def _rejected(request: Request, err: AudioRejected):
        return error_response(err.status, err.code, err.message)

    @app.exception_handler(RequestTooLarge)
    async def _too_large(request: Request, err: RequestTooLarge):
        return error_response(413, "upload_too_large", str(err))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError):
        parts = ["{}: {}".format(".".join(str(p) for p in e.get("loc", ()) if p not in ("query", "body")), e.get("msg"))
                 for e in err.errors()]
        return error_response(400, "bad_request", "; ".join(parts) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, err: StarletteHTTPException):
        codes = {404: "not_found", 405: "method_not_allowed"}
        detail = err.detail if isinstance(err.detail, str) else json.dumps(err.detail)
        if err.status_code == 404:
            detail = f"no such endpoint: {request.method} {request.url.path}"
        elif err.status_code == 405:
            allowed = (getattr(err, "headers", None) or {}).get("allow") or (getattr(err, "headers", None) or {}).get("Allow")
            detail = f"{request.method} is not allowed on {request.url.path}" + (f" (allowed: {allowed})" if allowed else "")
        return error_response(err.status_code, codes.get(err.status_code, "bad_request"), detail,
                              headers=getattr(err, "headers", None))

    @app.exception_handler(Exception)
    async def _crash(request: Request, err: Exception):
        return error_response(500, "internal_error", f"{type(err).__name__}: {err}")

    # ------------------------------------------------------------------ routes
    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        html = (STATIC / "index.html").read_text(encoding="utf-8")
        html = html.replace("/*STYLE*/", (STATIC / "style.css").read_text(encoding="utf-8"))
        html = html.replace("/*SCRIPT*/", (STATIC / "app.js").read_text(encoding="utf-8"))
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})

    @app.get("/healthz", summary="Liveness, queue and batching counters")
    async def healthz():
        body = {"status": "ok" if batcher.alive else "unavailable", "model": served.name,
                "in_flight": admission.active, "max_queue": admission.limit, "served": admission.served,
                "refused": admission.refused, "batching": batcher.stats()}
        return JSONResponse(body, status_code=200 if batcher.alive else 503)

    @app.get("/v1/model", summary="The served model: classes, sample rate, clip length, method, encoder, commit")
    async def model_info():
        limits = {k: v for k, v in asdict(settings).items() if k not in ("token", "threads")}
        return {**served.describe(), "limits": {**limits, "max_upload_bytes": settings.max_upload_bytes},
                "include_options": list(INCLUDE_OPTIONS)}

    @app.post(
        "/v1/classify", summary="Classify an uploaded recording",
        description="Top-k classes of a recording of any format, rate, channel count and length. Long recordings "
                    "are scored in windows of the model's clip length (the timeline lists each), and the top-k is "
                    "the mean of the windows' probabilities. `include` adds what the page draws.",
        openapi_extra={"requestBody": CLASSIFY_BODY},
        responses={400: {"description": "malformed request"}, 401: {"description": "token missing or wrong"},
                   413: {"description": "upload or recording too large"},
                   415: {"description": "not multipart/JSON, or audio in no known format"},
                   422: {"description": "corrupt or empty audio"}, 503: {"description": "queue full"},
                   504: {"description": "timed out"}},
    )
    async def classify(
        request: Request,
        top_k: int | None = Query(None, ge=1, description="classes to return (default: the server's --top-k)"),
        include: str = Query("", description="comma-separated: spectrogram, waveform, feature_maps, or all"),
    ):
        includes = _parse_include(include)
        k = min(top_k or settings.top_k, len(served.class_names))
        if not admission.enter():
            return error_response(503, "queue_full", f"the server is busy: {admission.limit} requests are already "
                                  "queued or running (--max-queue); retry shortly", headers={"Retry-After": "1"})
        try:
            return await asyncio.wait_for(_classify(request, k, includes), settings.timeout)
        except asyncio.TimeoutError:  # TimeoutError from Python 3.11 on
            return error_response(504, "timeout", f"the request took longer than {settings.timeout:g} s (--timeout)")
        finally:
            admission.leave()

    async def _classify(request: Request, k: int, includes: set[str]) -> dict:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        data, filename = await read_audio_upload(request)
        decoded = await loop.run_in_executor(pool["decode"], served.decode, data, filename, settings.max_seconds)
        del data
        decoded_at = time.perf_counter()
        wave = decoded.wave
        starts = served.window_starts(len(wave))
        window_probs = await batcher.score(served.windows(wave, starts))
        scored_at = time.perf_counter()
        mean = window_probs.mean(axis=0)
        top = served.top_k(mean, k)
        rate = served.sample_rate
        result = {
            "model": served.name,
            "top_k": top,
            "duration": len(wave) / rate,
            "sample_rate": decoded.source_rate,
            "channels": decoded.source_channels,
            "model_sample_rate": rate,
            "windows": len(starts),
            "window_seconds": served.clip_seconds,
            "hop_seconds": served.hop_seconds,
            "timeline": [{"start": s / rate, "end": min(s + served.window, len(wave)) / rate,
                          "top_k": served.top_k(p, k)} for s, p in zip(starts.tolist(), window_probs)],
        }
        if "waveform" in includes:
            result["waveform"] = await loop.run_in_executor(pool["decode"], served.waveform, wave,
                                                            settings.waveform_points)
        if "spectrogram" in includes:
            result["spectrogram"] = await batcher.call(lambda: served.spectrogram(wave, settings.spectrogram_columns))
        if "feature_maps" in includes:
            focus = served.focus_window(window_probs, top[0]["index"])
            window = served.windows(wave, starts)[focus : focus + 1][0]
            result["feature_maps"] = {
                "kind": served.feature_map_kind(), "encoder": served.describe()["encoder"],
                "window": {"index": focus, "start": int(starts[focus]) / rate,
                           "end": min(int(starts[focus]) + served.window, len(wave)) / rate},
                "maps": await batcher.call(lambda: served.feature_maps(window)),
            }
        done = time.perf_counter()
        result["timings_ms"] = {"decode": round((decoded_at - started) * 1000, 2),
                                "score": round((scored_at - decoded_at) * 1000, 2),
                                "total": round((done - started) * 1000, 2)}
        return result

    app.add_middleware(UploadLimit, max_bytes=settings.max_upload_bytes)
    if settings.token:
        app.add_middleware(TokenCheck, token=settings.token)  # added last = outermost: checked first
    return app

