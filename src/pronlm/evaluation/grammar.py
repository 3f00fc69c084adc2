"""Structured decoding: the grammar of each task's answer, the logits processor that enforces it, and
expected scores.

Owns what an answer may look like token by token: `answer_schema` (the JSON schema, with
llguidance's `x-guidance` options so separators and spaces are those of `targets.apa_target` /
`mdd_target`; a vLLM server takes it as `structured_outputs={"json": schema}`), `AnswerGrammar`
(compiled grammars per task and the `GrammarProcessor` for `generate`), the start-up check that
each score 0-10 is one token (`score_token_ids`), and `expected_scores` (the probability-weighted
mean of each APA score; `expected_word_scores` for every score of a WRD answer). The word task's grammar
is made per answer from the words its prompt gives (`wrd_grammar`): only the scores are free. llguidance is used over xgrammar and lm-format-enforcer (SPEC §2b).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import time

import llguidance
import llguidance.hf
import numpy as np
import torch
from llguidance import LLMatcher
from transformers import LogitsProcessor

from pronlm.data.prompts import TASKS
from pronlm.data.records import ASPECTS, WORD_ASPECTS
from pronlm.data.schema import SCORE_RANGE
from pronlm.data.targets import ARPABET, UNK, WORD_SEPARATOR
from pronlm.errors import PronlmError
from pronlm.evaluation.uncertainty import spread

log = logging.getLogger(__name__)

SCORES = range(SCORE_RANGE[0], SCORE_RANGE[1] + 1)  # 0..10, the 11 values a score token can be
# The separators of `json.dumps` defaults, as in every training target; no other whitespace.
GUIDANCE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
# A word of a reference text (SpeechOcean762: upper-case letters and apostrophes; text.py keeps
# hyphenated words whole) or `<unk>`, which the MDD prompt asks for an unclear word.
WORD = r"[A-Z]+(['-][A-Z]+)*|<unk>"
# An MDD answer that runs this close to max_new_tokens is steered to close its strings (see `_finish`).
FINISH_MARGIN = 24


class GrammarError(PronlmError):
    """A tokenizer or model that structured decoding or expected scores cannot work with."""


def _spaced(item: str) -> str:
    # `(|P( P)*)`, not `(P( P)*)?`: xgrammar 0.2.8 compiles the latter wrongly (SPEC §2b).
    return f"(|({item})( ({item}))*)"


def phone_pattern(accent_policy: str = "unk", word_boundaries: bool = False) -> str:
    """Regex of a phoneme_transcript as `targets.heard_phones` writes it under the policy."""
    phones = "|".join(sorted(ARPABET)) + "|" + re.escape(UNK)
    phone = f"({'|'.join(sorted(ARPABET))})\\*|{phones}" if accent_policy == "literal" else phones
    word = f"({phone})( ({phone}))*"
    if word_boundaries:  # `|` only between two words' phones, as heard_phones puts it
        return f"^(|{word}( {re.escape(WORD_SEPARATOR)} {word})*)$"
    return f"^{_spaced(phone)}$"


def answer_schema(task: str, accent_policy: str = "unk", word_boundaries: bool = False,
                  words: list[str] | None = None) -> dict:
    """The JSON schema of a task's answer, keys in the training targets' order and spacing.

    `words` (word task): the entries' words in order, each fixed; without them any words.
    """
    score = {"type": "integer", "minimum": SCORE_RANGE[0], "maximum": SCORE_RANGE[1]}
    if task == "apa":
        props = {a: dict(score) for a in ASPECTS}
    elif task == "wrd":
        def entry(word: dict) -> dict:
            keys = {"word": word, **{a: dict(score) for a in WORD_ASPECTS}}
            return {"type": "object", "properties": keys, "required": list(keys), "additionalProperties": False}

        array = {"type": "array", "items": entry({"type": "string", "pattern": f"^({WORD})$"})}
        if words is not None:
            array = {"type": "array", "prefixItems": [entry({"const": w}) for w in words], "items": False,
                     "minItems": len(words), "maxItems": len(words)}
        props = {"words": array}
    elif task == "mdd":
        props = {"word_transcript": {"type": "string", "pattern": f"^{_spaced(WORD)}$"},
                 "phoneme_transcript": {"type": "string", "pattern": phone_pattern(accent_policy, word_boundaries)}}
    else:
        raise GrammarError(f"unknown task {task!r}: expected one of {', '.join(TASKS)}")
    return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False,
            "x-guidance": dict(GUIDANCE)}


def apa_grammar(score_ids: list[int]) -> str:
    """Lark grammar of the APA answer where each score is one of the 11 value tokens, so that
    "10" cannot be written as "1" "0" and each score has one position (`expected_scores`)."""
    parts = [json.dumps(("{" if i == 0 else ", ") + json.dumps(a) + ": ") + " score" for i, a in enumerate(ASPECTS)]
    return f"start: {' '.join(parts)} \"}}\"\nscore: <[{','.join(map(str, score_ids))}]>\n"


def wrd_grammar(words: list[str], score_ids: list[int]) -> str:
    """Lark grammar of the WRD answer for these words: every character fixed by the words (in the
    training targets' spelling, `targets.wrd_target`) except the scores, each one of the 11 value tokens."""
    parts = ['"{\\"words\\": ["']
    for n, word in enumerate(words):
        for i, aspect in enumerate(WORD_ASPECTS):
            head = (", " if n else "") + "{\"word\": " + json.dumps(word) + ", " if i == 0 else ", "
            parts += [json.dumps(head + json.dumps(aspect) + ": "), "score"]
        parts.append('"}"')
    parts.append('"]}"')
    return f"start: {' '.join(parts)}\nscore: <[{','.join(map(str, score_ids))}]>\n"


def score_token_ids(tokenizer) -> list[int]:
    """The token ids of the scores 0..10, checked to be one token each at one position in an answer.

    Raises `GrammarError` otherwise (a tokenizer that merges " 8" or splits "10"): neither the
    APA grammar nor `expected_scores` could then find a score's distribution at one position.
    """
    ids = []
    for v in SCORES:
        one = tokenizer(str(v), add_special_tokens=False).input_ids
        answer = tokenizer(json.dumps({a: v for a in ASPECTS}), add_special_tokens=False).input_ids
        if len(one) != 1 or answer.count(one[0]) != len(ASPECTS):
            raise GrammarError(f"the tokenizer does not write the score {v} as one token of its own in an answer "
                               f"({tokenizer.convert_ids_to_tokens(answer)}): structured decoding and expected "
                               "scores need each of 0..10 as one token after `\": ` (as o200k does)")
        ids.append(one[0])
    return ids


class AnswerGrammar:
    """The compiled grammar of each task for one tokenizer and model; `processor` makes a batch's.

    `lltokenizer`: llguidance's view of a tokenizer that is not a transformers fast tokenizer
    (benchmarks/bench_constrained.py times the masks over o200k this way).
    """

    def __init__(self, tokenizer, vocab_size: int, stop_ids: list[int], accent_policy: str = "unk",
                 word_boundaries: bool = False, lltokenizer=None):
        if len(tokenizer) > vocab_size:
            raise GrammarError(f"the tokenizer has {len(tokenizer)} tokens but the model only {vocab_size} rows")
        self.vocab_size, self.stop_ids = vocab_size, list(stop_ids)
        # vocab_size: the embedding's rows, so the rows past the tokenizer's end are masked too (SPEC §2b).
        self.lltokenizer = lltokenizer or llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size,
                                                                       eos_token=self.stop_ids)
        self.score_ids = score_token_ids(tokenizer)
        grammars = {"apa": apa_grammar(self.score_ids),
                    "mdd": LLMatcher.grammar_from_json_schema(answer_schema("mdd", accent_policy, word_boundaries))}
        self.matchers = {task: self._matcher(g) for task, g in grammars.items()}
        pieces = [tokenizer.decode([i]) for i in range(len(tokenizer))]
        closing = torch.zeros(vocab_size, dtype=torch.bool)  # tokens that can end a string or the object
        closing[[i for i, p in enumerate(pieces) if '"' in p or "}" in p] + self.stop_ids] = True
        stop = torch.zeros(vocab_size, dtype=torch.bool)
        stop[self.stop_ids] = True
        self._words = {"closing": pack(closing), "stop": pack(stop)}
        self.token_sets = TokenSets(vocab_size)

    def _matcher(self, grammar: str) -> LLMatcher:
        matcher = LLMatcher(self.lltokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise GrammarError(f"answer grammar does not compile: {matcher.get_error()}")
        return matcher

    def matcher(self, task: str, words: list[str] | None = None) -> LLMatcher:
        """A fresh matcher for one answer of `task`; the word task's is compiled for its `words`."""
        if task == "wrd":
            if words is None:
                raise GrammarError("the word task's grammar needs the words its prompt gives")
            return self._matcher(wrd_grammar(words, self.score_ids))
        return self.matchers[task].deep_copy()

    def processor(self, tasks: list[str], max_new_tokens: int | None = None,
                  words: list[list[str] | None] | None = None) -> "GrammarProcessor":
        """The processor of one batch: `tasks` per row, and each word-task row's `words`."""
        words = words or [None] * len(tasks)
        return GrammarProcessor(self, [self.matcher(t, w) for t, w in zip(tasks, words)], max_new_tokens)

    def words(self, which: str) -> torch.Tensor:
        """The `closing` or `stop` tokens as mask words (CPU, where the masks are filled)."""
        return self._words[which]


_BUILT: dict[tuple, AnswerGrammar] = {}


def answer_grammar(tokenizer, vocab_size: int, stop_ids: list[int], accent_policy: str = "unk",
                   word_boundaries: bool = False) -> AnswerGrammar:
    """The `AnswerGrammar` for these settings, built once per process (about 4.5 s over Phi-4's 200k
    tokens): every checkpoint a table evaluates, and every predictor a server loads, shares it."""
    key = (_fingerprint(tokenizer), vocab_size, tuple(stop_ids), accent_policy, word_boundaries)
    if key not in _BUILT:
        log.info("building the answer grammars over %d tokens (once per process)", vocab_size)
        t0 = time.perf_counter()
        _BUILT[key] = AnswerGrammar(tokenizer, vocab_size, stop_ids, accent_policy, word_boundaries)
        log.info("answer grammars built in %.1f s", time.perf_counter() - t0)
    return _BUILT[key]


def _fingerprint(tokenizer) -> str:
    """What a tokenizer maps text to: its serialised vocabulary and rules (a checkpoint's copy of the
    base's tokenizer gives the same), or the object itself when it cannot be serialised."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else f"object {id(tokenizer)}"
    return hashlib.sha256(text.encode()).hexdigest()


class GrammarProcessor(LogitsProcessor):
    """Masks each row's logits to the tokens its task's grammar allows next (rows left-padded).

    Called first on the prompts, then once per new token: each row's matcher consumes the row's
    last token, then llguidance fills the row's mask (int32 words, 25 KB a row at 200k tokens). A
    finished row (its stop token consumed) allows only stop tokens, so `generate`'s padding of finished
    rows never reaches the matcher. The grammar's `TokenSets` turn the words into the allowed tokens'
    ids, already on the logits' device, so nothing of the vocabulary's width crosses between devices.

    The masked logits are a new tensor each step, as `generate` keeps the unprocessed ones for
    `output_logits`; their memory is recycled (`_output`) only when nothing else holds it.
    """

    def __init__(self, grammar: AnswerGrammar, matchers: list[LLMatcher], max_new_tokens: int | None = None):
        self.grammar, self.matchers, self.max_new_tokens = grammar, matchers, max_new_tokens
        self.prompt_len: int | None = None
        self.bitmask = torch.full((len(matchers), (grammar.vocab_size + 31) // 32), -1, dtype=torch.int32)
        self.row_bytes = self.bitmask.shape[1] * 4
        self.outputs: list[tuple] = []  # (buffer, each row's ids, _version, its storage's users when free)
        self.rows: list[tuple[bytes, str, torch.Tensor] | None] = [None] * len(matchers)  # each row's last mask
        self.flat: torch.Tensor | None = None
        self.finished: set[int] = set()  # rows whose mask holds the stop tokens (`_fill` leaves them so)
        self.stop_key = grammar.words("stop").numpy().tobytes()

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if scores.shape != (len(self.matchers), self.grammar.vocab_size):
            raise GrammarError(f"the logits are {list(scores.shape)} but the grammar masks {len(self.matchers)} "
                               f"rows of {self.grammar.vocab_size} tokens (the model's embedding rows)")
        return self._output(scores, *self._allowed(self._masks(input_ids), scores))

    def _masks(self, input_ids: torch.LongTensor) -> torch.Tensor:
        """Advance every row's matcher by its last token and return the rows' masks (int32 words, CPU):
        a finished row's allows the stop tokens, written once."""
        if self.prompt_len is None:
            self.prompt_len = input_ids.shape[1]
        else:
            for m, token in zip(self.matchers, input_ids[:, -1].tolist()):
                if not m.is_stopped() and not m.consume_token(token):
                    raise GrammarError(f"token {token} breaks the answer grammar: {m.get_error()}")
        stopped = [row for row in self._fill() if row not in self.finished]
        if stopped:
            self.bitmask[stopped] = self.grammar.words("stop")
            self.finished.update(stopped)
        return self._finish(input_ids.shape[1] - self.prompt_len, self.bitmask)

    def _allowed(self, words: torch.Tensor, scores: torch.Tensor) -> tuple[torch.Tensor, tuple]:
        """The ids of `scores.view(-1)` the masks leave (row r's token t is r V + t), ascending, on the
        logits' device; and each row's part of them.

        A row whose mask is the one it had the step before keeps that step's ids (an MDD transcript's
        mask stays the same for many steps; a finished row's, the stop tokens, from then on, unread); any
        other is looked up in the grammar's `TokenSets`.
        """
        vocab, device = scores.shape[1], str(scores.device)
        changed = self.flat is None
        for r, row in enumerate(words.numpy()):
            last = self.rows[r]
            if r in self.finished:
                if last is not None and last[0] is self.stop_key and last[1] == device:
                    continue
                key = self.stop_key
            else:
                key = row.tobytes()
            if last is None or last[0] != key or last[1] != device:
                self.rows[r] = (key, device, self.grammar.token_sets.ids(key, device) + r * vocab)
                changed = True
        if changed:
            self.flat = torch.cat([ids for _, _, ids in self.rows])
        return self.flat, tuple(ids for _, _, ids in self.rows)

    def _output(self, scores: torch.Tensor, flat: torch.Tensor, rows: tuple) -> torch.Tensor:
        """`scores` at the `flat` ids (`_allowed`), -inf elsewhere, in the memory of one of the last two
        steps' outputs when nothing holds it any more, else in new memory.

        `generate` drops the previous step's masked logits once it has picked the next tokens, so two
        buffers serve a whole answer. A reused one has only its last step's allowed ids to set back to
        -inf, and only in the rows whose mask has changed since (an MDD transcript row keeps its few
        thousand ids step after step), instead of writing the vocabulary's width anew (on CPU, 0.3 ms a
        step at batch 8 and 200k tokens, mostly page faults). What is handed out is a view of the
        buffer, so every holder of its memory (that view, a view of it, a numpy array,
        `generate(output_scores=True)` keeping every step's) adds to the storage's use count: the buffer
        is free when the count is its own alone.
        A buffer written in place since is never reused either, where that can be seen: outside
        `torch.inference_mode` (inference tensors have no version counter), so a processor after this
        one that wrote into its output in inference mode would leave its values behind. transformers'
        own processors never write into their input, and `Predictor` runs this one last.
        """
        for n, (buf, before, version, alone) in enumerate(self.outputs):
            if (_storage_users(buf) == alone and _version(buf) == version
                    and buf.shape == scores.shape and buf.dtype == scores.dtype and buf.device == scores.device):
                del self.outputs[n]
                # A row whose ids are the ones it had then (`_allowed` keeps them) has nothing to set back
                changed = [was for was, now in zip(before, rows) if was is not now]
                if changed:
                    buf.view(-1).index_fill_(0, torch.cat(changed) if len(changed) > 1 else changed[0],
                                             float("-inf"))
                break
        else:
            buf = torch.full_like(scores, float("-inf"), memory_format=torch.contiguous_format)
            alone = _storage_users(buf)
        buf.view(-1).index_copy_(0, flat, scores.reshape(-1).index_select(0, flat))
        out = buf.view(buf.shape)
        if alone is not None:  # without a storage use count to ask, memory is never reused
            self.outputs = [*self.outputs, (buf, rows, _version(buf), alone)][-2:]
        return out

    def _fill(self) -> list[int]:
        """Fill the mask of every row still writing; return the finished rows.

        Rows are filled one after another, or by llguidance's thread pool where the batch is large
        and the machine has the cores: a row takes 2-10 us, and on 2 cores the pool's hand-off costs
        more than it saves at every batch size measured, 8 to 64 rows (benchmarks/bench_constrained.py
        --o200k prints both).
        """
        live = [(m, row) for row, m in enumerate(self.matchers) if not m.is_stopped()]
        base = self.bitmask.data_ptr()
        if len(live) >= PARALLEL_ROWS and _cores() >= PARALLEL_CORES:
            _executor().unsafe_compute_mask_ptr(live, base, self.row_bytes, len(self.matchers))
        else:
            for m, row in live:
                m.unsafe_compute_mask_ptr(base + row * self.row_bytes, self.row_bytes)
        return [row for row, m in enumerate(self.matchers) if m.is_stopped()]

    def _finish(self, step: int, words: torch.Tensor) -> torch.Tensor:
        """Near max_new_tokens, prefer tokens that close a string or the answer where the grammar allows one.

        An untrained or rambling model can write words until the budget ends and leave the JSON
        open; this keeps every constrained answer complete (a transcript cut short, not a failure).
        """
        if self.max_new_tokens is None or step < self.max_new_tokens - FINISH_MARGIN:
            return words
        closing = words & self.grammar.words("closing")
        return torch.where((closing != 0).any(dim=1, keepdim=True), closing, words)


# Rows filled by llguidance's thread pool only from this batch size and core count up (see `_fill`).
PARALLEL_ROWS, PARALLEL_CORES = 32, 8
# Distinct mask rows whose token ids are kept (`TokenSets`): an MDD transcript's row allows about 6,500 of
# Phi-4's tokens (52 KB of ids, plus the row's 25 KB key), so at most about 20 MB per device.
TOKEN_SETS = 256


class TokenSets:
    """The token ids one mask row allows, unpacked once per distinct row and kept on each device used.

    A grammar passes through few distinct masks (an APA row allows one literal token or the 11 scores;
    an MDD row in a transcript allows the same few thousand tokens step after step), so nearly every
    row of every step is one seen before, and applying it costs a lookup instead of unpacking 200k bits.
    Least recently used rows beyond `capacity` are dropped; a lookup compares the whole row, so two
    masks never share an entry.
    """

    def __init__(self, vocab_size: int, capacity: int = TOKEN_SETS):
        self.vocab_size = vocab_size
        self.ids = functools.lru_cache(maxsize=capacity)(self._ids)

    def _ids(self, row: bytes, device: str) -> torch.Tensor:
        """The ascending ids whose bit is set in `row` (one row of int32 words, as bytes), on `device`."""
        if device != "cpu":
            return self.ids(row, "cpu").to(device)
        bits = np.unpackbits(np.frombuffer(row, dtype=np.uint8), bitorder="little")[:self.vocab_size]
        return torch.from_numpy(np.flatnonzero(bits))


def _version(t: torch.Tensor) -> int | None:
    return None if t.is_inference() else t._version


def _storage_users(t: torch.Tensor) -> int | None:
    """How many tensors (and storage objects) share `t`'s memory; None where torch does not say."""
    count = getattr(torch._C, "_storage_Use_Count", None)
    return None if count is None else count(t.untyped_storage()._cdata)


def masked(scores: torch.Tensor, words: torch.Tensor, token_sets: TokenSets) -> torch.Tensor:
    """A new tensor of `scores` with -inf wherever the row's bit of the token is 0 (`words`: [rows,
    ceil(V/32)] int32 on CPU): the whole step of a `GrammarProcessor` without its memory of the last step.

    Bit b of word w is token 32 w + b (llguidance's little-endian layout); `token_sets` unpacks each
    distinct row once.
    """
    vocab, device = scores.shape[1], str(scores.device)
    flat = torch.cat([token_sets.ids(row.tobytes(), device) + r * vocab for r, row in enumerate(words.numpy())])
    out = torch.full_like(scores, float("-inf"), memory_format=torch.contiguous_format)
    return out.view(-1).index_copy_(0, flat, scores.reshape(-1).index_select(0, flat)).view_as(scores)


def pack(allowed: torch.Tensor) -> torch.Tensor:
    """Bool [..., V] to llguidance's int32 words [..., ceil(V/32)], the layout `masked` reads."""
    pad = (-allowed.shape[-1]) % 32
    bits = np.packbits(torch.nn.functional.pad(allowed, (0, pad)).numpy(), axis=-1, bitorder="little")
    return torch.from_numpy(np.ascontiguousarray(bits).view(np.int32).copy())


@functools.cache
def _executor() -> llguidance.LLExecutor:
    """One llguidance thread pool per process, for filling a large batch's mask rows in parallel."""
    return llguidance.LLExecutor()


@functools.cache
def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class ValueLogits(LogitsProcessor):
    """Records the logits of the 11 score tokens at every step, before any masking; changes nothing.

    The same numbers as `generate(output_logits=True)` at those ids, without keeping every step's
    full-vocabulary logits (256 steps x 8 rows x 200,064 floats is 1.6 GB).
    """

    def __init__(self, score_ids: list[int]):
        self.score_ids, self.steps = list(score_ids), []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.steps.append(scores[:, self.score_ids].float().cpu())
        return scores

    def row(self, row: int) -> torch.Tensor:
        """[steps, 11] value logits of one row."""
        return torch.stack([s[row] for s in self.steps]) if self.steps else torch.zeros(0, len(self.score_ids))


def score_distributions(pieces: list[str], token_ids: list[int], value_logits: torch.Tensor,
                        score_ids: list[int]) -> dict[str, list[float]] | None:
    """Each aspect's softmax over the logits of the 11 value tokens at the position of its score.

    `pieces`/`token_ids`: the generated tokens' text and ids; `value_logits`: [steps, 11] (`ValueLogits`).
    None when an aspect's score is not a single value token right after `"aspect": ` (a free-text
    answer in another shape).
    """
    text, starts = "", {}
    for pos, piece in enumerate(pieces):
        starts[len(text)] = pos
        text += piece
    out = {}
    for aspect in ASPECTS:
        match = re.search(rf'"{aspect}":\s*', text)
        pos = starts.get(match.end()) if match else None
        if pos is None or pos >= len(value_logits) or token_ids[pos] not in score_ids:
            return None
        out[aspect] = torch.softmax(value_logits[pos].double(), dim=0).tolist()
    return out


def expected_scores(pieces: list[str], token_ids: list[int], value_logits: torch.Tensor,
                    score_ids: list[int]) -> dict[str, float] | None:
    """Each aspect's Σ v·softmax(logits of the 11 value tokens) at the position of its score
    (`score_distributions`; None when a score has no such position)."""
    dists = score_distributions(pieces, token_ids, value_logits, score_ids)
    return score_fields(dists)["scores_expected"] if dists else None


def score_fields(dists: dict[str, list[float]] | None) -> dict:
    """The record's fields from the score distributions: `scores_expected` (mean), `scores_sd` and
    `scores_interval` ([low, high], the 10th-90th percentiles: `pronlm.evaluation.uncertainty.spread`);
    each null when `dists` is None."""
    if not dists:
        return {"scores_expected": None, "scores_sd": None, "scores_interval": None}
    spreads = {a: spread(p, SCORES) for a, p in dists.items()}
    return {"scores_expected": {a: s.mean for a, s in spreads.items()},
            "scores_sd": {a: s.sd for a, s in spreads.items()},
            "scores_interval": {a: [s.low, s.high] for a, s in spreads.items()}}


def expected_word_scores(pieces: list[str], token_ids: list[int], value_logits: torch.Tensor,
                         score_ids: list[int]) -> list[dict[str, float]] | None:
    """`expected_scores` for a WRD answer: each word's three scores, one dict per word in order.

    None when any score is not a single value token right after its `"aspect": ` (a free-text answer
    in another shape) or an entry lacks one of the three.
    """
    text, starts = "", {}
    for pos, piece in enumerate(pieces):
        starts[len(text)] = pos
        text += piece
    values = torch.tensor(list(SCORES), dtype=torch.float64)
    keys = "|".join(WORD_ASPECTS)
    out: list[dict[str, float]] = []
    for match in re.finditer(rf'"({keys})":\s*', text):
        pos = starts.get(match.end())
        if pos is None or pos >= len(value_logits) or token_ids[pos] not in score_ids:
            return None
        if match.group(1) == WORD_ASPECTS[0]:
            out.append({})
        elif not out or match.group(1) in out[-1]:
            return None
        out[-1][match.group(1)] = round(float((torch.softmax(value_logits[pos].double(), dim=0) * values).sum()), 4)
    return out if all(len(e) == len(WORD_ASPECTS) for e in out) else None


TOP_LOGPROBS = 20  # vLLM's default `max_logprobs`: the alternatives a server returns per position


def expected_from_logprobs(content: list[dict]) -> dict[str, float] | None:
    """The expected scores of `distributions_from_logprobs`."""
    dists = distributions_from_logprobs(content)
    return score_fields(dists)["scores_expected"] if dists else None


def distributions_from_logprobs(content: list[dict]) -> dict[str, list[float]] | None:
    """`score_distributions` from an OpenAI-format `logprobs.content` (vLLM: raw logprobs, before the grammar).

    At each position the value tokens among the chosen token and its `top_logprobs` stand in for the
    11 value logits (a value outside the top `TOP_LOGPROBS` counts as probability 0, which moves the
    mean by less than that tail's mass). Tokens are read by their text ("0".."10"), so no tokenizer
    is needed; None when a score is not one value token.
    """
    return score_distributions(*_logprob_values(content), list(SCORES))


def word_scores_from_logprobs(content: list[dict]) -> list[dict[str, float]] | None:
    """`expected_word_scores` of a WRD answer from its `logprobs.content`, read as `distributions_from_logprobs`."""
    return expected_word_scores(*_logprob_values(content), list(SCORES))


def _logprob_values(content: list[dict]) -> tuple[list[str], list[int], torch.Tensor]:
    """(pieces, ids, [positions, 11] value logits) of a `logprobs.content`: ids are the values 0-10
    (-1 for any other token), the value logits the best logprob of each value among the alternatives."""
    index = {str(v): v for v in SCORES}
    pieces, ids = [], []
    value_logits = torch.full((len(content), len(SCORES)), float("-inf"))
    for pos, item in enumerate(content):
        piece = _token_text(item)
        pieces.append(piece)
        ids.append(index.get(piece, -1))
        for alt in [item, *(item.get("top_logprobs") or [])]:
            value = index.get(_token_text(alt))
            if value is not None and isinstance(alt.get("logprob"), (int, float)):
                value_logits[pos, value] = max(value_logits[pos, value].item(), float(alt["logprob"]))
    return pieces, ids, value_logits


def _token_text(item: dict) -> str:
    """A logprob entry's text: its UTF-8 `bytes` when given (whole characters), else its `token`."""
    raw = item.get("bytes")
    if isinstance(raw, list):
        try:
            return bytes(raw).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            pass
    return str(item.get("token", ""))
