"""The development split: a share of the training speakers held out (`dev_fraction`), drawn with the
run's seed and saved in the run, so the epoch can be chosen without the test set."""

from __future__ import annotations

import functools
import json
import random
from pathlib import Path

from pronlm.config import Config, ConfigError
from pronlm.data.corpus import read_corpus
from pronlm.run import DEV_SPEAKERS, Run


def pick_dev_speakers(speakers, fraction: float, seed: int) -> list[str]:
    """round(fraction x speakers), at least one, drawn with `seed`; sorted. Leaves at least one to train on."""
    pool = sorted(set(speakers))
    n = max(1, round(fraction * len(pool)))
    if n >= len(pool):
        raise ConfigError(f"dev_fraction {fraction} of {len(pool)} speakers leaves none to train on: lower it")
    return sorted(random.Random(seed).sample(pool, n))


@functools.lru_cache(maxsize=8)
def _speakers(corpus: str, split: str) -> tuple[str, ...]:
    return tuple(sorted({u.speaker for u in read_corpus(corpus, split, [])}))


def dev_speakers(cfg: Config) -> list[str]:
    """The speakers of `train_split` held out as the development split; [] when `dev_fraction` is 0."""
    if not cfg.dev_fraction:
        return []
    return pick_dev_speakers(_speakers(cfg.corpus, cfg.train_split), cfg.dev_fraction, cfg.seed)


def save_dev_speakers(cfg: Config, run: str | Path) -> None:
    """dev_speakers.json in the run: which speakers never trained, and how they were drawn.

    A run that already holds checkpoints (resumed) must keep the development split it started with.
    """
    from transformers.trainer_utils import get_last_checkpoint  # what `train --resume` resumes from

    path, speakers = Path(run) / DEV_SPEAKERS, dev_speakers(cfg)
    if Path(run).is_dir() and get_last_checkpoint(str(run)) is not None:
        before = Run(run).dev_speakers() if path.is_file() else []
        if before != speakers:
            raise ConfigError(f"{run} was trained so far with development speakers {before or 'none'}, this "
                              f"config holds out {speakers or 'none'}: resume with the run's own dev_fraction, "
                              "seed and corpus")
    if speakers:
        record = {"split": cfg.train_split, "fraction": cfg.dev_fraction, "seed": cfg.seed, "speakers": speakers}
        path.write_text(json.dumps(record, indent=2) + "\n")
    else:
        path.unlink(missing_ok=True)
