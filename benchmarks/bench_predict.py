"""Batched vs one-at-a-time generation on the tiny model (both tasks per clip), in one process,
and the audio padding `predict` saves by batching clips longest first.

    python benchmarks/bench_predict.py [--clips 16] [--batch-size 8] [--max-new-tokens 32]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from pronlm.config import Config
from pronlm.data.audio import load_audio
from pronlm.data.corpus import read_corpus
from pronlm.evaluation.predict import Predictor, clip_frames
from pronlm.model.collate import n_audio_tokens

AUDIO = Path(__file__).resolve().parents[2] / "shared/data/speechocean762-audio"


def rate(predictor, items, batch_size) -> float:
    t0 = time.perf_counter()
    predictor.predict(items, batch_size=batch_size)
    return len(items) / (time.perf_counter() - t0)


def audio_padding(frames: list[int], per_batch: int) -> float:
    """Share of the audio-token positions in batches of `per_batch` clips that are padding."""
    tokens = [n_audio_tokens(f) for f in frames]
    batches = [tokens[i:i + per_batch] for i in range(0, len(tokens), per_batch)]
    return 1 - sum(tokens) / sum(max(b) * len(b) for b in batches)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--corpus", default=str(AUDIO))
    p.add_argument("--clips", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=32)
    a = p.parse_args()
    utts = list(read_corpus(a.corpus, "test"))[:a.clips]
    items = [(u.id, load_audio(u.audio)) for u in utts]
    predictor = Predictor.load(Config(base="tiny", max_new_tokens=a.max_new_tokens))
    predictor.predict(items[:2], batch_size=a.batch_size)  # warm-up
    one = rate(predictor, items, 1)
    many = rate(predictor, items, a.batch_size)
    print(f"one at a time: {one:.2f} utterances/s; batch {a.batch_size}: {many:.2f} utterances/s; "
          f"ratio {many / one:.2f}x ({len(items)} clips, both tasks, {a.max_new_tokens} new tokens max)")
    frames = [clip_frames(u) for u in read_corpus(a.corpus, "test")]
    per_batch = max(1, a.batch_size // 2)
    print(f"audio padding, {len(frames)} clips, {per_batch} per batch: corpus order "
          f"{100 * audio_padding(frames, per_batch):.1f} %, longest first "
          f"{100 * audio_padding(sorted(frames, reverse=True), per_batch):.1f} %")


if __name__ == "__main__":
    main()
