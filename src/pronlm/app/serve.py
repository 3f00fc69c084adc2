"""HTTP service: `POST /assess` (audio file + sentence) -> the `assess` schema, `GET /health`, `GET /`.

The model is loaded once and used by one worker thread only. Requests wait in a bounded queue;
those waiting together are assessed in one `predict` call (batching), and a full queue answers
503 at once instead of letting latency grow without bound. A batch that fails is retried one
request at a time, so only the request whose clip fails gets the error. Uploads stay in memory.
Optional: a bearer key, a per-client rate limit and CORS origins; the page and /health stay open.
"""

from __future__ import annotations

import asyncio
import hmac
import io
import logging
import math
import os
import queue
import threading
import time
from concurrent.futures import Future
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated

import numpy as np
import soundfile as sf
from fastapi import FastAPI, File, Form, HTTPException, UploadFile
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.formparsers import MultiPartParser

from pronlm.app.assess import assess_batch
from pronlm.app.lexicon import (
    SPARE_WORDS,
    WORDS_PER_SECOND,
    AssessError,
    Lexicon,
    check_text_fits,
    expected_words,
)
from pronlm.data.audio import SAMPLE_RATE, check_audio, check_complete, to_mono_16k
from pronlm.data.records import AudioError
from pronlm.errors import BackendError, PronlmError

log = logging.getLogger(__name__)

STATIC = Path(str(resources.files("pronlm.app") / "static"))
AUDIO_TYPES = ("application/octet-stream", "application/ogg", "video/ogg", "")  # besides audio/*
API_KEY_ENV = "PRONLM_API_KEY"
# Open without a key and never rate limited: the page (it asks for the key), /health, the API docs.
OPEN_PATHS = {"/", "/health", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}
OPEN_PREFIX = "/static/"
TEXT_HELP = (f"the sentence that was read, at most {WORDS_PER_SECOND} words a second of the recording plus "
             f"{SPARE_WORDS} (`pronlm assess` takes the same); left out: free speech, judged against the model's own "
             "transcript")
MAX_TRACKED_CLIENTS = 10_000  # rate-limit buckets kept before the full (idle) ones are forgotten


@dataclass(frozen=True)
class Limits:
    max_upload_bytes: int = 10 * 2**20  # a 30 s stereo 48 kHz 16-bit WAV is 5.8 MB
    max_audio_seconds: float = 30.0
    max_queue: int = 64  # requests waiting for the model; more get 503
    max_batch: int = 8  # requests assessed in one predict call


class QueueFull(Exception):
    pass


@dataclass
class _Job:
    samples: np.ndarray
    text: str | None  # None: free speech
    future: Future


def one_line(exc: BaseException, limit: int = 200) -> str:
    """`Type: first line of the message`, cut to `limit` characters: a reason for an HTTP answer."""
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return text if len(text) <= limit else text[:limit - 1] + "…"


class InferenceWorker:
    """One thread owns the predictor; requests waiting together are assessed as one batch."""

    def __init__(self, predictor, lexicon: Lexicon, max_queue: int, max_batch: int):
        self.predictor, self.lexicon, self.max_batch = predictor, lexicon, max_batch
        self.jobs: queue.Queue[_Job | None] = queue.Queue(maxsize=max_queue)
        self.batches = self.assessed = self.failed = 0
        self._thread = threading.Thread(target=self._run, name="pronlm-inference", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self.jobs.put(None)  # blocks only while the queue is full, i.e. until the worker takes one
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def submit(self, samples: np.ndarray, text: str | None) -> Future:
        job = _Job(samples, text, Future())
        try:
            self.jobs.put_nowait(job)
        except queue.Full:
            raise QueueFull from None
        return job.future

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            batch = [j for j in batch if j.future.set_running_or_notify_cancel()]  # False: cancelled while waiting
            if len(batch) > 1 and self._assessed_together(batch):
                continue
            for job in batch:  # alone, or one by one after the batch failed: one bad clip fails only itself
                self._assess_alone(job)

    def _assessed_together(self, batch: list[_Job]) -> bool:
        try:
            self._assess(batch)
        except BackendError as exc:  # the vLLM server failed: asking it again one by one would only wait again
            for job in batch:
                self._fail(job, exc)
            return True
        except Exception as exc:  # noqa: BLE001 - the batch is retried one request at a time
            log.warning("a batch of %d failed (%s); assessing its requests one at a time", len(batch), one_line(exc))
            return False
        return True

    def _assess(self, batch: list[_Job]) -> None:
        results = assess_batch(self.predictor, [(j.samples, j.text) for j in batch], self.lexicon,
                               batch_size=self.max_batch)
        self.batches += 1
        self.assessed += len(batch)
        for job, result in zip(batch, results):  # one result per item, by assess_batch's construction
            job.future.set_result(result)

    def _assess_alone(self, job: _Job) -> None:
        try:
            self._assess([job])
        except Exception as exc:  # noqa: BLE001 - reported to this request only, the worker goes on
            self._fail(job, exc)

    def _fail(self, job: _Job, exc: Exception) -> None:
        if isinstance(exc, BackendError):
            log.error("the inference backend failed: %s", exc)
        elif isinstance(exc, PronlmError):  # the clip's own problem, said in one line: no traceback
            log.warning("a clip of %.1f s was refused: %s", job.samples.size / SAMPLE_RATE, exc)
        else:
            log.error("inference failed for a clip of %.1f s", job.samples.size / SAMPLE_RATE, exc_info=exc)
        self.failed += 1
        job.future.set_exception(exc)

    def _next_batch(self) -> list[_Job] | None:
        """The next waiting job plus whatever else is already waiting, up to max_batch; None: stop."""
        first = self.jobs.get()
        if first is None:
            return None
        batch = [first]
        while len(batch) < self.max_batch:
            try:
                job = self.jobs.get_nowait()
            except queue.Empty:
                break
            if job is None:
                self.jobs.put(None)  # stop after this batch
                break
            batch.append(job)
        return batch


def inference_error(exc: Exception) -> HTTPException:
    """The answer for a request whose own clip failed in the model: 422 for a clip pronlm rejects, 502 for a
    failed vLLM server, else 500."""
    if isinstance(exc, AudioError):
        return HTTPException(422, exc.problem)
    if isinstance(exc, BackendError):  # the vLLM server behind this one failed
        return HTTPException(502, str(exc))
    if isinstance(exc, PronlmError):
        return HTTPException(422, str(exc))
    return HTTPException(500, f"inference failed for this clip ({one_line(exc)}); the server log has the details")


class RateLimiter:
    """Token bucket per client: bursts of up to `per_minute` requests, refilled at `per_minute` a minute."""

    def __init__(self, per_minute: int, clock=time.monotonic):
        self.per_minute, self.rate, self.clock = per_minute, per_minute / 60.0, clock
        self.buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, when counted)

    def take(self, client: str) -> float:
        """Spend one of `client`'s tokens: 0.0 when it had one, else the seconds until it will."""
        now = self.clock()
        if len(self.buckets) > MAX_TRACKED_CLIENTS:
            self._forget_full(now)
        tokens, when = self.buckets.get(client, (self.per_minute, now))
        tokens = min(self.per_minute, tokens + (now - when) * self.rate)
        if tokens >= 1:
            self.buckets[client] = (tokens - 1, now)
            return 0.0
        self.buckets[client] = (tokens, now)
        return (1 - tokens) / self.rate

    def _forget_full(self, now: float) -> None:
        """A full bucket is the same as none: drop those, so memory follows the clients of the last minute."""
        self.buckets = {c: (t, w) for c, (t, w) in self.buckets.items()
                        if t + (now - w) * self.rate < self.per_minute}


def _refusal(status: int, detail: str, headers: dict[str, str]) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def _is_open(scope) -> bool:
    """Not guarded: non-HTTP, a CORS preflight (browsers never send a key with one), an open path."""
    path = scope.get("path", "")
    return scope["type"] != "http" or scope["method"] == "OPTIONS" or path in OPEN_PATHS or path.startswith(OPEN_PREFIX)


class Guard:
    """ASGI middleware for every path but the open ones: the per-client rate limit, then the bearer key.

    Both answer before the body is read, so neither a flood nor a wrong key costs an upload.
    Keys are compared with `hmac.compare_digest` (constant time), so timing cannot reveal them.
    """

    def __init__(self, app, api_key: str | None, limiter: RateLimiter | None):
        self.app, self.limiter = app, limiter
        self.key = api_key.encode() if api_key else None

    async def __call__(self, scope, receive, send):
        refusal = None if _is_open(scope) else self._rate_refusal(scope) or self._key_refusal(scope)
        if refusal is not None:
            return await refusal(scope, receive, send)
        await self.app(scope, receive, send)

    def _rate_refusal(self, scope) -> JSONResponse | None:
        if self.limiter is None:
            return None
        wait = self.limiter.take((scope.get("client") or ("unknown",))[0])
        if wait <= 0:
            return None
        seconds = max(1, math.ceil(wait))
        return _refusal(429, f"rate limit: {self.limiter.per_minute} requests a minute per client; "
                             f"retry in {seconds} s", {"Retry-After": str(seconds)})

    def _key_refusal(self, scope) -> JSONResponse | None:
        if self.key is None:
            return None
        scheme, _, token = dict(scope["headers"]).get(b"authorization", b"").partition(b" ")
        if scheme.lower() != b"bearer" or not token.strip():
            return _refusal(401, "this server needs an API key: send the header 'Authorization: Bearer <key>'",
                            {"WWW-Authenticate": 'Bearer realm="pronlm"'})
        if not hmac.compare_digest(token.strip(), self.key):
            return _refusal(401, "wrong API key: ask whoever runs this server for the right one",
                            {"WWW-Authenticate": 'Bearer realm="pronlm", error="invalid_token"'})
        return None


class UploadLimit:
    """ASGI middleware: 413 for a request body over `max_bytes`, declared or streamed (chunked)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            response = JSONResponse({"detail": self._message(int(declared))}, status_code=413)
            return await response(scope, receive, send)  # answered before reading the body
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:  # FastAPI re-raises HTTPExceptions from body parsing
                raise HTTPException(413, self._message(received))
            return message

        await self.app(scope, limited_receive, send)

    def _message(self, size: int) -> str:
        return (f"upload of {size} bytes is over the limit of {self.max_bytes} bytes: send a shorter "
                "clip, or a compressed one (FLAC or OGG)")


def check_duration(seconds: float, name: str, max_seconds: float) -> None:
    """413 for a clip over the service's limit: the one length check, made before a clip is decoded or batched."""
    if seconds > max_seconds:
        raise HTTPException(413, f"audio {name!r} lasts {seconds:.1f} s, over the limit of {max_seconds:g} s: "
                                 "record one sentence at a time")


def decode_upload(data: bytes, name: str, max_seconds: float) -> np.ndarray:
    """An uploaded WAV/FLAC/OGG file, read from memory, as float32 mono 16 kHz samples."""
    try:
        check_complete(io.BytesIO(data), name, f"upload {name!r}")
    except AudioError as exc:
        raise HTTPException(422, exc.problem) from exc
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            check_duration(f.frames / f.samplerate, name, max_seconds)
            samples, rate = f.read(dtype="float32", always_2d=True), f.samplerate
    except (sf.LibsndfileError, RuntimeError, ValueError) as exc:
        reason = getattr(exc, "error_string", None) or str(exc)  # LibsndfileError's, without the BytesIO repr
        raise HTTPException(415, f"cannot decode {name!r} as WAV, FLAC or OGG audio ({reason}); "
                                 "convert it, e.g. to 16 kHz mono WAV") from exc
    try:
        return check_audio(to_mono_16k(samples, rate), name, f"upload {name!r}", None)
    except AudioError as exc:
        raise HTTPException(422, exc.problem) from exc


def _check_content_type(upload: UploadFile) -> None:
    kind = (upload.content_type or "").split(";")[0].strip().lower()
    if not (kind.startswith("audio/") or kind in AUDIO_TYPES):
        raise HTTPException(415, f"the 'audio' field of {upload.filename!r} has content type {kind!r}; "
                                 "send a WAV, FLAC or OGG file (audio/*)")


def _check_text(text: str, limits: Limits, lexicon: Lexicon) -> None:
    if not text.strip():
        raise HTTPException(422, "the form field 'text' is empty: send the sentence that was read")
    try:  # the rule `pronlm assess` applies, at the longest clip taken, before the text is normalised
        check_text_fits(len(text.split()), limits.max_audio_seconds)
        expected_words(text, lexicon)
    except AssessError as exc:
        raise HTTPException(422, str(exc)) from exc


def _check_text_fits(text: str, samples: np.ndarray, lexicon: Lexicon) -> None:
    """The text against the decoded clip's own length (`check_text_fits`, as `pronlm assess`)."""
    try:
        check_text_fits(len(expected_words(text, lexicon)), samples.size / SAMPLE_RATE)
    except AssessError as exc:
        raise HTTPException(422, str(exc)) from exc


async def _internal_error(request, exc: Exception) -> JSONResponse:
    """An error no check foresaw: 500 with a one-line reason; the traceback goes to the server log only."""
    return JSONResponse({"detail": f"internal error ({one_line(exc)}); the server log has the details"},
                        status_code=500)


def _add_middleware(app: FastAPI, limits: Limits, api_key: str | None, rate_limit: int,
                    cors_origins: tuple[str, ...]) -> None:
    """Outermost first: CORS (so refusals carry its headers too), the key and rate guard, the upload limit."""
    # Starlette spools a file part over `spool_max_size` (1 MB) to a temporary file on disk; with the
    # spool as large as the upload limit, an uploaded clip is never written to disk.
    MultiPartParser.spool_max_size = max(MultiPartParser.spool_max_size, limits.max_upload_bytes)
    app.add_middleware(UploadLimit, max_bytes=limits.max_upload_bytes)
    app.add_middleware(Guard, api_key=api_key, limiter=RateLimiter(rate_limit) if rate_limit > 0 else None)
    if cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization"])


def create_app(predictor, lexicon: Lexicon | None = None, max_upload_bytes: int = Limits.max_upload_bytes,
               max_audio_seconds: float = Limits.max_audio_seconds, max_queue: int = Limits.max_queue,
               max_batch: int = Limits.max_batch, api_key: str | None = None, rate_limit: int = 0,
               cors_origins: tuple[str, ...] = ()) -> FastAPI:
    """The service around an already loaded predictor (`pronlm.evaluation.predict.Predictor` or a test double).

    `api_key`: required as a bearer token on every path but the page and /health; `rate_limit`:
    requests a minute per client IP (0: none); `cors_origins`: web origins allowed to call the API.
    """
    limits = Limits(max_upload_bytes, max_audio_seconds, max_queue, max_batch)
    lexicon = lexicon or Lexicon()
    worker = InferenceWorker(predictor, lexicon, limits.max_queue, limits.max_batch)

    @asynccontextmanager
    async def lifespan(app):
        worker.start()
        yield
        await asyncio.to_thread(worker.stop)

    app = FastAPI(title="pronlm", lifespan=lifespan,
                  description="English pronunciation assessment: scores and per-word errors for one recording.")
    _add_middleware(app, limits, api_key, rate_limit, tuple(cors_origins))
    app.add_exception_handler(Exception, _internal_error)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.state.worker, app.state.limits = worker, limits

    @app.get("/", response_class=HTMLResponse)
    def page():
        return (STATIC / "index.html").read_text(encoding="utf-8")

    @app.get("/health")
    def health():
        body = {"status": "ok" if worker.alive else "inference worker stopped", "queued": worker.jobs.qsize(),
                "max_queue": limits.max_queue, "batches": worker.batches, "assessed": worker.assessed,
                "failed": worker.failed}
        return body if worker.alive else JSONResponse(body, status_code=503)

    @app.post("/assess")
    async def assess_upload(audio: Annotated[UploadFile, File(description="WAV, FLAC or OGG recording")],
                            text: Annotated[str | None, Form(description=TEXT_HELP)] = None):
        if text is not None:
            _check_text(text, limits, lexicon)
        _check_content_type(audio)
        samples = await asyncio.to_thread(decode_upload, await audio.read(), audio.filename or "upload",
                                          limits.max_audio_seconds)  # resampling off the event loop
        if text is not None:
            _check_text_fits(text, samples, lexicon)
        if not worker.alive:
            raise HTTPException(503, "the inference worker has stopped: see the server log and restart it")
        try:
            future = worker.submit(samples, text)
        except QueueFull:
            raise HTTPException(503, f"busy: {limits.max_queue} requests are already waiting; retry shortly",
                                headers={"Retry-After": "2"}) from None
        try:
            return await asyncio.wrap_future(future)
        except Exception as exc:  # noqa: BLE001 - this request's own clip failed in the model
            raise inference_error(exc) from exc

    return app


def serve(cfg, adapter: str | None = None, host: str = "127.0.0.1", port: int = 8000, lexicon: str | None = None,
          max_upload_bytes: int = Limits.max_upload_bytes, max_queue: int = Limits.max_queue,
          max_batch: int = Limits.max_batch, api_key: str | None = None, rate_limit: int = 0,
          cors_origins: tuple[str, ...] = ()) -> int:
    """`pronlm serve`: load the model `cfg` (and `adapter`) describe once, then answer HTTP requests until
    interrupted. The service's limits, key and origins are this invocation's (how it is deployed), not the
    model's: they change no answer, only which requests are taken.

    `api_key` None: the `PRONLM_API_KEY` environment variable, if set and not empty.
    """
    import uvicorn

    from pronlm.evaluation.predict import load_predictor

    api_key = api_key or os.environ.get(API_KEY_ENV) or None
    lex = Lexicon.load(lexicon)
    lex.phones("A")  # load CMUdict now rather than in the first request
    start = time.perf_counter()
    predictor = load_predictor(cfg, adapter)
    log.info("model %s%s loaded in %.1f s; serving on http://%s:%d", cfg.base,
             f" + {adapter}" if adapter else "", time.perf_counter() - start, host, port)
    _log_access(host, api_key, rate_limit, cors_origins)
    app = create_app(predictor, lex, max_upload_bytes, cfg.max_audio_seconds, max_queue, max_batch, api_key,
                     rate_limit, cors_origins)
    uvicorn.run(app, host=host, port=port, log_level="info")
    return 0


def _log_access(host: str, api_key: str | None, rate_limit: int, cors_origins: tuple[str, ...]) -> None:
    log.info("API key %s; rate limit %s; CORS origins: %s", "required" if api_key else "not required",
             f"{rate_limit} requests a minute per client" if rate_limit > 0 else "off",
             ", ".join(cors_origins) or "none")
    if not api_key and host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s without an API key: anyone who can reach it can use the model "
                    "(set %s or --api-key)", host, API_KEY_ENV)
