"""Audio in: clips read, checked and resampled to 16 kHz mono float32; long recordings cut at pauses."""

from __future__ import annotations

import functools
import struct
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from pronlm.data.records import AudioError


SAMPLE_RATE = 16_000
SILENCE_PEAK = 1e-4  # peak amplitude (full scale 1.0) under which a clip counts as silent
PAUSE_SECONDS = 0.5  # `speech_chunks`: a pause this long ends a piece (sentences, phrases; not words)
PIECE_PAD_SECONDS = 0.2  # silence kept on each side of a piece, as around a corpus clip


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
