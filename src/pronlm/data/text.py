"""Sentence text -> the words a reader says: accents folded, numbers spelled out, for every caller.

A pronunciation product judges the words as they are read aloud, in the letters of the English
dictionary: `résumé` is RESUME, `42` is FORTY TWO, `2nd` is SECOND, `don't` and `well-known` stay
one word each. `spoken_form` only rewrites the text (`evaluate` compares word transcripts through
it: plain ASCII text without digits comes back unchanged, so its WER is what it was);
`sentence_words` also splits it into upper-case words and rejects words in another script
(`東京`), which no English pronunciation dictionary can judge.
"""

from __future__ import annotations

import re
import unicodedata

from num2words import num2words

from pronlm.errors import PronlmError

# Typographic apostrophes and hyphens, so that "don’t" and "well‑known" stay one word.
_MARKS = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'", "\u00b4": "'",
                        "\u2010": "-", "\u2011": "-"})
# Latin letters that Unicode does not decompose into a base letter plus accents.
_LATIN_LETTERS = str.maketrans({"ß": "ss", "ẞ": "SS", "æ": "ae", "Æ": "AE", "œ": "oe", "Œ": "OE", "ø": "o",
                                "Ø": "O", "ł": "l", "Ł": "L", "đ": "d", "Đ": "D", "ð": "d", "Ð": "D", "þ": "th",
                                "Þ": "TH", "ħ": "h", "Ħ": "H", "ı": "i", "ŋ": "ng", "Ŋ": "NG", "ŧ": "t", "Ŧ": "T"})
# 42, 1,000, 3.14, 2nd, 50%
_NUMBER = re.compile(r"(\d+(?:,\d{3})*)(?:\.(\d+))?(?:(st|nd|rd|th)\b|(%))?", re.IGNORECASE)
_WORD = re.compile(r"[A-Z]+(?:['-][A-Z]+)*")  # DON'T, O'CLOCK and WELL-KNOWN stay one word
_LETTERS = re.compile(r"[^\W\d_]+")  # runs of letters, any script


class TextError(PronlmError):
    """The text cannot be read as English words."""


def fold_accents(text: str) -> str:
    """Latin letters to their plain English letters (`résumé` -> `resume`, `Straße` -> `Strasse`);
    ligatures and full-width letters too (Unicode NFKD). Other scripts are left as they are."""
    decomposed = unicodedata.normalize("NFKD", text.translate(_LATIN_LETTERS))
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def say_number(match: re.Match) -> str:
    """One number as read aloud: cardinal, ordinal (2nd), decimal digit by digit after "point",
    per cent, and a four-digit number from 1100 to 2099 as a year (1990: NINETEEN NINETY)."""
    digits, decimals, ordinal, percent = match.groups()
    n = int(digits.replace(",", ""))
    if ordinal and not decimals:
        words = num2words(n, to="ordinal")
    elif len(digits) == 4 and 1100 <= n <= 2099 and not decimals:
        words = num2words(n, to="year")
    else:
        words = num2words(n)
    if decimals:
        words += " point " + " ".join(num2words(int(d)) for d in decimals)
    if percent:
        words += " percent"
    return " " + words.replace("-", " ").replace(",", "") + " "


def spell_numbers(text: str) -> str:
    """Every number in the text as English words ("42" -> " forty two ")."""
    return _NUMBER.sub(say_number, text)


def spoken_form(text: str) -> str:
    """The text with accents folded and numbers spelled out; everything else (case, punctuation,
    other scripts) kept. Never fails: it also rewrites what a model answered."""
    return spell_numbers(fold_accents(text))


def plain_word(word: str) -> str:
    """One dictionary headword as `words` spells it (a lexicon file's `Café` -> `CAFE`)."""
    return fold_accents(word.translate(_MARKS)).upper()


def words(text: str) -> list[str]:
    """Upper-case words of the spoken form; apostrophes and hyphens inside a word kept. Words in
    other scripts are left out: use it for what a model answered, `sentence_words` for a sentence."""
    return _WORD.findall(spoken_form(text.translate(_MARKS)).upper())


def sentence_words(text: str) -> list[str]:
    """The words of a sentence to be read aloud; `TextError` when some are not in Latin letters.

    An empty list means the text has no words at all (only punctuation); the caller says so.
    """
    spoken = spoken_form(text.translate(_MARKS))
    foreign = [t for t in _LETTERS.findall(spoken) if not t.isascii()]
    found = _WORD.findall(spoken.upper())
    if foreign and not found:
        raise TextError(f"the text {text[:80]!r} has no words in Latin letters: pronlm judges English read "
                        "aloud, so send the sentence in English spelling")
    if foreign:
        raise TextError(f"the text {text[:80]!r} has words that are not in Latin letters "
                        f"({', '.join(dict.fromkeys(foreign))}): no English pronunciation dictionary can judge "
                        "them; write them in English spelling (e.g. Tokyo) or leave them out")
    return found
