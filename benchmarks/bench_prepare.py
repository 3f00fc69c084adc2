"""Time `pronlm prepare` on the real SpeechOcean762 subsets and print the token budget per task.

    python benchmarks/bench_prepare.py [--data ../shared/data] [--repeat 5]

Throughput is the corpus pass only (read, validate audio, build targets, count tokens, write);
building the tiny tokenizer is timed apart.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from pronlm.data.prepare import prepare
from pronlm.model.collate import TokenCounter
from pronlm.model.load import load_tokenizer

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--repeat", type=int, default=5)
    a = p.parse_args()

    start = time.perf_counter()
    tokenizer = load_tokenizer("tiny")
    counter = lambda: TokenCounter(tokenizer, "tiny")  # noqa: E731 - a fresh count per run
    print(f"tiny tokenizer built in {time.perf_counter() - start:.1f} s")
    prepare(f"{a.data}/speechocean762", "test", tempfile.mkdtemp(), counter=counter())  # warm caches
    print(f"{'corpus':<22} {'split':<5} {'utts':>5} {'audio s':>8} {'best utts/s':>11} {'tokenized utts/s':>16}")
    for corpus in ("speechocean762", "speechocean762-audio"):
        for split in ("train", "test"):
            bare = [prepare(f"{a.data}/{corpus}", split, tempfile.mkdtemp()) for _ in range(a.repeat)]
            counted = [prepare(f"{a.data}/{corpus}", split, tempfile.mkdtemp(), counter=counter())
                       for _ in range(a.repeat)]
            best = max(s["utterances_per_second"] for s in bare)
            best_counted = max(s["utterances_per_second"] for s in counted)
            s = counted[0]
            print(f"{corpus:<22} {split:<5} {s['utterances']:>5} {s['audio_seconds']['total']:>8.1f} "
                  f"{best:>11.0f} {best_counted:>16.0f}")
            if corpus == "speechocean762" and split == "train":
                tokens = s["tokens"]
    print("\nmean tokens per example, real train subset, tiny tokenizer:")
    print(f"{'task':<5} {'prompt':>7} {'answer':>7} {'audio':>7} {'total':>7}")
    for task, t in tokens.items():
        print(f"{task:<5} {t['prompt']:>7} {t['answer']:>7} {t['audio']:>7} "
              f"{t['prompt'] + t['answer'] + t['audio']:>7.1f}")


if __name__ == "__main__":
    main()
