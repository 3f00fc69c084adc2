"""What the word task (WRD) adds: o200k tokens per example of each task, and the training cost of a
three-task recipe against the paper's two tasks, per epoch.

    python benchmarks/bench_word_task.py [--data ../shared/data] [--templates default]

Phi-4's tokenizer is o200k plus its special tokens: text is counted with o200k (the `bpe-openai`
package, offline), each special token (`<|user|>`, `<|WRD|>`, `<|end|>`, ...) as one token, the audio
placeholder as the clip's audio embeddings (`n_audio_tokens`), and each answer with its closing
`<|end|><|endoftext|>`. Two sets: the 46 labelled utterances (their real targets), and the 200
unlabelled clips (answers built from their text: every score is one token whatever its value, so a
WRD or APA answer's length does not depend on the scores; the MDD answer uses the canonical phones of
resource/text-phone in place of the heard ones).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from statistics import mean

import soundfile as sf

from pronlm.data.corpus import read_corpus
from pronlm.data.prompts import AUDIO_PLACEHOLDER, PAPER_TASKS, TASKS, PromptSet, build_examples
from pronlm.data.records import ASPECTS, WORD_ASPECTS
from pronlm.data.targets import strip_stress
from pronlm.data.text import sentence_words
from pronlm.model.collate import n_audio_tokens

REPO = Path(__file__).resolve().parents[1]
SPECIAL = re.compile(r"<\|[A-Za-z0-9_]+\|>")
CLOSING = 2  # <|end|><|endoftext|>


def count(enc, text: str) -> int:
    """o200k tokens of `text`, a special token counting one."""
    return sum(len(enc.encode_ordinary(piece)) for piece in SPECIAL.split(text)) + len(SPECIAL.findall(text))


def canonical_phones(corpus: Path) -> dict[str, list[str]]:
    """utt id -> canonical phones (stress and position suffixes removed) from resource/text-phone."""
    phones: dict[str, list[str]] = {}
    for line in (corpus / "resource" / "text-phone").read_text().splitlines():
        key, _, rest = line.partition("\t")
        phones.setdefault(key.split(".")[0], []).extend(strip_stress(p.split("_")[0]) for p in rest.split())
    return phones


def unlabelled_answer(task: str, utt, phones: dict[str, list[str]]) -> str:
    if task == "apa":
        return json.dumps(dict.fromkeys(ASPECTS, 8))
    if task == "mdd":
        return json.dumps({"word_transcript": utt.text, "phoneme_transcript": " ".join(phones[utt.id])})
    return json.dumps({"words": [{"word": w, **dict.fromkeys(WORD_ASPECTS, 8)} for w in sentence_words(utt.text)]})


def measure(enc, corpus: Path, prompts: PromptSet, labelled: bool) -> dict:
    """Per task: prompt (text), audio and answer tokens of every example of both splits; and each
    utterance's number of words."""
    out = {t: {"prompt": [], "audio": [], "answer": []} for t in TASKS} | {"words": []}
    phones = {} if labelled else canonical_phones(corpus)
    for split in ("train", "test"):
        for utt in read_corpus(str(corpus), split):
            audio = n_audio_tokens(sf.info(str(utt.audio)).frames)
            out["words"].append(len(utt.words) if labelled else len(sentence_words(utt.text)))
            for ex in build_examples(utt, prompts, tasks=TASKS):
                answer = ex.target if labelled else unlabelled_answer(ex.task, utt, phones)
                out[ex.task]["prompt"].append(count(enc, ex.prompt.replace(AUDIO_PLACEHOLDER, "")))
                out[ex.task]["audio"].append(audio)
                out[ex.task]["answer"].append(count(enc, answer) + CLOSING)
    return out


def report(name: str, counts: dict) -> None:
    n = len(counts["apa"]["audio"])
    print(f"\n{name}: {n} utterances; mean o200k tokens per example")
    print(f"{'task':<5} {'prompt':>7} {'audio':>7} {'answer':>7} {'total':>7}   answer min-max")
    totals = {}
    for task in TASKS:
        c = counts[task]
        total = [p + a + b for p, a, b in zip(c["prompt"], c["audio"], c["answer"])]
        totals[task] = sum(total)
        print(f"{task:<5} {mean(c['prompt']):7.1f} {mean(c['audio']):7.1f} {mean(c['answer']):7.1f} "
              f"{mean(total):7.1f}   {min(c['answer'])}-{max(c['answer'])}")
    two, three = sum(totals[t] for t in PAPER_TASKS), sum(totals.values())
    answers_two = sum(sum(counts[t]["answer"]) for t in PAPER_TASKS)
    answers_three = answers_two + sum(counts["wrd"]["answer"])
    print(f"per epoch, three tasks / two tasks: LM tokens x{three / two:.3f} ({three:,} / {two:,}); "
          f"answer (loss) tokens x{answers_three / answers_two:.3f}; examples and audio-encoder passes x1.5")
    print(f"wrd answer tokens per word: {sum(counts['wrd']['answer']) / sum(counts['words']):.1f} "
          f"({mean(counts['words']):.1f} words per utterance, at most {max(counts['words'])})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--templates", default="default", help="default (the paper recipes') or short (tiny recipes')")
    a = p.parse_args()
    import bpe_openai

    enc = bpe_openai.get_encoding("o200k_base")
    prompts = PromptSet.from_templates(a.templates, a.templates, a.templates)
    report(f"labelled subset ({a.templates} templates, real targets)",
           measure(enc, Path(a.data) / "speechocean762", prompts, True))
    report(f"200 unlabelled clips ({a.templates} templates, answers built from the text)",
           measure(enc, Path(a.data) / "speechocean762-audio", prompts, False))


if __name__ == "__main__":
    main()
