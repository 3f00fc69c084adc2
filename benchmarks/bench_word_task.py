"""What the word task (WRD) adds: o200k tokens per example of each task, and the training cost of a
three-task recipe against the paper's two tasks, per epoch.

    python benchmarks/bench_word_task.py [--data ../shared/data] [--templates default]

The counting is `pronlm.data.lengths`' (the one `pronlm plan` uses): text in o200k (the `bpe-openai`
package, offline), each special token (`<|user|>`, `<|WRD|>`, `<|end|>`, ...) as one token, the audio
placeholder as the clip's audio embeddings, and each answer with its closing `<|end|><|endoftext|>`.
Two sets: the 46 labelled utterances (their real targets, `corpus_lengths`), and the 200 unlabelled
clips (`distribution_rows`: answers built from the text, since every score is one token whatever its
value; the MDD answer uses the canonical phones in place of the heard ones). The README's figures are
the second set's; tests/test_lengths.py keeps them equal.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from statistics import mean

from pronlm.data.corpus import read_kaldi_dir
from pronlm.data.lengths import (corpus_lengths, distribution_lengths, distribution_rows, three_task_ratios,
                                 word_answer_per_word)
from pronlm.data.prompts import TASKS, PromptSet
from pronlm.data.text import sentence_words

REPO = Path(__file__).resolve().parents[1]


def report(name: str, lengths: list, words: list[int]) -> None:
    print(f"\n{name}: {len(words)} utterances; mean o200k tokens per example")
    print(f"{'task':<5} {'prompt':>7} {'audio':>7} {'answer':>7} {'total':>7}   answer min-max")
    for task in TASKS:
        rows = [x for x in lengths if x.task == task]
        answers = [x.answer for x in rows]
        print(f"{task:<5} {mean(x.prompt for x in rows):7.1f} {mean(x.audio for x in rows):7.1f} "
              f"{mean(answers):7.1f} {mean(x.total for x in rows):7.1f}   {min(answers)}-{max(answers)}")
    r = three_task_ratios(lengths)
    print(f"per epoch, three tasks / two tasks: LM tokens x{r['tokens']:.3f}; answer (loss) tokens "
          f"x{r['answer']:.3f}; examples and audio-encoder passes x{r['examples']:.1f}")
    print(f"wrd answer tokens per word: {word_answer_per_word(lengths, sum(words)):.1f} ({mean(words):.1f} words per utterance, "
          f"at most {max(words)})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--templates", default="default", help="default (the paper recipes') or short (tiny recipes')")
    a = p.parse_args()
    prompts = PromptSet.from_templates(a.templates, a.templates, a.templates)
    labelled, clips = Path(a.data) / "speechocean762", Path(a.data) / "speechocean762-audio"
    splits = ("train", "test")
    report(f"labelled subset ({a.templates} templates, real targets)",
           [x for s in splits for x in corpus_lengths(labelled, s, prompts, TASKS)],
           [len(u.words) for s in splits for u in read_kaldi_dir(labelled, s) if u.labelled])
    rows = distribution_rows(clips)
    report(f"{len(rows)} unlabelled clips ({a.templates} templates, answers built from the text)",
           distribution_lengths(prompts, TASKS, len(rows), rows),
           [len(sentence_words(u.text)) for s in splits for u in read_kaldi_dir(clips, s)])


if __name__ == "__main__":
    main()
