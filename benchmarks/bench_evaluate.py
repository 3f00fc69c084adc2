"""Time `pronlm evaluate` on a synthetic test split the size of SpeechOcean762's (2,500 utterances).

    python benchmarks/bench_evaluate.py [--utterances 2500] [--seed 0]

Writes a corpus in the Kaldi layout and a prediction file (both tasks, a mix of perfect, canonical,
edited and failed answers) to a temporary folder, then prints the seconds `evaluate` takes.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

from pronlm.data.corpus import read_corpus
from pronlm.data.targets import canonical_phones, heard_phones
from pronlm.evaluation.evaluate import evaluate

PHONES = "AA AE AH AO AW AY B CH D DH EH ER EY F G HH IH IY JH K L M N NG OW OY P R S SH T TH UH UW V W Y Z ZH".split()


def synth_word(rng: random.Random) -> dict:
    """A word of 2-6 phones; about one in six phones mispronounced (substituted, deleted or accented)."""
    phones = [rng.choice(PHONES) + rng.choice(["", "0", "1"]) for _ in range(rng.randint(2, 6))]
    mis = []
    for i, p in enumerate(phones):
        if rng.random() < 1 / 6:
            pronounced = rng.choice([rng.choice(PHONES), "<DEL>", p.rstrip("01") + "*"])
            mis.append({"canonical-phone": p.rstrip("01"), "index": i, "pronounced-phone": pronounced})
    word = {"text": "".join(rng.choice("ABCDEFGHIJKLMNOPRSTUVWY") for _ in range(len(phones))),
            "accuracy": 8, "stress": 10, "total": 8, "phones": phones, "phones-accuracy": [2] * len(phones)}
    return word | ({"mispronunciations": mis} if mis else {})


def write_corpus(root: Path, n: int, rng: random.Random) -> None:
    scores, text, wav, spk = {}, [], [], []
    for k in range(n):
        uid = f"{k:09d}"
        words = [synth_word(rng) for _ in range(rng.randint(3, 12))]
        sentence = " ".join(w["text"] for w in words)
        acc = rng.randint(2, 10)
        scores[uid] = {"text": sentence, "accuracy": acc, "completeness": 10, "fluency": rng.randint(2, 10),
                       "prosodic": rng.randint(2, 10), "total": acc, "words": words}
        text.append(f"{uid}\t{sentence}")
        wav.append(f"{uid}\tWAVE/SPEAKER0000/{uid}.WAV")
        spk.append(f"{uid} {k % 125:04d}")
    (root / "test").mkdir(parents=True)
    (root / "resource").mkdir()
    (root / "resource" / "scores.json").write_text(json.dumps(scores))
    for name, lines in (("text", text), ("wav.scp", wav), ("utt2spk", spk)):
        (root / "test" / name).write_text("\n".join(lines) + "\n")


def write_predictions(corpus: Path, path: Path, rng: random.Random) -> None:
    lines = []
    for u in read_corpus(str(corpus), "test"):
        s = u.scores
        apa = {"accuracy": min(10, max(0, s.accuracy + rng.randint(-2, 2))), "fluency": rng.randint(3, 9),
               "prosodic": rng.randint(3, 9), "total": min(10, max(0, s.total + rng.randint(-1, 1)))}
        lines.append({"id": u.id, "task": "apa", "raw": json.dumps(apa), "ok": True, "error": None,
                      "scores": apa, "clamped": []})
        phones = rng.choice([heard_phones(u), canonical_phones(u), [rng.choice(PHONES) for _ in heard_phones(u)]])
        ok = rng.random() > 0.02
        lines.append({"id": u.id, "task": "mdd", "raw": "", "ok": ok, "error": None if ok else "missing",
                      "word_transcript": u.text if ok else "", "phoneme_transcript": " ".join(phones) if ok else ""})
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--utterances", type=int, default=2500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_corpus(tmp / "corpus", args.utterances, rng)
        write_predictions(tmp / "corpus", tmp / "pred.jsonl", rng)
        start = time.perf_counter()
        report = evaluate(str(tmp / "pred.jsonl"), str(tmp / "corpus"), "test", str(tmp / "out"))
        seconds = time.perf_counter() - start
    mdd, acc = report["mdd"], report["apa"]["accuracy"]
    print(f"evaluate: {args.utterances} utterances in {seconds:.2f} s "
          f"(PER {mdd['per']:.3f}, F1 {mdd['f1']:.3f}, accuracy PCC {acc['pcc']:.3f})")


if __name__ == "__main__":
    main()
