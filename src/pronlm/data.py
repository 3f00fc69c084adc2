"""SpeechOcean762 readers and audio loading: corpus files in, typed `Utterance` records out.

Two sources give the same records: the corpus directory (Kaldi layout, `resource/scores.json`)
and the Hugging Face copy `hf:mispeech/speechocean762`, whose audio is written to WAV files so
everything downstream deals with paths only.
"""

from __future__ import annotations

import functools
import logging
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from pronlm.errors import PronlmError, read_json  # noqa: F401 - PronlmError is re-exported

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
SPLITS = ("train", "test")
HF_PREFIX = "hf:"
SILENCE_PEAK = 1e-4  # peak amplitude (full scale 1.0) under which a clip counts as silent
PAUSE_SECONDS = 0.5  # `speech_chunks`: a pause this long ends a piece (sentences, phrases; not words)
PIECE_PAD_SECONDS = 0.2  # silence kept on each side of a piece, as around a corpus clip


class CorpusError(PronlmError):
    """The corpus as a whole cannot be read (missing folder, unknown split)."""


class UtteranceError(PronlmError):
    """One utterance is unusable; batch jobs report it and go on."""

    def __init__(self, utt_id: str, problem: str):
        super().__init__(f"utterance {utt_id}: {problem}")
        self.utt_id = utt_id
        self.problem = problem


class AudioError(UtteranceError):
    """Audio missing, unreadable, truncated, empty, silent or too long."""


class LabelError(UtteranceError):
    """An annotation in scores.json is missing or inconsistent."""


@dataclass(frozen=True)
class Mispronunciation:
    index: int
    canonical_phone: str
    pronounced_phone: str  # ARPAbet phone, "<DEL>", "<unk>", or "X*" (accented, non-categorical)


@dataclass(frozen=True)
class Word:
    text: str
    canonical_phones: tuple[str, ...]  # as annotated, stress digits kept (e.g. "EY0")
    phone_accuracies: tuple[float, ...] = ()
    mispronunciations: tuple[Mispronunciation, ...] = ()
    accuracy: float | None = None
    stress: float | None = None
    total: float | None = None


@dataclass(frozen=True)
class ApaScores:
    """Sentence scores 0-10. Completeness is read but never a training target (SPEC §1)."""

    accuracy: int
    fluency: int
    prosodic: int
    total: int
    completeness: float | None = None

    ASPECTS = ("accuracy", "fluency", "prosodic", "total")

    def as_dict(self) -> dict[str, int]:
        return {a: getattr(self, a) for a in self.ASPECTS}


@dataclass(frozen=True)
class Utterance:
    id: str
    speaker: str
    text: str
    audio: str | None  # path of a WAV file
    scores: ApaScores | None = None
    words: tuple[Word, ...] = field(default_factory=tuple)

    @property
    def labelled(self) -> bool:
        return self.scores is not None and bool(self.words)


# ---------------------------------------------------------------- audio


def load_audio(path: str | Path, utt_id: str = "?", max_seconds: float | None = None) -> np.ndarray:
    """Read a clip as float32 mono 16 kHz; resample or down-mix anything else.

    Raises `AudioError` naming the utterance for a missing, unreadable, truncated, empty, silent
    or over-long clip, so that a batch job can report it and skip it.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(utt_id, f"audio file not found: {path}")
    try:
        with path.open("rb") as f:
            check_complete(f, utt_id, str(path))
        samples, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError, OSError) as exc:
        raise AudioError(utt_id, f"cannot read audio {path}: {exc}") from exc
    if samples.size == 0:
        raise AudioError(utt_id, f"audio {path} is empty (0 samples)")
    return check_audio(to_mono_16k(samples, rate), utt_id, str(path), max_seconds)


def check_complete(f: BinaryIO, utt_id: str, where: str) -> None:
    """Raise `AudioError` when a WAV file holds fewer bytes of samples than its header promises.

    libsndfile reads such a file as a shorter clip without a word (its frame count is already
    cut to what is there), so the RIFF header's `data` chunk size is checked against the file's
    size. Other formats pass: a cut FLAC or OGG fails to decode. `f` is a binary file or BytesIO.
    """
    size = f.seek(0, 2)
    f.seek(0)
    head = f.read(12)
    if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or head[8:] != b"WAVE":
        return
    order = "<" if head[:4] == b"RIFF" else ">"
    pos, bytes_per_second = 12, 0
    while pos + 8 <= size:
        f.seek(pos)
        chunk, length = struct.unpack(order + "4sI", f.read(8))
        fmt = f.read(12) if chunk == b"fmt " else b""
        if len(fmt) == 12:
            bytes_per_second = struct.unpack(order + "HHII", fmt)[3]
        if chunk == b"data":
            held = size - pos - 8
            if length in (0, 0xFFFFFFFF) or held >= length:  # 0 / 0xFFFFFFFF: size not known (a stream, RF64)
                return
            promised = f"{length / bytes_per_second:.2f} s" if bytes_per_second else f"{length} bytes"
            held_text = f"{held / bytes_per_second:.2f} s" if bytes_per_second else f"{held} bytes"
            raise AudioError(utt_id, f"audio {where} is truncated: its header promises {promised} of samples but "
                                     f"the file holds {held_text} (cut short while recording or copying?)")
        pos += 8 + length + (length & 1)  # chunks are padded to an even size


def speech_chunks(samples: np.ndarray, max_seconds: float) -> list[tuple[int, int]]:
    """(start, end) sample spans of the speech in a 16 kHz clip, cut at pauses, none over `max_seconds`.

    Silero VAD, a small neural voice-activity detector (its weights ship in the `silero-vad` wheel,
    it needs only torch, which pronlm has anyway), finds the speech; a pause of `PAUSE_SECONDS`
    ends a piece. Speech longer than `max_seconds` without such a pause is cut at its longest
    pause over 0.1 s, else just before the limit (Silero's `max_speech_duration_s`).
    """
    import torch

    get_speech_timestamps, model = _silero()
    spans = get_speech_timestamps(torch.from_numpy(np.ascontiguousarray(samples, np.float32)), model,
                                  sampling_rate=SAMPLE_RATE, min_silence_duration_ms=int(PAUSE_SECONDS * 1000),
                                  speech_pad_ms=int(PIECE_PAD_SECONDS * 1000), max_speech_duration_s=max_seconds)
    return [(s["start"], s["end"]) for s in spans]


@functools.lru_cache(maxsize=1)
def _silero():
    """Silero's `get_speech_timestamps` and its model, loaded once."""
    import warnings

    import torch

    threads = torch.get_num_threads()
    try:
        import silero_vad
    finally:  # importing silero_vad calls torch.set_num_threads(1) for the whole process (its model.py)
        torch.set_num_threads(threads)
    with warnings.catch_warnings():  # its weights are TorchScript: "torch.jit.load is deprecated"
        warnings.simplefilter("ignore", DeprecationWarning)
        return silero_vad.get_speech_timestamps, silero_vad.load_silero_vad()


def to_mono_16k(samples: np.ndarray, rate: int) -> np.ndarray:
    """[frames, channels] at any rate -> float32 mono at 16 kHz (channels averaged, polyphase resampling)."""
    samples = samples.mean(axis=1)
    if rate != SAMPLE_RATE:
        g = np.gcd(int(rate), SAMPLE_RATE)
        samples = resample_poly(samples, SAMPLE_RATE // g, int(rate) // g)
    return samples.astype(np.float32)


def check_audio(samples: np.ndarray, utt_id: str, where: str, max_seconds: float | None) -> np.ndarray:
    """Reject empty, silent and over-long 16 kHz clips with a specific message."""
    if samples.size < 400:  # shorter than one 25 ms analysis window: no feature frame at all
        raise AudioError(utt_id, f"audio {where} is too short ({samples.size} samples at 16 kHz)")
    peak = float(np.abs(samples).max())
    if peak < SILENCE_PEAK:
        raise AudioError(utt_id, f"audio {where} is silent (peak amplitude {peak:.2g})")
    seconds = samples.size / SAMPLE_RATE
    if max_seconds is not None and seconds > max_seconds:
        raise AudioError(
            utt_id, f"audio {where} lasts {seconds:.1f} s, over the maximum of {max_seconds:g} s "
            "(raise max_audio_seconds to keep it)"
        )
    return samples


# ---------------------------------------------------------------- readers


def read_corpus(source: str, split: str, errors: list[UtteranceError] | None = None) -> Iterator[Utterance]:
    """Yield the utterances of `split` from a corpus directory or `hf:<dataset id>`.

    Utterances with broken labels are appended to `errors` (and skipped) when a list is
    given; otherwise the first one raises.
    """
    if split not in SPLITS:
        raise CorpusError(f"unknown split {split!r}: SpeechOcean762 has {', '.join(SPLITS)}")
    if source.startswith(HF_PREFIX):
        from pronlm.hf import read_hf  # optional dependency: `datasets`

        yield from read_hf(source[len(HF_PREFIX):], split, errors)
    else:
        yield from read_kaldi_dir(Path(source), split, errors)


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


_SENTENCE_FIELDS = ("accuracy", "fluency", "prosodic", "total", "words")
_WORD_FIELDS = ("text", "phones")


def utterance_from_scores(utt_id: str, speaker: str, text: str, audio: str | None, entry: dict | None) -> Utterance:
    """Build an `Utterance` from one scores.json entry (or none: unlabelled audio)."""
    if entry is None:
        return Utterance(utt_id, speaker, text, audio)
    missing = [f for f in _SENTENCE_FIELDS if f not in entry]
    if missing:
        raise LabelError(utt_id, f"scores.json entry lacks {', '.join(missing)}")
    words = tuple(_word(utt_id, i, w) for i, w in enumerate(entry["words"]))
    scores = ApaScores(
        accuracy=_score(entry["accuracy"]), fluency=_score(entry["fluency"]),
        prosodic=_score(entry["prosodic"]), total=_score(entry["total"]),
        completeness=entry.get("completeness"),
    )
    return Utterance(utt_id, speaker, entry.get("text", text), audio, scores, words)


def _score(value) -> int:
    return int(round(float(value)))


def _word(utt_id: str, position: int, w: dict) -> Word:
    missing = [f for f in _WORD_FIELDS if f not in w]
    if missing:
        raise LabelError(utt_id, f"word {position} in scores.json lacks {', '.join(missing)}")
    phones = tuple(w["phones"])
    accuracies = tuple(float(a) for a in w.get("phones-accuracy", ()))
    if accuracies and len(accuracies) != len(phones):
        raise LabelError(utt_id, f"word {position} {w['text']!r}: {len(phones)} phones but "
                                 f"{len(accuracies)} phone accuracies")
    mis = []
    for m in w.get("mispronunciations") or ():  # absent in the corpus files, [] in the HF copy
        index = int(m["index"])
        if not 0 <= index < len(phones):
            raise LabelError(utt_id, f"word {position} {w['text']!r}: mispronunciation index {index} "
                                     f"out of range for {len(phones)} phones")
        mis.append(Mispronunciation(index, m["canonical-phone"], m["pronounced-phone"]))
    return Word(w["text"], phones, accuracies, tuple(mis), w.get("accuracy"), w.get("stress"), w.get("total"))
