"""The HTTP service: real uvicorn on loopback, once with the real tiny model (`pronlm serve`
in a subprocess) and for the fast cases with a test double predictor in this process."""

from __future__ import annotations

import io
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

from tests.test_assess import check_schema

REPO = Path(__file__).resolve().parents[1]
CLIP = ("WAVE/SPEAKER0001/000010011.WAV", "WE CALL IT BEAR")
START_TIMEOUT_S = 180  # importing torch + building the tiny model takes ~15 s on 2 cores


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, alive, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError("the server exited while starting")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"{url}/health did not answer within {timeout} s")


# `pronlm serve`'s function with the random tiny model. Its answers are cut at 32 tokens: it rambles
# on to the limit, and 40 answers of 256 tokens take minutes on 2 cores.
SERVE = ["-m", "pronlm.cli", "serve", "--base", "tiny", "--max-new-tokens", "32", "--port"]


@contextmanager
def pronlm_server(log_path: Path):
    """The real service and tiny model in a subprocess on a free loopback port; always terminated."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, *SERVE, str(port)], stdout=log, stderr=subprocess.STDOUT,
                                cwd=REPO)
        try:
            try:
                wait_healthy(url, lambda: proc.poll() is None, START_TIMEOUT_S)
            except (RuntimeError, TimeoutError) as exc:
                raise RuntimeError(f"{exc}; server log:\n{log_path.read_text()[-3000:]}") from exc
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)


@contextmanager
def inprocess_server(app):
    """A real uvicorn server for `app` on a free loopback port, in a thread of this process."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_healthy(f"http://127.0.0.1:{port}", thread.is_alive, 30)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def wav_bytes(samples: np.ndarray, rate: int = 16000) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def tone(seconds: float, rate: int = 16000, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    wave = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    return np.stack([wave] * channels, axis=1) if channels > 1 else wave


def post(url: str, audio: bytes, text: str = CLIP[1], name: str = "clip.wav", content_type: str = "audio/wav",
         timeout: float = 120) -> httpx.Response:
    return httpx.post(f"{url}/assess", files={"audio": (name, audio, content_type)}, data={"text": text},
                      timeout=timeout)


class CannedPredictor:
    """Test double of `pronlm.infer.Predictor`: one fixed answer (CALL said as K AA L), batch sizes logged.

    `gate`, when given, holds every predict call until it is set (to fill the queue)."""

    def __init__(self, delay: float = 0.0, gate: threading.Event | None = None, ok: bool = True,
                 phones: str = "W IY K AA L IH T B EH R", words: str = "WE CALL IT BEAR"):
        self.delay, self.gate, self.ok, self.phones, self.words = delay, gate, ok, phones, words
        self.batches: list[int] = []
        self.samples: list[np.ndarray] = []
        self.started = threading.Event()

    def predict(self, items, tasks=("apa", "mdd"), batch_size=8):
        self.batches.append(len(items))
        self.samples += [s for _, s in items]
        self.started.set()
        if self.gate is not None:
            self.gate.wait(timeout=30)
        time.sleep(self.delay)
        out = []
        for item_id, _ in items:
            scores = {"accuracy": 7, "fluency": 8, "prosodic": 8, "total": 7} if self.ok else None
            error = None if self.ok else "no JSON object or key: value pairs found in the answer"
            out.append({"id": item_id, "task": "apa", "raw": "", "ok": self.ok, "error": error, "scores": scores})
            out.append({"id": item_id, "task": "mdd", "raw": "", "ok": self.ok, "error": error,
                        "word_transcript": self.words if self.ok else "",
                        "phoneme_transcript": self.phones if self.ok else ""})
        return out


# ---------------------------------------------------------------- the real service, tiny model


@pytest.fixture(scope="module")
def tiny_server(tmp_path_factory):
    with pronlm_server(tmp_path_factory.mktemp("serve") / "server.log") as url:
        yield url


def test_health_and_page(tiny_server):
    health = httpx.get(f"{tiny_server}/health").json()
    assert health["status"] == "ok" and health["max_queue"] >= 20
    page = httpx.get(f"{tiny_server}/")
    assert page.status_code == 200 and "<title>pronlm" in page.text
    assert httpx.get(f"{tiny_server}/static/app.js").status_code == 200


def test_real_clip_gives_the_schema(tiny_server, corpus_dir):
    response = post(tiny_server, (corpus_dir / CLIP[0]).read_bytes(), name="000010011.WAV")
    assert response.status_code == 200, response.text
    result = response.json()
    check_schema(result)
    assert result["text"] == CLIP[1]
    assert [w["word"] for w in result["words"] if w["error_type"] != "Insertion"] == CLIP[1].split()


def test_twenty_concurrent_requests_are_all_answered(tiny_server, corpus_dir):
    clip = (corpus_dir / CLIP[0]).read_bytes()
    before = httpx.get(f"{tiny_server}/health").json()
    start = time.perf_counter()
    with ThreadPoolExecutor(20) as pool:
        responses = list(pool.map(lambda _: post(tiny_server, clip), range(20)))
    elapsed = time.perf_counter() - start
    assert [r.status_code for r in responses] == [200] * 20, [r.text[:200] for r in responses if r.status_code != 200]
    for r in responses:
        check_schema(r.json())
    after = httpx.get(f"{tiny_server}/health").json()
    batches = after["batches"] - before["batches"]
    assert after["assessed"] - before["assessed"] == 20 and batches < 20  # requests waiting together were batched
    print(f"tiny model: 20 concurrent requests in {elapsed:.2f} s ({20 / elapsed:.1f}/s) in {batches} batches")


def test_oversize_upload_is_413(tiny_server):
    response = post(tiny_server, b"\0" * (11 * 2**20))
    assert response.status_code == 413
    assert "over the limit" in response.json()["detail"]


def test_text_file_is_415_naming_the_content_type(tiny_server):
    response = post(tiny_server, b"hello, not audio", name="notes.txt", content_type="text/plain")
    assert response.status_code == 415
    assert "text/plain" in response.json()["detail"]


def test_undecodable_audio_is_415_with_the_reason(tiny_server):
    response = post(tiny_server, b"RIFF not really a wave file" * 10, name="broken.wav",
                    content_type="application/octet-stream")
    assert response.status_code == 415
    assert "cannot decode 'broken.wav'" in response.json()["detail"]


def test_empty_text_is_422(tiny_server):
    response = post(tiny_server, wav_bytes(tone(1.0)), text="  ")
    assert response.status_code == 422
    assert "'text' is empty" in response.json()["detail"]


# ---------------------------------------------------------------- fast cases, test double


def test_concurrent_requests_are_all_answered_and_batched():
    from pronlm.serve import create_app

    predictor = CannedPredictor(delay=0.2)
    clip = wav_bytes(tone(1.0))
    with inprocess_server(create_app(predictor)) as url:
        start = time.perf_counter()
        with ThreadPoolExecutor(20) as pool:
            responses = list(pool.map(lambda _: post(url, clip, timeout=60), range(20)))
        elapsed = time.perf_counter() - start
    assert [r.status_code for r in responses] == [200] * 20
    for r in responses:
        check_schema(r.json())
        assert [w["error_type"] for w in r.json()["words"]] == ["None", "Mispronunciation", "None", "None"]
    assert sum(predictor.batches) == 20 and max(predictor.batches) > 1, predictor.batches
    print(f"20 concurrent requests in {elapsed:.2f} s ({20 / elapsed:.1f}/s), batches {predictor.batches}")


def test_full_queue_is_503():
    from pronlm.serve import create_app

    gate = threading.Event()
    predictor = CannedPredictor(gate=gate)
    clip = wav_bytes(tone(1.0))
    with inprocess_server(create_app(predictor, max_queue=2, max_batch=1)) as url, ThreadPoolExecutor(3) as pool:
        try:
            first = pool.submit(post, url, clip, timeout=60)
            assert predictor.started.wait(timeout=30), "the worker never took the first request"
            waiting = [pool.submit(post, url, clip, timeout=60) for _ in range(2)]
            deadline = time.monotonic() + 30
            while httpx.get(f"{url}/health").json()["queued"] < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            rejected = post(url, clip)
        finally:
            gate.set()
        assert rejected.status_code == 503 and rejected.headers["retry-after"]
        assert "busy" in rejected.json()["detail"]
        assert [f.result().status_code for f in [first, *waiting]] == [200, 200, 200]


def test_too_long_and_silent_audio_are_rejected_before_inference():
    from pronlm.serve import create_app

    predictor = CannedPredictor()
    with inprocess_server(create_app(predictor, max_audio_seconds=2)) as url:
        too_long = post(url, wav_bytes(tone(3.0)))
        silent = post(url, wav_bytes(np.zeros(16000, np.float32)))
    assert too_long.status_code == 413 and "lasts 3.0 s" in too_long.json()["detail"]
    assert silent.status_code == 422 and "silent" in silent.json()["detail"]
    assert predictor.batches == []


def test_stereo_44k_upload_is_resampled_to_16k_mono():
    from pronlm.serve import create_app

    predictor = CannedPredictor()
    with inprocess_server(create_app(predictor)) as url:
        response = post(url, wav_bytes(tone(1.5, rate=44100, channels=2), rate=44100))
    assert response.status_code == 200, response.text
    assert predictor.samples[0].ndim == 1 and predictor.samples[0].shape[0] == 24000


def test_failed_answers_still_give_the_schema():
    from pronlm.serve import create_app

    with inprocess_server(create_app(CannedPredictor(ok=False))) as url:
        result = post(url, wav_bytes(tone(1.0))).json()
    check_schema(result)
    assert result["scores"] is None and {e["task"] for e in result["errors"]} == {"apa", "mdd"}
