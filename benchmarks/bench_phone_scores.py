"""The cost of phone scores at Phi-4's vocabulary: tokens in the one forward pass per utterance.

For every labelled utterance of ../shared/data/speechocean762 (both splits), the token tree of
`pronlm.evaluation.phone_scores` is built with the real o200k tokenizer (the `bpe-openai` package,
offline): canonical phones, teacher-forced answer tokens, the tree's extra branch tokens, the rows
whose logits are read, and the clip's audio tokens; beside them the MDD prompt's text tokens. No
model runs: the pass's length is what its cost scales with (an MDD answer costs the prompt and audio
prefill plus one decoding step per answer token).

    python benchmarks/bench_phone_scores.py
"""

from __future__ import annotations

import statistics
from pathlib import Path
from types import SimpleNamespace

import soundfile as sf

from pronlm.data.corpus import read_corpus
from pronlm.data.prompts import PromptSet
from pronlm.data.targets import strip_stress
from pronlm.evaluation.phone_scores import PhoneScorer
from pronlm.model.collate import n_audio_tokens

CORPUS = Path(__file__).resolve().parents[2] / "shared/data/speechocean762"


class O200k:
    """As much of a transformers tokenizer as `PhoneScorer` uses, over o200k."""

    def __init__(self):
        import bpe_openai

        self.enc = bpe_openai.get_encoding("o200k_base")

    def __call__(self, text: str, add_special_tokens: bool = False):
        return SimpleNamespace(input_ids=self.enc.encode_ordinary(text))


def main() -> None:
    tokenizer = O200k()
    scorer = PhoneScorer(tokenizer)
    prompt = len(tokenizer(PromptSet.from_templates().mdd).input_ids)  # special tokens counted as text: an upper bound
    rows = []
    for split in ("train", "test"):
        for utt in read_corpus(str(CORPUS), split):
            if not utt.labelled:
                continue
            tree = scorer.tree([], utt.text, [[strip_stress(p) for p in w.canonical_phones] for w in utt.words])
            read = {row for phone in tree.reads for _, pairs in phone for row, _ in pairs}
            rows.append({"phones": len(tree.canonical), "answer": tree.main_length,
                         "branches": len(tree.input_ids) - tree.main_length, "rows read": len(read),
                         "audio": n_audio_tokens(sf.info(utt.audio).frames)})
    mean = {k: statistics.mean(r[k] for r in rows) for k in rows[0]}
    print(f"{len(rows)} utterances; per utterance (mean): " + ", ".join(f"{k} {v:.1f}" for k, v in mean.items())
          + f"; MDD prompt text {prompt}")
    print(f"branch tokens per phone {mean['branches'] / mean['phones']:.2f}; one pass of about "
          f"{prompt + mean['audio'] + mean['answer'] + mean['branches']:.0f} tokens per utterance")


if __name__ == "__main__":
    main()
