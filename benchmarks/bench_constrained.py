"""Free-text vs constrained decoding on the untrained tiny model: parse failures and decoding time.

The 100 test clips of ../shared/data/speechocean762-audio, both tasks, one run each way in one
process (a warm-up first), the two ways alternating batch by batch so that both see the same CPU
load. Time per answer and per decoding step with and without the grammar; the grammar's own share
(the logits processor's calls) is timed separately.

    python benchmarks/bench_constrained.py [--clips 100] [--batch-size 8] [--max-new-tokens 256]
    python benchmarks/bench_constrained.py --o200k   # only the mask cost per step at Phi-4's vocabulary

`--o200k` needs the `bpe-openai` package (o200k shipped offline; not a pronlm dependency): the
grammars are built over Phi-4's 200,064 embedding rows and driven with random logits.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from pronlm.data.audio import load_audio
from pronlm.data.corpus import read_corpus
from pronlm.evaluation.grammar import AnswerGrammar, GrammarProcessor, ValueLogits
from pronlm.evaluation.predict import Predictor

AUDIO = Path(__file__).resolve().parents[2] / "shared/data/speechocean762-audio"


def counted(cls, spent: dict):
    """Wrap a logits processor's __call__ to add up its time and calls."""
    call = cls.__call__

    def wrapper(self, input_ids, scores):
        t0 = time.perf_counter()
        out = call(self, input_ids, scores)
        spent["seconds"] += time.perf_counter() - t0
        spent["calls"] += 1
        return out

    cls.__call__ = wrapper


PHI4_ROWS, PHI4_END, PHI4_EOT = 200_064, 200_020, 199_999  # SPEC §2


class O200k:
    """o200k (bpe-openai) with Phi-4's special ids, seen as much of a transformers tokenizer as
    `AnswerGrammar` uses, and as llguidance's TokenizerWrapper wants it."""

    def __init__(self):
        import bpe_openai

        self.enc = bpe_openai.get_encoding("o200k_base")
        specials = {PHI4_EOT: b"<|endoftext|>", PHI4_END: b"<|end|>"}
        self.tokens = [specials.get(i) or self._bytes(i) for i in range(PHI4_ROWS)]
        self.special_token_ids = [i for i in range(PHI4_ROWS) if i in specials or i >= self.enc.n_vocab]
        self.eos_token_id, self.bos_token_id = PHI4_END, None

    def _bytes(self, i):
        try:
            return self.enc.decode_single_token_bytes(i) if i < self.enc.n_vocab else f"<|reserved_{i}|>".encode()
        except Exception:  # noqa: BLE001 - ids o200k leaves empty
            return f"<|reserved_{i}|>".encode()

    def __len__(self):
        return PHI4_ROWS

    def __call__(self, text, add_special_tokens=False):
        text = text.decode() if isinstance(text, bytes) else text
        return SimpleNamespace(input_ids=self.enc.encode_ordinary(text)) if not add_special_tokens else None

    def decode(self, ids, **_):
        return b"".join(self.tokens[i] for i in ids).decode("utf-8", "replace")

    def convert_ids_to_tokens(self, ids):
        return [self.tokens[i].decode("utf-8", "replace") for i in ids]


def o200k_mask_cost(batch_size: int, steps: int = 64):
    import llguidance
    from llguidance._tokenizer import TokenizerWrapper

    tok = O200k()
    t0 = time.perf_counter()
    lltok = llguidance.LLTokenizer(TokenizerWrapper(_Encoder(tok)), n_vocab=PHI4_ROWS, eos_token=[PHI4_END, PHI4_EOT])
    grammar = AnswerGrammar(tok, PHI4_ROWS, [PHI4_END, PHI4_EOT], "literal", True, lltokenizer=lltok)
    print(f"o200k: tokenizer and grammars built in {time.perf_counter() - t0:.1f} s; score ids {grammar.score_ids}")
    gen = torch.Generator().manual_seed(0)
    proc = grammar.processor(["apa", "mdd"] * (batch_size // 2), steps + 24)
    ids = torch.zeros(batch_size, 1, dtype=torch.long)
    spent = []
    for _ in range(steps):
        logits = torch.randn(batch_size, PHI4_ROWS, generator=gen)
        t0 = time.perf_counter()
        masked = proc(ids, logits)
        spent.append(time.perf_counter() - t0)
        ids = torch.cat([ids, masked.argmax(-1, keepdim=True)], 1)
    spent.sort()
    print(f"o200k mask cost per step, batch {batch_size} (APA and MDD rows), {steps} steps: median "
          f"{1000 * spent[len(spent) // 2]:.2f} ms, max {1000 * spent[-1]:.2f} ms (CPU, the processor's whole call)")


class _Encoder:
    """The gtokenizer llguidance's TokenizerWrapper expects: tokens, ids, and text -> ids."""

    def __init__(self, tok: O200k):
        self.tok, self.tokens = tok, tok.tokens
        self.eos_token_id, self.bos_token_id, self.special_token_ids = tok.eos_token_id, None, tok.special_token_ids

    def __call__(self, text):
        return self.tok(text).input_ids


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--corpus", default=str(AUDIO))
    p.add_argument("--clips", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--o200k", action="store_true", help="only the mask cost at Phi-4's 200k vocabulary")
    a = p.parse_args()
    if a.o200k:
        return o200k_mask_cost(a.batch_size)
    utts = list(read_corpus(a.corpus, "test"))[:a.clips]
    items = sorted(((u.id, load_audio(u.audio)) for u in utts), key=lambda item: -len(item[1]))  # as predict
    steps, masks = {"seconds": 0.0, "calls": 0}, {"seconds": 0.0, "calls": 0}
    counted(ValueLogits, steps)  # called once per decoding step in both modes
    counted(GrammarProcessor, masks)
    predictors = {c: Predictor.load("tiny", max_new_tokens=a.max_new_tokens, constrained=c) for c in (False, True)}
    for predictor in predictors.values():
        predictor.predict(items[:2], batch_size=a.batch_size)  # warm-up
    totals = {c: {"seconds": 0.0, "steps": 0, "records": []} for c in predictors}
    per_batch = a.batch_size // 2  # both tasks of each clip in one batch
    for start in range(0, len(items), per_batch):  # alternate the two ways batch by batch: the same CPU load
        for constrained, predictor in predictors.items():
            steps["calls"] = 0
            t0 = time.perf_counter()
            totals[constrained]["records"] += predictor.predict(items[start:start + per_batch], batch_size=a.batch_size)
            totals[constrained]["seconds"] += time.perf_counter() - t0
            totals[constrained]["steps"] += steps["calls"]
    for constrained, t in totals.items():
        records = t["records"]
        failed = {task: sum(not r["ok"] for r in records if r["task"] == task) for task in ("apa", "mdd")}
        expected = sum(r.get("scores_expected") is not None for r in records if r["task"] == "apa")
        print(f"{'constrained' if constrained else 'free text  '}: parse failures APA {failed['apa']}/{len(items)}, "
              f"MDD {failed['mdd']}/{len(items)}; expected scores for {expected} APA answers; {t['seconds']:.1f} s, "
              f"{1000 * t['seconds'] / len(records):.1f} ms/answer, {t['steps']} decoding steps (batches of "
              f"{a.batch_size} rows), {1000 * t['seconds'] / t['steps']:.2f} ms/step")
    free, cons = totals[False], totals[True]
    print(f"grammar processor: {masks['calls']} calls, {1000 * masks['seconds'] / max(1, masks['calls']):.2f} ms each, "
          f"{100 * masks['seconds'] / cons['seconds']:.1f} % of the constrained decoding time")
    print(f"constrained/free: time per answer {cons['seconds'] / free['seconds']:.2f}, per decoding step "
          f"{(cons['seconds'] / cons['steps']) / (free['seconds'] / free['steps']):.2f} ({len(items)} clips, both "
          f"tasks, max_new_tokens {a.max_new_tokens}; the two ways alternate batch by batch)")


if __name__ == "__main__":
    main()
