"""Tiny-model training throughput with and without length-grouped batches, padding share, peak memory.

    python benchmarks/bench_train.py [--corpus ../shared/data/speechocean762] [--steps 40]

Both settings run in this one process, one after the other, so their ratio is the number to read.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import torch

from pronlm.config import load_config
from pronlm.model.adapters import prepare_for_training
from pronlm.model.load import load_model
from pronlm.model.train import make_trainer


def padding_share(trainer, batches: int) -> float:
    """Share of the token positions in the batches the trainer will see that are padding."""
    loader = trainer.get_train_dataloader()
    pad = total = 0
    for i, batch in enumerate(loader):
        if i == batches:
            break
        pad += int((batch["attention_mask"] == 0).sum())
        total += batch["attention_mask"].numel()
    return pad / total


def run(corpus: str, steps: int, group: bool) -> dict:
    with tempfile.TemporaryDirectory() as out:
        cfg = load_config("tiny-cpu", dict(corpus=corpus, output_dir=out, max_steps=steps, save_strategy="no",
                                           group_by_length=group, per_device_train_batch_size=8,
                                           apa_template="default", mdd_template="default",  # the paper's lengths
                                           logging_steps=steps))
        model, tok = load_model(cfg, training=True)
        trainer = make_trainer(cfg, prepare_for_training(cfg, model, tok), tok)
        share = padding_share(trainer, steps)
        t0 = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - t0
    return {"group_by_length": group, "examples_per_s": steps * 8 / seconds, "padding_share": share}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--corpus", default=str(Path(__file__).resolve().parents[2] / "shared/data/speechocean762"))
    p.add_argument("--steps", type=int, default=40)
    a = p.parse_args()
    torch.manual_seed(0)
    run(a.corpus, 5, True)  # warm-up: first-call costs (allocator, kernels) would land on the first setting
    rows = [run(a.corpus, a.steps, g) for g in (False, True)]
    for r in rows:
        print(f"group_by_length={r['group_by_length']!s:5}  {r['examples_per_s']:7.1f} examples/s  "
              f"padding {100 * r['padding_share']:5.1f} %")
    print(f"ratio grouped/random: {rows[1]['examples_per_s'] / rows[0]['examples_per_s']:.2f}x")
    print(f"peak resident memory: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
