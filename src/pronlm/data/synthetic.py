"""A synthetic corpus in the SpeechOcean762 layout, spoken by espeak-ng: for the demo and for tests.

espeak-ng reads each sentence in several voices and rates, and some readings swap a word for a
near-homophone ("THINK" -> "SINK", "CARD" -> "CAR"); the labels are the sentence's CMUdict phones
with the swap written as SpeechOcean762 `mispronunciations` (a substituted or deleted phone at its
index), so the heard phones are those of what was said. espeak-ng's own pronunciation differs from
CMUdict's here and there: that is label noise. The labels are pure functions of the plan; only
`synthesise` and `build_corpus` touch the disk and the espeak-ng binary.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf

from pronlm.data.audio import SAMPLE_RATE, load_audio
from pronlm.data.targets import DELETED, cmudict_entries, strip_stress
from pronlm.errors import PronlmError

# Sentences and the near-homophones a reading may swap in, one phone apart: substitutions common
# among Mandarin-L1 learners, SpeechOcean762's speakers (TH->S/T, R->L, IH->IY, AE->EH, V->B,
# a dropped final D).
SENTENCES = (
    ("I THINK THE ROAD IS RIGHT", {"THINK": "SINK", "ROAD": "LOAD", "RIGHT": "LIGHT"}),
    ("THE SHIP IS VERY BIG", {"SHIP": "SHEEP", "VERY": "BERRY", "BIG": "BEG"}),
    ("MY CAT LIKES HOT FOOD", {"CAT": "CUT", "HOT": "HAT"}),
    ("WE ATE FRIED RICE", {"FRIED": "FLIED", "RICE": "LICE"}),
    ("HE TOLD ME A BAD JOKE", {"TOLD": "TOLL", "BAD": "BED"}),
    ("PLEASE SIT ON THE BOAT", {"SIT": "SEAT", "BOAT": "VOTE"}),
    ("THANK YOU FOR THE SOUP", {"THANK": "TANK", "SOUP": "SOAP"}),
    ("THE RED CARD IS MINE", {"RED": "LED", "CARD": "CAR"}),
)
# (espeak-ng voice, pitch 0-99, usual words per minute); the last TEST_SPEAKERS form the test split.
SPEAKERS = (("en-us+m1", 40, 160), ("en-us+f2", 60, 175), ("en-us+m3", 35, 185), ("en-us+f3", 70, 150),
            ("en-us+m7", 50, 170), ("en-us+f4", 55, 180), ("en-us+m2", 45, 165), ("en-us+f5", 65, 175))
TEST_SPEAKERS = 2
RATE_FACTORS = (0.6, 0.8, 1.0, 1.0, 1.2, 1.45)  # per reading: slow, hesitant, normal, hurried
ERROR_COUNTS = (0, 0, 1, 1, 2, 3)  # swapped words per reading, at most the sentence's candidates
NORMAL_WPM = 170


class SynthesisError(PronlmError):
    """The synthetic corpus cannot be made (no espeak-ng, or it failed)."""


@dataclass(frozen=True)
class Reading:
    """One planned utterance: who reads which sentence, how fast, and which words are swapped."""

    id: str
    speaker: str
    split: str
    text: str
    said: str
    voice: str
    pitch: int
    wpm: int


def cmu_phones(word: str) -> list[str]:
    """CMUdict's first pronunciation, stress digits kept as SpeechOcean762 keeps them."""
    return list(cmudict_entries()[word.lower()][0])


def mispronunciations(canonical: list[str], said: list[str]) -> list[dict]:
    """SpeechOcean762 entries turning `canonical` into `said`: substitutions, or one deleted phone.

    Stress is ignored. The corpus annotates no insertions, so neither do we.
    """
    plain, heard = [strip_stress(p) for p in canonical], [strip_stress(p) for p in said]
    if len(plain) == len(heard):
        return [{"canonical-phone": c, "index": i, "pronounced-phone": h}
                for i, (c, h) in enumerate(zip(plain, heard)) if c != h]
    if len(heard) == len(plain) - 1:
        for i in range(len(plain)):
            if plain[:i] + plain[i + 1:] == heard:
                return [{"canonical-phone": plain[i], "index": i, "pronounced-phone": DELETED}]
    raise ValueError(f"{' '.join(said)} is neither substitutions nor one deletion of {' '.join(canonical)}")


def synthetic_scores(phone_errors: int, wpm: int) -> dict[str, int]:
    """Sentence scores by a fixed rule, a synthetic stand-in for human ratings:

    accuracy = 10 - 2 per mispronounced phone; fluency = 10 - 1 per 20 words per minute away from
    170 wpm (espeak-ng's rate, so pauses and rhythm are not modelled); prosodic = 10 - 1 per 15 wpm
    away from 170; total = half accuracy plus a quarter each of fluency and prosodic; each rounded
    half up and kept within 0-10.
    """
    def clip(x: float) -> int:
        return max(0, min(10, math.floor(x + 0.5)))

    off = abs(wpm - NORMAL_WPM)
    accuracy, fluency, prosodic = clip(10 - 2 * phone_errors), clip(10 - off / 20), clip(10 - off / 15)
    return {"accuracy": accuracy, "completeness": 10, "fluency": fluency, "prosodic": prosodic,
            "total": clip(0.5 * accuracy + 0.25 * fluency + 0.25 * prosodic)}


def word_entry(word: str, said: str) -> dict:
    """A scores.json word: CMUdict phones, phone accuracy 2 (right) or 0 (wrong, as the corpus marks
    annotated errors), word accuracy 10 - 4 per wrong phone, and the mispronunciations."""
    phones = cmu_phones(word)
    mis = mispronunciations(phones, cmu_phones(said)) if said != word else []
    wrong = {m["index"] for m in mis}
    accuracy = max(0, 10 - 4 * len(mis))
    return {"text": word, "phones": phones, "phones-accuracy": [0 if i in wrong else 2 for i in range(len(phones))],
            "mispronunciations": mis, "accuracy": accuracy, "stress": 10, "total": accuracy}


def scores_entry(reading: Reading) -> dict:
    """The reading's scores.json entry: its words, and sentence scores from its errors and rate."""
    words = [word_entry(w, s) for w, s in zip(reading.text.split(), reading.said.split())]
    errors = sum(len(w["mispronunciations"]) for w in words)
    return {"text": reading.text, **synthetic_scores(errors, reading.wpm), "words": words}


def plan_readings(seed: int = 0) -> list[Reading]:
    """Every speaker reads every sentence once, at a varied rate, with 0-3 swapped words (seeded)."""
    rng = random.Random(seed)
    readings = []
    for s, (voice, pitch, wpm) in enumerate(SPEAKERS, 1):
        split = "test" if s > len(SPEAKERS) - TEST_SPEAKERS else "train"
        for n, (text, swaps) in enumerate(SENTENCES, 1):
            swapped = set(rng.sample(sorted(swaps), min(rng.choice(ERROR_COUNTS), len(swaps))))
            said = " ".join(swaps[w] if w in swapped else w for w in text.split())
            readings.append(Reading(f"9{s:04d}{n:04d}", f"{s:04d}", split, text, said, voice, pitch,
                                    round(wpm * rng.choice(RATE_FACTORS))))
    return readings


def find_espeak() -> str:
    """The espeak-ng executable, or a `SynthesisError` saying how to install it."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise SynthesisError("espeak-ng is not installed, so the corpus cannot be synthesised: install it "
                             "(apt-get install espeak-ng, brew install espeak-ng)")
    return exe


def synthesise(espeak: str, reading: Reading, path: Path) -> None:
    """espeak-ng's 22.05 kHz output resampled to the corpus's 16 kHz mono 16-bit WAV."""
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.wav"
        cmd = [espeak, "-v", reading.voice, "-s", str(reading.wpm), "-p", str(reading.pitch), "-w", str(raw),
               reading.said.lower()]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise SynthesisError(f"espeak-ng failed on {reading.id} ({' '.join(cmd)}): {done.stderr.strip()}")
        samples = load_audio(raw, reading.id)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), samples, SAMPLE_RATE, format="WAV", subtype="PCM_16")


def build_corpus(root: str | Path, espeak: str | None = None, seed: int = 0) -> Path:
    """Write the synthetic corpus in the SpeechOcean762 layout under `root` and return it."""
    espeak = espeak or find_espeak()
    root = Path(root)
    readings = plan_readings(seed)
    for r in readings:
        synthesise(espeak, r, root / "WAVE" / f"SPEAKER{r.speaker}" / f"{r.id}.WAV")
    for split in ("train", "test"):
        rows = [r for r in readings if r.split == split]
        (root / split).mkdir(parents=True, exist_ok=True)
        (root / split / "text").write_text("".join(f"{r.id}\t{r.text}\n" for r in rows))
        (root / split / "wav.scp").write_text("".join(f"{r.id}\tWAVE/SPEAKER{r.speaker}/{r.id}.WAV\n" for r in rows))
        (root / split / "utt2spk").write_text("".join(f"{r.id} {r.speaker}\n" for r in rows))
    (root / "resource").mkdir(parents=True, exist_ok=True)
    (root / "resource" / "scores.json").write_text(json.dumps({r.id: scores_entry(r) for r in readings}, indent=1))
    (root / "README.txt").write_text(__doc__ + "\nWhat each recording actually says:\n"
                                     + "".join(f"{r.id}\t{r.said}\t({r.wpm} wpm)\n" for r in readings))
    return root
