"""Phone scores from the MDD task without more training: a speech-LLM goodness of pronunciation (GOP).

The MDD answer is teacher-forced with the canonical phones (`{"word_transcript": TEXT,
"phoneme_transcript": "DH AH ..."}`). At each canonical phone's position the model gives a
probability to every phone it could have written there: a phone's probability is that of its whole
token sequence (o200k writes 34 of the 39 phones after a space as one token, ` IY` ` JH` ` OY` ` ZH`
as two and ` <unk>` as three; the first phone, after `"`, has no space: `IY` and `JH` two, `<unk>`
three). Renormalised over the 39 phones and `<unk>`, p(q) is the model's belief that q was said:

    score (0-2, SpeechOcean762's phone accuracy) = 2·p(canonical) + 1·p(<unk>)
    score (0-100, for users)                     = 50 · score

as the annotation's scale reads: 2 the canonical phone, 1 heavily accented (`<unk>` is what the
accented phones became in training, accent policy `unk`), 0 another phone. `likely` is the phone
the model found likeliest there ("sounds most like").

Cost: one forward pass per utterance. The first token of every candidate comes from the
teacher-forced sequence itself; the later tokens of multi-token candidates come from the same
pass, as branches of a token tree appended to the sequence (each branch token sees the prompt up
to its phone and its own earlier tokens, through a 4-D attention mask, at the position it would
have). With o200k that is 6 extra tokens per phone (` I`, ` J`, ` O`, ` Z`, ` <`, `unk`), and the
logits are computed only at the ~7 rows per phone that are read.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass

import torch

from pronlm.data.targets import ARPABET, UNK, WORD_SEPARATOR

CANDIDATES = (*sorted(ARPABET), UNK)  # what the model may write at a phone's position
USER_SCALE = 50  # 0-2 -> 0-100


def gop(logprobs: dict[str, float], canonical: str) -> dict:
    """A canonical phone's score from the log-probabilities of the candidates at its position.

    `{"phone", "score" (0-2: 2·p(canonical) + p(<unk>)), "p" (p(canonical)), "likely"}`, with p the
    softmax over the candidates given (the 39 phones and `<unk>`).
    """
    names = list(logprobs)
    p = torch.softmax(torch.tensor([logprobs[n] for n in names], dtype=torch.float64), dim=0).tolist()
    prob = dict(zip(names, p))
    score = 2 * prob.get(canonical, 0.0) + prob.get(UNK, 0.0)
    return {"phone": canonical, "score": round(score, 4), "p": round(prob.get(canonical, 0.0), 4),
            "likely": max(names, key=prob.get)}


def user_score(score: float) -> int:
    """The 0-2 phone score on the 0-100 scale users see."""
    return round(USER_SCALE * score)


@dataclass
class PhoneTree:
    """One utterance's teacher-forced MDD answer with its candidate branches, ready for one forward."""

    input_ids: list[int]
    position_ids: list[int]
    parents: list[int]  # per token: -1 for the main sequence (causal), else the row it continues
    starts: list[int]  # per canonical phone: the index of its first token in the main sequence
    reads: list[list[tuple[str, list[tuple[int, int]]]]]  # per phone: each candidate, the (row, token) it sums
    canonical: list[str]
    main_length: int

    def attention(self) -> torch.Tensor:
        """[T, T] bool: main tokens causal; a branch token sees the main sequence before its phone,
        its own earlier branch tokens and itself."""
        n = len(self.input_ids)
        allowed = torch.zeros(n, n, dtype=torch.bool)
        allowed[:self.main_length, :self.main_length] = torch.tril(torch.ones(self.main_length, self.main_length,
                                                                              dtype=torch.bool))
        for row in range(self.main_length, n):
            allowed[row, row] = True
            up = self.parents[row]
            while up >= self.main_length:
                allowed[row, up] = True
                up = self.parents[up]
            allowed[row, :up + 1] = True  # the main sequence up to the token before the phone
        return allowed


class PhoneScorer:
    """Builds the token tree of a teacher-forced MDD answer (its tokenizer's own pieces) and scores it."""

    def __init__(self, tokenizer, word_boundaries: bool = False):
        self.tokenizer, self.word_boundaries = tokenizer, word_boundaries
        self._pieces: dict[tuple[str, bool], list[int]] = {}
        self.separator = self._encode(" " + WORD_SEPARATOR)

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def pieces(self, phone: str, first: bool) -> list[int]:
        """A phone's tokens: right after the opening quote (`first`), else after a space."""
        if (phone, first) not in self._pieces:
            self._pieces[phone, first] = self._encode(phone if first else " " + phone)
        return self._pieces[phone, first]

    def answer_prefix(self, text: str) -> list[int]:
        """The answer's tokens up to the opening quote of the phoneme transcript (as `mdd_target` writes it)."""
        start = json.dumps({"word_transcript": text, "phoneme_transcript": ""})
        return self._encode(start[:-2])  # drop the closing `"}`

    def tree(self, prompt_ids: list[int], text: str, words: list[list[str]]) -> PhoneTree:
        """The tree of one utterance: `words` are the canonical phones of each word of `text`."""
        ids = list(prompt_ids) + self.answer_prefix(text)
        starts, canonical = [], []
        for w, phones in enumerate(p for p in words if p):
            if w and self.word_boundaries:
                ids += self.separator
            for phone in phones:
                starts.append(len(ids))
                canonical.append(phone)
                ids += self.pieces(phone, first=len(starts) == 1)
        main = len(ids)
        positions, parents, reads = list(range(main)), [-1] * main, []
        for k, (start, phone) in enumerate(zip(starts, canonical)):
            nodes: dict[tuple[int, ...], int] = {}  # a token prefix shared by candidates is one branch node
            phone_reads = []
            for name in dict.fromkeys((*CANDIDATES, phone)):
                seq, pairs, row = self.pieces(name, first=k == 0), [], start - 1
                for j, token in enumerate(seq):
                    pairs.append((row, token))
                    if j + 1 < len(seq):  # the next token is read from this token's row: a branch node
                        if tuple(seq[:j + 1]) not in nodes:
                            nodes[tuple(seq[:j + 1])] = len(ids)
                            ids.append(token)
                            positions.append(start + j)
                            parents.append(row)
                        row = nodes[tuple(seq[:j + 1])]
                phone_reads.append((name, pairs))
            reads.append(phone_reads)
        return PhoneTree(ids, positions, parents, starts, reads, canonical, main)


@contextlib.contextmanager
def _mask_capable_attention(model):
    """The language model on sdpa for the call: flash-attention takes no 4-D mask (the audio encoder
    is on sdpa already, `pronlm.model.load`)."""
    current = model.config._attn_implementation
    if not str(current).startswith("flash"):
        yield
        return
    model.set_attn_implementation({"": "sdpa"})
    try:
        yield
    finally:
        model.set_attn_implementation({"": current})


@torch.inference_mode()
def candidate_logprobs(model, tree: PhoneTree, audio: dict[str, torch.Tensor]) -> list[dict[str, float]]:
    """One forward pass over the tree: per canonical phone, each candidate's log-probability there.

    `audio`: the collator's features of the clip. Logits only at the rows read (`logits_to_keep`).
    """
    device, dtype = model.device, model.dtype
    rows = sorted({row for phone in tree.reads for _, pairs in phone for row, _ in pairs})
    mask = torch.zeros(1, 1, len(tree.input_ids), len(tree.input_ids), dtype=dtype)
    mask.masked_fill_(~tree.attention(), torch.finfo(dtype).min)  # a 4-D mask is used as given (transformers)
    with _mask_capable_attention(model):
        out = model(input_ids=torch.tensor([tree.input_ids], device=device), attention_mask=mask.to(device),
                    position_ids=torch.tensor([tree.position_ids], device=device),
                    logits_to_keep=torch.tensor(rows, device=device), **{k: v.to(device) for k, v in audio.items()})
    logprobs = torch.log_softmax(out.logits[0].float(), dim=-1).cpu()
    at = {row: n for n, row in enumerate(rows)}
    return [{name: float(sum(logprobs[at[row], token] for row, token in pairs)) for name, pairs in options}
            for options in tree.reads]


def score_tree(model, tree: PhoneTree, audio: dict[str, torch.Tensor]) -> list[dict]:
    """`gop` of each canonical phone of the tree, from one forward pass."""
    return [gop(lp, phone) for phone, lp in zip(tree.canonical, candidate_logprobs(model, tree, audio))]
