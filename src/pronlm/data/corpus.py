"""SpeechOcean762 readers: the corpus directory (Kaldi layout, `resource/scores.json`), the Hugging
Face copy `hf:mispeech/speechocean762` (its audio written to WAV files) or `synthetic` (the espeak-ng
corpus in the same layout, built once in the cache), all giving `Utterance` records, so everything
downstream deals with paths only."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Iterator

from pronlm.data.records import (
    CorpusError,
    LabelError,
    Utterance,
    UtteranceError,
    utterance_from_scores,
)
from pronlm.errors import read_json


SPLITS = ("train", "test")
HF_PREFIX = "hf:"
SYNTHETIC = "synthetic"  # the tiny-cpu recipe's corpus: it needs no download and no folder beside the clone


def read_corpus(source: str, split: str, errors: list[UtteranceError] | None = None) -> Iterator[Utterance]:
    """Yield the utterances of `split` from a corpus directory, `hf:<dataset id>` or `synthetic`.

    Utterances with broken labels are appended to `errors` (and skipped) when a list is
    given; otherwise the first one raises.
    """
    if split not in SPLITS:
        raise CorpusError(f"unknown split {split!r}: SpeechOcean762 has {', '.join(SPLITS)}")
    if source.startswith(HF_PREFIX):
        from pronlm.data.hf import read_hf  # optional dependency: `datasets`

        yield from read_hf(source[len(HF_PREFIX):], split, errors)
    elif source == SYNTHETIC:
        yield from read_kaldi_dir(synthetic_corpus(), split, errors)
    else:
        yield from read_kaldi_dir(Path(source), split, errors)


def synthetic_corpus() -> Path:
    """The espeak-ng corpus (`pronlm.data.synthetic`), synthesised into the cache on first use."""
    from pronlm.config import cache_dir
    from pronlm.data.synthetic import build_corpus

    root = cache_dir() / "synthetic-corpus"
    if not root.is_dir():  # built aside and renamed: a killed build or a second process leaves no half corpus
        tmp = build_corpus(root.with_name(f"{root.name}.{os.getpid()}.tmp"))
        try:
            tmp.rename(root)
        except OSError:  # another process got there first
            shutil.rmtree(tmp)
    return root


def read_kaldi_dir(root: Path, split: str, errors: list[UtteranceError] | None = None) -> Iterator[Utterance]:
    """Read the corpus's own layout: `<split>/{text,wav.scp,utt2spk}` and `resource/scores.json`."""
    if not root.is_dir():
        raise CorpusError(f"corpus folder {root} not found: give the SpeechOcean762 folder "
                          "or hf:mispeech/speechocean762")
    split_dir = root / split
    if not split_dir.is_dir():
        raise CorpusError(f"{root} has no {split}/ folder: expected the SpeechOcean762 layout "
                          "(WAVE/, train/, test/, resource/scores.json)")
    texts = _kaldi_map(split_dir / "text")
    wavs = _kaldi_map(split_dir / "wav.scp")
    speakers = _kaldi_map(split_dir / "utt2spk")
    scores_path = root / "resource" / "scores.json"
    scores = read_json(scores_path) if scores_path.is_file() else {}
    for utt_id in sorted(texts):
        wav = wavs.get(utt_id)
        audio = str(root / wav) if wav else None
        try:
            yield utterance_from_scores(utt_id, speakers.get(utt_id, ""), texts[utt_id], audio, scores.get(utt_id))
        except LabelError as exc:
            if errors is None:
                raise
            errors.append(exc)


def _kaldi_map(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise CorpusError(f"missing Kaldi file {path}")
    out = {}
    for line in path.read_text().splitlines():
        if line.strip():
            key, *value = line.split(None, 1)
            out[key] = value[0].strip() if value else ""
    return out
