"""Which expected phones were said, substituted, deleted or inserted, per word (pure functions).

The expected phones of the sentence are aligned with the heard phones (MDD) by a weighted edit
distance; each word then gets Azure's `error_type` (None / Mispronunciation / Omission / Insertion)."""

from __future__ import annotations

from dataclasses import dataclass, field

from rapidfuzz.distance import Levenshtein

from pronlm.app.lexicon import Lexicon

CORRECT, SUBSTITUTED, DELETED, INSERTED = "correct", "substituted", "deleted", "inserted"
NONE, MISPRONUNCIATION, OMISSION, INSERTION = "None", "Mispronunciation", "Omission", "Insertion"
NOT_JUDGED = "NotJudged"  # the heard phones could not be read: unknown, not omitted


@dataclass(frozen=True)
class PhoneResult:
    expected: str | None
    heard: str | None
    status: str  # correct | substituted | deleted | inserted


@dataclass
class WordResult:
    word: str
    error_type: str  # None | Mispronunciation | Omission | Insertion | NotJudged
    known: bool  # False: neither CMUdict nor the lexicon knows the word, so it is not judged
    expected_phones: list[str] = field(default_factory=list)  # the pronunciation it was judged against
    heard_phones: list[str] = field(default_factory=list)
    phones: list[PhoneResult] = field(default_factory=list)
    variant: int | None = None  # which of `variants` is `expected_phones` (0: the main one); None: unknown word
    variants: list[list[str]] = field(default_factory=list)  # the word's pronunciations (lexicon order)
    scores: dict | None = None  # accuracy, stress, total 0-10 from the word task, where the run has it
    scores_expected: dict | None = None  # the same, probability-weighted
    phone_scores: list[dict] | None = None  # per expected phone: accuracy 0-100, score 0-2, likely phone


UNKNOWN = None  # an unknown word among the expected phones: a wildcard for any run of heard phones
# Costs in half units. A phone heard where an unknown word stands costs half an insertion, so it
# goes to that word instead of pulling a neighbour's phones out of place; substituting a
# neighbour's phone (2) stays cheaper than deleting it for the unknown word to take (2 + 1).
_SUB = _DEL = _INS = 2
_TAKE = 1


def align_phones(expected: list[str | None], heard: list[str]) -> list[tuple[int, PhoneResult]]:
    """Minimum-cost alignment of heard to expected phones: (index of an expected phone, step) in order.

    A phone heard in addition comes with the index of the expected phone before it (-1 at the
    start); after an `UNKNOWN` wildcard it is that word's. Hand-written dynamic programming rather
    than rapidfuzz because no edit-distance library aligns against a wildcard. Ties go to
    match/substitution, then deletion, then insertion, so the result is deterministic.
    """
    n, m = len(expected), len(heard)
    cost = [[j * _INS for j in range(m + 1)]] + [[0] * (m + 1) for _ in range(n)]
    for i, e in enumerate(expected, 1):
        cost[i][0] = cost[i - 1][0] + (0 if e is UNKNOWN else _DEL)
        for j in range(1, m + 1):
            if e is UNKNOWN:
                cost[i][j] = min(cost[i - 1][j], cost[i][j - 1] + _TAKE)
            else:
                cost[i][j] = min(cost[i - 1][j - 1] + (0 if e == heard[j - 1] else _SUB),
                                 cost[i - 1][j] + _DEL, cost[i][j - 1] + _INS)
    return _backtrace(cost, expected, heard)


def _backtrace(cost: list[list[int]], expected: list[str | None], heard: list[str]) -> list[tuple[int, PhoneResult]]:
    steps = []
    i, j = len(expected), len(heard)
    while i or j:
        e = expected[i - 1] if i else ""
        h = heard[j - 1] if j else None
        if i and j and e is not UNKNOWN and cost[i][j] == cost[i - 1][j - 1] + (0 if e == h else _SUB):
            steps.append((i - 1, PhoneResult(e, h, CORRECT if e == h else SUBSTITUTED)))
            i, j = i - 1, j - 1
        elif i and cost[i][j] == cost[i - 1][j] + (0 if e is UNKNOWN else _DEL):
            if e is not UNKNOWN:
                steps.append((i - 1, PhoneResult(e, None, DELETED)))
            i -= 1
        else:
            steps.append((i - 1, PhoneResult(None, h, INSERTED)))
            j -= 1
    return steps[::-1]


def match_words(expected: list[str], recognised: list[str]) -> tuple[set[int], list[tuple[int, str]]]:
    """Text words against the recognised ones: (indices of text words that were recognised,
    [(position, word)] for each recognised word with no counterpart in the text, said before text
    word `position`). Compared part by part, so that WELL-KNOWN matches WELL KNOWN; rapidfuzz's
    `replace` blocks pair words one to one."""
    parts, owner = [], []
    for i, word in enumerate(expected):
        parts += word.split("-")
        owner += [i] * len(word.split("-"))
    heard = [part for word in recognised for part in word.split("-")]
    said, inserted = set(), []
    for op in Levenshtein.opcodes(parts, heard):
        if op.tag == "equal":
            said.update(owner[op.src_start:op.src_end])
        elif op.tag == "insert":
            at = op.src_start
            if at == len(parts):
                position = len(expected)
            elif at > 0 and owner[at - 1] == owner[at]:  # inside a compound (WELL <THE> KNOWN): after it
                position = owner[at] + 1
            else:
                position = owner[at]
            inserted += [(position, w) for w in heard[op.dest_start:op.dest_end]]
    return said, inserted


def word_feedback(words: list[tuple[str, tuple[str, ...] | None]], heard: list[str],
                  recognised: list[str], lexicon: Lexicon | None = None) -> list[WordResult]:
    """Per-word results in the order spoken: the text's words, with inserted words where they were said.

    Inserted words (recognised, not in the text) join the alignment with their dictionary phones,
    so that their phones are told apart from their neighbours'; unknown words are wildcards. A
    phone heard in addition belongs to the word before it (at the start, to the first word). A
    word with several pronunciations is judged against the one closest to the phones heard for it
    (`choose_variants`), so R IY D for READ is right, not EH mispronounced.
    """
    lexicon = lexicon or Lexicon()
    said, inserted = match_words([w for w, _ in words], recognised)
    entries = _spoken_order(words, inserted, lexicon)
    _align(entries, heard, lexicon)
    if choose_variants(entries):
        _align(entries, heard, lexicon)
    text_words = iter(range(len(words)))
    for result in entries:
        if result.error_type == INSERTION:  # nothing was expected: every phone heard is an insertion
            result.phones = [PhoneResult(None, p.heard, INSERTED) for p in result.phones if p.heard is not None]
        else:
            result.error_type = _error_type(result, said=next(text_words) in said)
        result.heard_phones = [p.heard for p in result.phones if p.heard is not None]
    return entries


def _align(entries: list[WordResult], heard: list[str], lexicon: Lexicon) -> None:
    """Each entry's `phones`: the alignment of all heard phones with the entries' expected phones in a row."""
    expected, owner = [], []
    for n, result in enumerate(entries):
        result.phones = []
        tokens = result.expected_phones or list(lexicon.phones(result.word) or [UNKNOWN])
        expected += tokens
        owner += [n] * len(tokens)
    for t, op in align_phones(expected, heard):
        entries[owner[max(t, 0)]].phones.append(op)


def choose_variants(entries: list[WordResult]) -> bool:
    """Give each text word with several pronunciations the one nearest (edit distance) to the phones
    aligned to it, ties to the lexicon's order; True when any word changed (realign then)."""
    changed = False
    for result in entries:
        if result.error_type == INSERTION or len(result.variants) < 2:
            continue
        segment = [p.heard for p in result.phones if p.heard is not None]
        best = min(range(len(result.variants)), key=lambda k: (Levenshtein.distance(result.variants[k], segment), k))
        if best != result.variant:
            result.variant, result.expected_phones, changed = best, list(result.variants[best]), True
    return changed


def _spoken_order(words, inserted: list[tuple[int, str]], lexicon: Lexicon) -> list[WordResult]:
    """Empty results for the text's words, with the recognised words that are not in the text between them."""
    out = []
    for i in range(len(words) + 1):
        out += [WordResult(w, INSERTION, lexicon.phones(w) is not None) for pos, w in inserted if pos == i]
        if i < len(words):
            word, phones = words[i]
            variants = [list(v) for v in dict.fromkeys([tuple(phones), *lexicon.variants(word)])] if phones else []
            out.append(WordResult(word, NONE, phones is not None, list(phones or ()),
                                  variant=0 if phones else None, variants=variants))
    return out


def _error_type(result: WordResult, said: bool) -> str:
    if not result.known:  # nothing to compare with: omitted only when nothing at all was heard
        return NONE if result.phones or said else OMISSION
    if result.expected_phones and all(p.status == DELETED for p in result.phones):
        return OMISSION
    return NONE if all(p.status == CORRECT for p in result.phones) else MISPRONUNCIATION
