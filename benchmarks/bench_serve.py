"""Throughput and latency of the HTTP service under concurrent requests.

    python benchmarks/bench_serve.py [--base tiny] [--adapter DIR] [--requests 20] [--concurrency 20]
                                     [--max-new-tokens 32] [--max-batch 8] [--clip WAV --text "..."]

Starts the real service (`pronlm.app.serve.serve`, uvicorn on a free loopback port) in a subprocess,
sends the clip from that many threads at once, and prints requests/s, latency percentiles and the
batches the worker formed. Default clip: SpeechOcean762 000010011 from ../shared/data. The random
tiny model rambles up to the token limit, so --max-new-tokens sets its cost.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx

CLIP = Path(__file__).resolve().parents[2] / "shared/data/speechocean762/WAVE/SPEAKER0001/000010011.WAV"
SERVE = "import sys; from pronlm.cli import main; sys.exit(main(sys.argv[1:]))"


@contextmanager
def running(options: list[str], start_timeout: float = 300):
    """`pronlm serve OPTIONS` in a subprocess on a free loopback port; always terminated."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-c", SERVE, "serve", *options, "--host", "127.0.0.1", "--port", str(port)])
    try:
        deadline = time.monotonic() + start_timeout
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.25)
        else:
            raise RuntimeError(f"the service did not start within {start_timeout} s")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def timed_post(url: str, audio: bytes, text: str) -> tuple[int, float]:
    start = time.perf_counter()
    r = httpx.post(f"{url}/assess", files={"audio": ("clip.wav", audio, "audio/wav")}, data={"text": text},
                   timeout=600)
    return r.status_code, time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", default="tiny")
    p.add_argument("--adapter", default=None)
    p.add_argument("--requests", type=int, default=20)
    p.add_argument("--concurrency", type=int, default=20)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--clip", default=str(CLIP))
    p.add_argument("--text", default="WE CALL IT BEAR")
    a = p.parse_args()

    audio = Path(a.clip).read_bytes()
    options = ["--max-new-tokens", str(a.max_new_tokens), "--max-batch", str(a.max_batch),
               "--max-queue", str(max(64, a.requests))]
    options += ["--adapter", a.adapter] if a.adapter else ["--base", a.base]
    with running(options) as url:
        timed_post(url, audio, a.text)  # warm-up: first-call allocations
        before = httpx.get(f"{url}/health").json()
        start = time.perf_counter()
        with ThreadPoolExecutor(a.concurrency) as pool:
            results = list(pool.map(lambda _: timed_post(url, audio, a.text), range(a.requests)))
        elapsed = time.perf_counter() - start
        after = httpx.get(f"{url}/health").json()
    codes = [c for c, _ in results]
    latencies = sorted(t for _, t in results)
    print(f"{a.requests} requests, {a.concurrency} at once, base {a.base}, max_new_tokens {a.max_new_tokens}, "
          f"max_batch {a.max_batch}")
    print(f"status codes: {dict((c, codes.count(c)) for c in sorted(set(codes)))}")
    print(f"{elapsed:.2f} s, {a.requests / elapsed:.2f} requests/s, {after['batches'] - before['batches']} batches")
    print(f"latency p50 {statistics.median(latencies):.2f} s, "
          f"p95 {latencies[max(0, round(0.95 * len(latencies)) - 1)]:.2f} s, max {latencies[-1]:.2f} s")


if __name__ == "__main__":
    main()
