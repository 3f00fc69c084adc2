"""`pronlm prepare`: one corpus split -> `examples.jsonl` (two examples per utterance) + `stats.json`.

Every utterance's audio is read once here, so a broken clip is reported and skipped now rather
than crashing a training run hours later.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from pathlib import Path
from statistics import mean
from typing import Iterator

import numpy as np

from pronlm.data import SAMPLE_RATE, AudioError, PronlmError, Utterance, UtteranceError, load_audio, read_corpus
from pronlm.prompts import TASKS, Example, PromptSet, build_examples
from pronlm.targets import AccentPolicy, aligned_word_phones

log = logging.getLogger(__name__)


def load_tokenizer(name):
    """'tiny' (built offline), a local folder, a hub id or a loaded tokenizer; `<|APA|>`/`<|MDD|>` added."""
    from pronlm.model import add_control_tokens

    if not isinstance(name, str):
        tokenizer = name
    elif name == "tiny":
        from pronlm.tiny import build_tiny_tokenizer

        tokenizer = build_tiny_tokenizer()
    else:
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(name)
        except (OSError, ValueError) as exc:
            raise PronlmError(f"cannot load tokenizer {name!r}: {exc}") from exc
    add_control_tokens(tokenizer)
    return tokenizer


class TokenCounter:
    """Prompt / answer / audio tokens of each example, counted exactly as the collator builds them."""

    def __init__(self, tokenizer):
        from pronlm.collate import Collator  # torch and transformers: only needed for token counts

        # The audio token's id does not change any count; 0 keeps this independent of the model.
        self.prompt_only = Collator(tokenizer, audio_token_id=0, for_generation=True)
        self.full = Collator(tokenizer, audio_token_id=0)
        self.counts: dict[str, dict[str, list[int]]] = {t: {"prompt": [], "answer": [], "audio": []} for t in TASKS}

    def add(self, example: Example, n_samples: int) -> None:
        from pronlm.collate import n_audio_tokens

        n_audio = n_audio_tokens(n_samples)
        prompt = len(self.prompt_only.encode(example, n_audio)[0])
        counts = self.counts[example.task]
        counts["prompt"].append(prompt - n_audio)  # the expanded <|audio_1|> is counted apart
        counts["audio"].append(n_audio)
        if example.target is not None:
            counts["answer"].append(len(self.full.encode(example, n_audio)[0]) - prompt)

    def means(self) -> dict[str, dict[str, float | None]]:
        return {task: {k: round(mean(v), 2) if v else None for k, v in c.items()} for task, c in self.counts.items()}


def prepare(corpus: str, split: str, out: str | Path, tokenizer=None, accent_policy: str = "unk",
            word_boundaries: bool = False, apa_template: str = "default", mdd_template: str = "default",
            max_audio_seconds: float | None = 30.0, limit: int | None = None) -> dict:
    """Validate every utterance of `split`, write its APA and MDD examples, and return the stats."""
    corpus = str(corpus)
    policy = AccentPolicy(accent_policy)
    prompts = PromptSet.from_templates(apa_template, mdd_template)
    counter = TokenCounter(load_tokenizer(tokenizer)) if tokenizer is not None else None
    errors: list[UtteranceError] = []
    start = time.perf_counter()  # tokenizer loading excluded: it is not per-utterance work
    utterances = usable_utterances(corpus, split, errors, max_audio_seconds, limit)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seconds: list[float] = []
    n_examples = n_unlabelled = n_phones = n_mispronounced = 0
    with open(out / "examples.jsonl", "w") as f:
        for utt, samples in utterances:
            try:
                examples = build_examples(utt, prompts, policy, word_boundaries)
                pairs = [p for w in utt.words for p in aligned_word_phones(w, policy, utt.id)]
            except UtteranceError as exc:
                errors.append(exc)
                continue
            for ex in examples:
                f.write(json.dumps(ex.as_dict()) + "\n")
                if counter is not None:
                    counter.add(ex, samples.size)
            seconds.append(samples.size / SAMPLE_RATE)
            n_examples += len(examples)
            n_unlabelled += not utt.labelled
            n_phones += len(pairs)
            n_mispronounced += sum(c != h for c, h in pairs)
    elapsed = time.perf_counter() - start

    stats = {
        "corpus": corpus, "split": split, "accent_policy": policy.value, "word_boundaries": word_boundaries,
        "templates": {"apa": apa_template, "mdd": mdd_template},
        "tokenizer": tokenizer if tokenizer is None or isinstance(tokenizer, str) else type(tokenizer).__name__,
        "utterances": len(seconds), "examples": n_examples, "unlabelled": n_unlabelled,
        "skipped": len(errors), "skip_reasons": {e.utt_id: e.problem for e in errors},
        "phones": n_phones, "mispronounced_phones": n_mispronounced,
        "audio_seconds": {"total": round(sum(seconds), 3), "mean": round(mean(seconds), 3) if seconds else None,
                          "max": round(max(seconds), 3) if seconds else None},
        "tokens": counter.means() if counter is not None else None,
        "elapsed_seconds": round(elapsed, 3),
        "utterances_per_second": round(len(seconds) / elapsed, 2) if elapsed > 0 else None,
    }
    (out / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    _log_summary(stats, out)
    return stats


def usable_utterances(corpus: str, split: str, errors: list[UtteranceError], max_audio_seconds: float | None = 30.0,
                      limit: int | None = None) -> Iterator[tuple[Utterance, np.ndarray]]:
    """(utterance, 16 kHz samples) for the first `limit` utterances whose audio loads; the rest go to `errors`.

    A wrong folder or split raises at once, before the caller writes anything.
    """
    utterances = read_corpus(corpus, split, errors)
    first = next(utterances, None)  # read_corpus is lazy: make it check the split and files now
    return _with_audio(itertools.islice(itertools.chain([first] if first else [], utterances), limit),
                       split, errors, max_audio_seconds)


def _with_audio(utterances, split: str, errors: list[UtteranceError], max_audio_seconds: float | None):
    for utt in utterances:
        try:
            if utt.audio is None:
                raise AudioError(utt.id, f"no audio listed for it in {split}/wav.scp")
            samples = load_audio(utt.audio, utt.id, max_audio_seconds)
        except UtteranceError as exc:
            errors.append(exc)
            continue
        yield utt, samples


def _log_summary(stats: dict, out: Path) -> None:
    for utt_id, reason in stats["skip_reasons"].items():
        log.warning("skipped %s: %s", utt_id, reason)
    log.info("%s/%s: %d utterances -> %d examples in %s (%d skipped, %d unlabelled); %d of %d phones mispronounced; "
             "%.1f s of audio; %.1f utterances/s", stats["corpus"], stats["split"], stats["utterances"],
             stats["examples"], out / "examples.jsonl", stats["skipped"], stats["unlabelled"],
             stats["mispronounced_phones"], stats["phones"], stats["audio_seconds"]["total"],
             stats["utterances_per_second"] or 0.0)
    for task, counts in (stats["tokens"] or {}).items():
        log.info("%s: mean tokens prompt %s, answer %s, audio %s", task, counts["prompt"], counts["answer"],
                 counts["audio"])
