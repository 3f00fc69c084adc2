"""`pronlm demo`: the whole pipeline on a CPU in a couple of minutes, with no download.

It synthesises a small corpus in the SpeechOcean762 layout with espeak-ng (or uses a real corpus
folder), trains the tiny random model with the tiny-cpu recipe, checks that it listens (it
transcribes the training voices' clips from their audio, not from silence), predicts and
evaluates the test split (new voices) and assesses one recording. It shows that every stage runs
and how they connect; the numbers it prints say nothing about pronunciation. A tiny model
memorises the voices it was trained on: on new voices it mostly guesses.

The synthetic corpus is a stand-in, honest about what it is: espeak-ng reads each sentence, and
some readings swap a word for a near-homophone ("THINK" -> "SINK", "CARD" -> "CAR"); the labels
are the sentence's CMUdict phones with the swap written as SpeechOcean762 `mispronunciations`
(a substituted or deleted phone at its index), so the heard phones are those of what was said.
espeak-ng's own pronunciation differs from CMUdict's here and there: that is label noise.
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

import numpy as np
import soundfile as sf

from pronlm.data.audio import SAMPLE_RATE, load_audio
from pronlm.data.corpus import read_corpus
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
# On top of tiny-cpu, tuned on this corpus. Batch 16 for 300 steps (50 epochs, ~45 s on one core)
# is what it takes to transcribe the training voices from their audio: held-in WER 0.00 at the
# recipe's seed 42, 0.00-0.16 (mean 0.04) over seeds 0-6; batch 8 needs 600 steps for the same
# (0.00-0.15) and gets ~0.5 in 300; batch 24 got 0.22 on two seeds. On the new voices at seed 42:
# WER 0.85, 1 of 32 answers unparsed, fluency / prosodic PCC 0.55 / 0.67 (the rate shows in the length).
DEMO_OVERRIDES = {"per_device_train_batch_size": 16, "warmup_ratio": 0.05, "save_strategy": "no",
                  "logging_steps": 10, "overwrite": True}  # overwrite: a rerun in the same folder starts afresh
MAX_NEW_TOKENS = 128  # the longest demo answer is about 60 tokens; an untrained model would ramble


class DemoError(PronlmError):
    """The demo cannot run as asked (no espeak-ng and no corpus)."""


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


# ---------------------------------------------------------------- labels (pure)


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


# ---------------------------------------------------------------- synthesis (side effects)


def find_espeak() -> str:
    """The espeak-ng executable, or a `DemoError` saying what to do without one."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise DemoError("espeak-ng is not installed, so the demo cannot synthesise its corpus: install it "
                        "(apt-get install espeak-ng, brew install espeak-ng) or pass --corpus with a "
                        "SpeechOcean762 folder")
    return exe


def synthesise(espeak: str, reading: Reading, path: Path) -> None:
    """espeak-ng's 22.05 kHz output resampled to the corpus's 16 kHz mono 16-bit WAV."""
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.wav"
        cmd = [espeak, "-v", reading.voice, "-s", str(reading.wpm), "-p", str(reading.pitch), "-w", str(raw),
               reading.said.lower()]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise DemoError(f"espeak-ng failed on {reading.id} ({' '.join(cmd)}): {done.stderr.strip()}")
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


# ---------------------------------------------------------------- the pipeline


def train_tiny(corpus: str, run_dir: Path, steps: int) -> float | None:
    """The tiny-cpu recipe on `corpus`; returns the last logged training loss."""
    from pronlm.config import load_config
    from pronlm.model.train import train

    cfg = load_config("tiny-cpu", {**DEMO_OVERRIDES, "corpus": corpus, "output_dir": str(run_dir),
                                   "max_steps": steps})
    train(cfg)
    losses = [json.loads(line).get("loss") for line in (run_dir / "log.jsonl").read_text().splitlines()]
    losses = [x for x in losses if x is not None]
    return losses[-1] if losses else None


def transcribe(predictor, utts: list, silent: bool = False) -> list[str]:
    """The MDD word transcript of each clip ("" when unparsed); `silent`: of silence as long as the clip.

    Silence gives all-zero features (the log-mel floor), so only the clip's length is left to hear.
    """
    items = [(u.id, load_audio(u.audio, u.id)) for u in utts]
    if silent:
        items = [(i, np.zeros_like(samples)) for i, samples in items]
    return [r["word_transcript"] or "" for r in predictor.predict(items, tasks=("mdd",))]


def listening(predictor, corpus: str) -> dict:
    """Training clips transcribed word for word from their audio, and from silence in its place."""
    utts = list(read_corpus(corpus, "train"))
    right = {mode: sum(t == u.text for t, u in zip(transcribe(predictor, utts, mode == "silence"), utts))
             for mode in ("audio", "silence")}
    return {**right, "clips": len(utts)}


def assess_one(predictor, corpus: str) -> str:
    """Assess the first training-voice recording with a swapped word (else the first one); return the table."""
    from pronlm.app.assess import assess, format_table

    utts = list(read_corpus(corpus, "train"))
    utt = next((u for u in utts if any(w.mispronunciations for w in u.words)), utts[0])
    result = assess(predictor, load_audio(utt.audio, utt.id), utt.text)
    truth = [f"{w.text}: {m.canonical_phone}->{m.pronounced_phone}" for w in utt.words for m in w.mispronunciations]
    return (f"recording {utt.audio} (a training voice)\ntext      {utt.text}\n"
            f"annotated {', '.join(truth) or 'no mispronunciation'}\n" + format_table(result))


def demo(out: str | Path = "demo-out", corpus: str | None = None, steps: int = 300) -> dict:
    """Corpus -> train -> listen -> predict -> evaluate -> assess, all under `out`; returns the report."""
    out = Path(out)
    if corpus is None:
        espeak = find_espeak()
        print(f"[1/5] synthesising a corpus with espeak-ng in {out / 'corpus'}", flush=True)
        corpus = str(build_corpus(out / "corpus", espeak))
    else:
        print(f"[1/5] using the corpus in {corpus}", flush=True)
    import torch  # loaded only once the corpus is there, so a missing espeak-ng is reported at once

    threads = torch.get_num_threads()
    # Hidden-64 ops are too small to split across threads; on a busy 2-core machine two threads
    # waiting on each other made training about 5x slower than one.
    torch.set_num_threads(1)
    try:
        report, loss, heard = run_pipeline(corpus, out, steps)
    finally:
        torch.set_num_threads(threads)
    print(summary(report, out, steps, loss, heard))
    return {**report, "listening": heard}


def run_pipeline(corpus: str, out: Path, steps: int) -> tuple[dict, float | None, dict]:
    """Train, check it listens, predict and evaluate the test split, assess one recording."""
    from pronlm.evaluation.predict import Predictor, predict
    from pronlm.evaluation.report import evaluate

    run_dir = out / "run"
    print(f"[2/5] training the tiny model for {steps} steps in {run_dir}", flush=True)
    loss = train_tiny(corpus, run_dir, steps)
    print(f"[3/5] transcribing the training voices' clips, then silence as long as each (last training loss "
          f"{_num(loss)})", flush=True)
    predictor = Predictor.load("tiny", str(run_dir), max_new_tokens=MAX_NEW_TOKENS)
    heard = listening(predictor, corpus)
    print(heard_line(heard), flush=True)
    print("[4/5] predicting and evaluating the test split (voices it has not heard)", flush=True)
    predictions = out / "predictions.jsonl"
    predictions.unlink(missing_ok=True)  # predict resumes: a rerun must not keep the last run's answers
    predict(base="tiny", adapter=str(run_dir), corpus=corpus, split="test", out=str(predictions),
            max_new_tokens=MAX_NEW_TOKENS)
    report = evaluate(str(predictions), corpus, "test", str(out / "report"))
    print("[5/5] assessing one recording", flush=True)
    print(assess_one(predictor, corpus))
    return report, loss, heard


def heard_line(heard: dict) -> str:
    return (f"  transcribes {heard['audio']}/{heard['clips']} training clips word for word from their audio; "
            f"{heard['silence']}/{heard['clips']} from silence")


def _num(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def summary(report: dict, out: Path, steps: int, loss: float | None, heard: dict) -> str:
    """Where the report is, its headline numbers, and why they mean nothing here."""
    apa, mdd, parse = report["apa"], report["mdd"], report["parse"]
    pcc = ", ".join(f"{a} {_num(v['pcc'])}" for a, v in apa.items())
    return f"""
Report on the test split: {out / 'report' / 'report.md'} (metrics in report.json, plots beside it)
  last training loss {_num(loss)}; APA PCC {pcc}; WER {_num(mdd['wer'])}; PER {_num(mdd['per'])};
  unparsed answers: {parse['apa_failed']} APA, {parse['mdd_failed']} MDD
Listening (training voices):
{heard_line(heard)}

This trained a tiny random model (2 layers, hidden 64) for {steps} steps. The listening line
shows what it heard on its training voices' clips: trained long enough, it tells their sentences
apart by how they sound, not only by how long they are. But a tiny model memorises the voices it
is trained on: it does not generalise to new voices, so on the test split (voices it has not
heard) it mostly guesses.
A tiny random model is not a pronunciation model: its scores and transcripts say nothing about
anyone's pronunciation, and on synthetic speech it picks up only what the labels make easy (the
speaking rate, which sets fluency and prosodic, shows in the recording's length). The demo shows
that the pipeline works.
To train the paper's model (Phi-4-multimodal + LoRA) on a GPU with SpeechOcean762:
  pronlm train --recipe paper-lora
  pronlm predict --base microsoft/Phi-4-multimodal-instruct --adapter runs/paper-lora/checkpoint-N \\
      --corpus hf:mispeech/speechocean762 --split test --out runs/paper-lora/predictions.jsonl
  pronlm evaluate --predictions runs/paper-lora/predictions.jsonl --corpus hf:mispeech/speechocean762 \\
      --split test --out runs/paper-lora/report"""
