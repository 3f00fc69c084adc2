"""Free-text vs constrained decoding on the untrained tiny model: parse failures and decoding time.

The 100 test clips of ../shared/data/speechocean762-audio, both tasks, one run each way in one
process (a warm-up first), the two ways alternating batch by batch so that both see the same CPU
load. Time per answer and per decoding step with and without the grammar; the grammar's own share
(the logits processor's calls) is timed separately.

    python benchmarks/bench_constrained.py [--clips 100] [--batch-size 8] [--max-new-tokens 256]
    python benchmarks/bench_constrained.py --o200k   # the mask cost per step at Phi-4's vocabulary, beside
                                                     # the numpy unpacking it replaced, in one run; then
                                                     # each alone on the same tokens, and llguidance's fill
                                                     # one row after another against its thread pool

`--o200k` needs the `bpe-openai` package (o200k shipped offline; in the `test` extra): the
grammars are built over Phi-4's 200,064 embedding rows and driven with random logits.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from pronlm.config import Config
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
    """The processor's whole call per step at Phi-4's 200,064 rows, beside the per-row numpy unpacking it
    replaced (`UnpackedBits`), both driven by the same tokens and timed alternately in one run; then each
    alone over the same tokens (alternating, the baseline's memory traffic between the processor's calls,
    1.6 MB of unpacked bits and a bool mask, evicts the processor's state from the caches)."""
    import llguidance
    from llguidance._tokenizer import TokenizerWrapper

    tok = O200k()
    t0 = time.perf_counter()
    lltok = llguidance.LLTokenizer(TokenizerWrapper(_Encoder(tok)), n_vocab=PHI4_ROWS, eos_token=[PHI4_END, PHI4_EOT])
    grammar = AnswerGrammar(tok, PHI4_ROWS, [PHI4_END, PHI4_EOT], "literal", True, lltokenizer=lltok)
    print(f"o200k: tokenizer and grammars built in {time.perf_counter() - t0:.1f} s; score ids {grammar.score_ids}")
    gen = torch.Generator().manual_seed(0)
    tasks = ["apa", "mdd"] * (batch_size // 2)
    procs = {"token sets (now)": grammar.processor(tasks, steps + 24),
             "numpy unpack + bool mask (before)": UnpackedBits(grammar, [grammar.matcher(t) for t in tasks],
                                                               steps + 24)}
    ids = torch.zeros(batch_size, 1, dtype=torch.long)
    spent = {name: [] for name in procs}
    cpu = {name: [] for name in procs}  # the process's CPU time, all threads: less sensitive to a shared machine
    # Random logits made beforehand; each call gets a fresh copy, as generate copies the last position's
    # logits every step (`outputs.logits[:, -1].to(copy=True)`): drawing 1.6 M normals between calls
    # (7 ms) would leave the caches cold and more than double every part of the call, llguidance's too.
    pool = [torch.randn(batch_size, PHI4_ROWS, generator=gen) for _ in range(8)]
    for step in range(steps):
        outs = {}
        for name in (list(procs) if step % 2 else list(procs)[::-1]):  # alternate which goes first
            logits = pool[step % len(pool)].clone()
            t0, c0 = time.perf_counter(), time.process_time()
            outs[name] = procs[name](ids, logits)
            spent[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
        first, second = outs.values()
        assert torch.equal(first, second), "the two ways must mask the same tokens"
        ids = torch.cat([ids, first.argmax(-1, keepdim=True)], 1)
        del outs, first, second  # as generate drops a step's masked logits once it has picked the tokens
    for name, times in spent.items():
        mean = sum(times) / len(times)
        times.sort()
        cpu[name].sort()
        print(f"o200k mask cost per step, batch {batch_size} (APA and MDD rows), {steps} steps, {name}: median "
              f"{1000 * times[len(times) // 2]:.2f} ms, min {1000 * times[0]:.2f}, mean {1000 * mean:.2f} ms wall; "
              f"CPU time median {1000 * cpu[name][steps // 2]:.2f} ms ({torch.get_num_threads()} torch threads; "
              "the processor's whole call)")
    medians = {name: times[len(times) // 2] for name, times in spent.items()}
    now, before = medians.values()
    print(f"now/before: {now / before:.2f} (medians of one run); {grammar.token_sets.ids.cache_info()}")
    # The same tokens again with each processor alone, one after the other: nothing between a processor's
    # calls to evict its state (as on a GPU, where the model's forward pass runs on the device)
    fresh = {"token sets (now)": lambda: grammar.processor(tasks, steps + 24),
             "numpy unpack + bool mask (before)": lambda: UnpackedBits(
                 grammar, [grammar.matcher(t) for t in tasks], steps + 24)}
    alone = {}
    for name, make in fresh.items():
        proc, times = make(), []
        for step in range(steps):
            logits = pool[step % len(pool)].clone()
            t0 = time.perf_counter()
            out = proc(ids[:, :step + 1], logits)
            times.append(time.perf_counter() - t0)
            del out
        times.sort()
        alone[name] = times[steps // 2]
        print(f"o200k mask cost per step, batch {batch_size}, the same {steps} steps, {name} alone: median "
              f"{1000 * times[steps // 2]:.2f} ms, min {1000 * times[0]:.2f} ms wall")
    now, before = alone.values()
    print(f"now/before alone: {now / before:.2f} (medians of one run)")
    fill_cost(grammar, tok)


def fill_cost(grammar: AnswerGrammar, tok, batch_sizes=(8, 32, 64), repeats: int = 10):
    """llguidance's mask fill per step, rows one after another against its thread pool, in one run: half
    the rows follow an APA answer and half an MDD answer token by token, each step timed both ways."""
    from pronlm.evaluation.grammar import _executor

    answers = {"apa": tok('{"accuracy": 8, "fluency": 7, "prosodic": 7, "total": 7}').input_ids,
               "mdd": tok('{"word_transcript": "THE CAT SAT", "phoneme_transcript": "DH AH | K AE T | S AE T"}'
                          ).input_ids}
    for batch in batch_sizes:
        tasks = ["apa", "mdd"] * (batch // 2)
        proc = grammar.processor(tasks)
        rows = list(enumerate(proc.matchers))
        ways = {"one after another": [], "thread pool": []}
        for step in range(max(map(len, answers.values()))):
            live = [(m, row) for row, m in rows if not m.is_stopped()]
            for _ in range(repeats):
                t0 = time.perf_counter()
                for m, row in live:
                    m.unsafe_compute_mask_ptr(proc.bitmask.data_ptr() + row * proc.row_bytes, proc.row_bytes)
                t1 = time.perf_counter()
                _executor().unsafe_compute_mask_ptr(live, proc.bitmask.data_ptr(), proc.row_bytes, batch)
                ways["one after another"].append(t1 - t0)
                ways["thread pool"].append(time.perf_counter() - t1)
            for row, m in rows:
                answer = answers[tasks[row]]
                assert m.consume_token(answer[step] if step < len(answer) else PHI4_END) or m.is_stopped()
        print(f"mask fill, batch {batch}: " + ", ".join(
            f"{name} median {1000 * sorted(t)[len(t) // 2]:.3f} ms" for name, t in ways.items())
            + f" ({os.cpu_count()} cores)")


class UnpackedBits(GrammarProcessor):
    """The processor as it was before: rows filled one by one, 200k bits unpacked in numpy per row,
    a bool mask over the whole vocabulary copied to the logits' device. Kept as the baseline."""

    def __call__(self, input_ids, scores):
        if self.prompt_len is None:
            self.prompt_len = input_ids.shape[1]
        else:
            for m, token in zip(self.matchers, input_ids[:, -1].tolist()):
                if not m.is_stopped():
                    m.consume_token(token)
        for row, m in enumerate(self.matchers):
            m.unsafe_compute_mask_ptr(self.bitmask[row].data_ptr(), self.bitmask.shape[1] * 4)
        bits = np.unpackbits(self.bitmask.numpy().view(np.uint8), axis=1, bitorder="little")
        allowed = torch.from_numpy(bits[:, :scores.shape[1]]).bool().to(scores.device)
        for row, m in enumerate(self.matchers):
            if m.is_stopped():
                allowed[row] = False
                allowed[row, self.grammar.stop_ids] = True
        return scores.masked_fill(~allowed, float("-inf"))


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
    predictors = {c: Predictor.load(Config(base="tiny", max_new_tokens=a.max_new_tokens, constrained=c)) for c in (False, True)}
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
