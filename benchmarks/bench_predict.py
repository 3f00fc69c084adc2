"""Batched vs one-at-a-time generation on the tiny model (both tasks per clip), in one process.

    python benchmarks/bench_predict.py [--clips 16] [--batch-size 8] [--max-new-tokens 32]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from pronlm.data import load_audio, read_corpus
from pronlm.infer import Predictor

AUDIO = Path(__file__).resolve().parents[2] / "shared/data/speechocean762-audio"


def rate(predictor, items, batch_size) -> float:
    t0 = time.perf_counter()
    predictor.predict(items, batch_size=batch_size)
    return len(items) / (time.perf_counter() - t0)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--corpus", default=str(AUDIO))
    p.add_argument("--clips", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=32)
    a = p.parse_args()
    utts = list(read_corpus(a.corpus, "test"))[:a.clips]
    items = [(u.id, load_audio(u.audio)) for u in utts]
    predictor = Predictor.load("tiny", max_new_tokens=a.max_new_tokens)
    predictor.predict(items[:2], batch_size=a.batch_size)  # warm-up
    one = rate(predictor, items, 1)
    many = rate(predictor, items, a.batch_size)
    print(f"one at a time: {one:.2f} utterances/s; batch {a.batch_size}: {many:.2f} utterances/s; "
          f"ratio {many / one:.2f}x ({len(items)} clips, both tasks, {a.max_new_tokens} new tokens max)")


if __name__ == "__main__":
    main()
