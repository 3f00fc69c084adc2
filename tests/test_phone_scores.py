"""Phone scores (speech-LLM GOP): the formula, the token tree, and the scores of a model whose logits are set."""

from __future__ import annotations

import math

import pytest
import torch

from pronlm.data.audio import load_audio
from pronlm.data.prompts import Example, PromptSet
from pronlm.data.targets import ARPABET, UNK
from pronlm.evaluation.phone_scores import CANDIDATES, PhoneScorer, candidate_logprobs, gop, user_score
from pronlm.evaluation.predict import Predictor


def test_gop_is_twice_the_canonical_share_plus_the_unclear_share():
    logprobs = dict.fromkeys(CANDIDATES, -math.inf)
    logprobs |= {"AH": math.log(0.2), "IH": math.log(0.6), UNK: math.log(0.1), "EH": math.log(0.1)}
    assert gop(logprobs, "AH") == {"phone": "AH", "score": pytest.approx(2 * 0.2 + 0.1), "p": 0.2, "likely": "IH"}
    # not normalised: only the ratios between candidates count
    scaled = {k: v + math.log(0.5) for k, v in logprobs.items()}
    assert gop(scaled, "IH")["score"] == pytest.approx(2 * 0.6 + 0.1)
    assert user_score(gop(scaled, "IH")["score"]) == 65
    assert len(CANDIDATES) == 40 and set(CANDIDATES) == ARPABET | {UNK}


def test_o200k_writes_four_phones_in_two_tokens_and_unk_in_three():
    bpe_openai = pytest.importorskip("bpe_openai")
    enc = bpe_openai.get_encoding("o200k_base")
    later = {p: len(enc.encode(" " + p)) for p in CANDIDATES}
    first = {p: len(enc.encode(p)) for p in CANDIDATES}
    assert {p: n for p, n in later.items() if n > 1} == {"IY": 2, "JH": 2, "OY": 2, "ZH": 2, UNK: 3}
    assert {p: n for p, n in first.items() if n > 1} == {"IY": 2, "JH": 2, UNK: 3}
    # each phone is its own pre-token: the answer's tokens are the phones' tokens in a row
    answer = '{"word_transcript": "X", "phoneme_transcript": "IY JH OY ZH AH <unk> T"}'
    prefix = enc.encode('{"word_transcript": "X", "phoneme_transcript": "')
    phones = enc.encode("IY") + [t for p in ("JH", "OY", "ZH", "AH", UNK, "T") for t in enc.encode(" " + p)]
    assert enc.encode(answer) == prefix + phones + enc.encode('"}')


def _tree(tiny_tokenizer, words, text="THE SIGHT"):
    prompt = [5, 6, 7]  # any prompt: the tree only appends to it
    return PhoneScorer(tiny_tokenizer).tree(prompt, text, words)


def test_the_tree_holds_the_teacher_forced_answer_and_one_branch_per_later_token(tiny_tokenizer):
    tree = _tree(tiny_tokenizer, [["DH", "AH"], ["S", "AY", "T"]])
    scorer = PhoneScorer(tiny_tokenizer)
    answer = tiny_tokenizer('{"word_transcript": "THE SIGHT", "phoneme_transcript": "DH AH S AY T',
                            add_special_tokens=False).input_ids
    assert tree.input_ids[:tree.main_length] == [5, 6, 7] + answer
    branches = sum(len(scorer.pieces(c, first=True)) - 1 for c in CANDIDATES) + 4 * sum(
        len(scorer.pieces(c, first=False)) - 1 for c in CANDIDATES)  # tiny pieces share no prefix
    assert len(tree.input_ids) - tree.main_length == branches
    assert tree.canonical == ["DH", "AH", "S", "AY", "T"] and all(len(r) == 40 for r in tree.reads)


def test_branch_log_probs_equal_those_of_plain_forward_passes(tiny_model, tiny_tokenizer, train_utterances):
    """The tree's one pass gives each candidate the log-probability that a separate causal pass over
    `prompt + answer up to the phone + the candidate's tokens` gives."""
    predictor = Predictor(tiny_model, tiny_tokenizer, PromptSet.from_templates(), max_audio_seconds=None)
    clip = load_audio(train_utterances[0].audio)
    audio = predictor.collator.features([clip])
    prompt, _ = predictor.collator.encode(Example("", "mdd", None, predictor.prompts.mdd, None),
                                          int(audio["audio_embed_sizes"][0]))
    tree = PhoneScorer(tiny_tokenizer).tree(prompt, "THE SIGHT", [["DH", "AH"], ["S", "AY", "T"]])
    got = candidate_logprobs(tiny_model, tree, audio)
    scorer = PhoneScorer(tiny_tokenizer)
    with torch.inference_mode():
        for k in (0, 3):
            start = tree.starts[k]
            for name in ("DH", UNK, "AY", "ZH"):
                seq = scorer.pieces(name, first=k == 0)
                ids = torch.tensor([tree.input_ids[:start] + seq])
                logits = tiny_model(input_ids=ids, **audio).logits[0].float().log_softmax(-1)
                want = sum(logits[start - 1 + j, t].item() for j, t in enumerate(seq))
                assert got[k][name] == pytest.approx(want, abs=1e-4), (k, name)


def _set_logits(model, weights: dict[int, float]):
    """Every row's logits: log(weight) for the given token ids, -1e4 for all others."""
    def hook(module, args, output):
        output[...] = -1e4
        for token, weight in weights.items():
            output[..., token] = math.log(weight)
        return output

    return model.lm_head.register_forward_hook(hook)


def test_phone_scores_are_a_hand_computed_softmax(tiny_model, tiny_tokenizer, train_utterances):
    predictor = Predictor(tiny_model, tiny_tokenizer, PromptSet.from_templates(), max_audio_seconds=None)
    tok = tiny_tokenizer.convert_tokens_to_ids
    # tiny pieces: AH, IY one token each (with or without the space); <unk> is `<` `un` `k` `>` first,
    # `Ġ` `<` `un` `k` `>` after a space
    unk = [tok(t) for t in ("Ġ", "<", "un", "k", ">")]
    assert tiny_tokenizer(" " + UNK, add_special_tokens=False).input_ids == unk
    weights = {tok("AH"): 2, tok("ĠAH"): 2, tok("IY"): 4, tok("ĠIY"): 4,
               **{tok(t): 8 for t in ("Ġ", "<", "un", "k", ">")}}
    z = sum(weights.values())  # 52: every row's softmax denominator (the rest is e^-1e4)
    handle = _set_logits(tiny_model, weights)
    (scores,) = predictor.phone_scores([(load_audio(train_utterances[0].audio), "A HE", [["AH"], ["HH", "IY"]])])
    handle.remove()
    ah, iy = 2 / z, 4 / z
    first_unk, later_unk = (8 / z) ** 4, (8 / z) ** 5

    def expected(phone, unk):
        p = {"AH": ah, "IY": iy, UNK: unk}
        total = sum(p.values())
        return 2 * p.get(phone, 0) / total + unk / total

    assert [s["phone"] for s in scores] == ["AH", "HH", "IY"]
    assert scores[0]["score"] == pytest.approx(expected("AH", first_unk), abs=1e-4)
    assert scores[1]["score"] == pytest.approx(expected("HH", later_unk), abs=1e-4)  # HH: p 0, only <unk>'s share
    assert scores[2]["score"] == pytest.approx(expected("IY", later_unk), abs=1e-4)
    assert scores[2]["p"] == pytest.approx(iy / (ah + iy + later_unk), abs=1e-4)
    assert [s["likely"] for s in scores] == ["IY", "IY", "IY"]


def test_the_real_shape_takes_the_tree_in_one_pass_and_computes_only_the_rows_read():
    """Phi-4-multimodal's real config (longrope, sliding-window mask function) on the meta device: the
    4-D mask, the branch positions and the rows to keep go through; logits come only for those rows."""
    from transformers import Phi4MultimodalForCausalLM

    from pronlm.evaluation.phone_scores import PhoneTree
    from pronlm.model.phi4_config import real_config

    with torch.device("meta"):
        model = Phi4MultimodalForCausalLM(real_config()).eval()
    positions = list(range(30)) + [20] * 5 + [21] * 5  # five two-token branches at the phone starting at 20
    parents = [-1] * 30 + [19] * 5 + list(range(30, 35))
    tree = PhoneTree(list(range(100, 140)), positions, parents, [20], [[("X", [(19, 1), (30, 2)])]], ["X"], 30)
    mask = torch.zeros(1, 1, 40, 40, dtype=model.dtype).masked_fill(~tree.attention(), torch.finfo(model.dtype).min)
    out = model(input_ids=torch.tensor([tree.input_ids], device="meta"), attention_mask=mask.to("meta"),
                position_ids=torch.tensor([tree.position_ids], device="meta"),
                logits_to_keep=torch.tensor([19, 30, 35], device="meta"))
    assert out.logits.shape == (1, 3, 200_064)


def test_the_language_model_leaves_flash_attention_for_the_tree_and_returns_to_it():
    from pronlm.evaluation.phone_scores import _mask_capable_attention

    class StandIn:  # what the context manager touches of a model loaded with flash-attention 2
        def __init__(self):
            self.config = type("C", (), {"_attn_implementation": "flash_attention_2"})()
            self.calls = []

        def set_attn_implementation(self, value):
            self.calls.append(value)
            self.config._attn_implementation = value[""]

    model = StandIn()
    with _mask_capable_attention(model):
        assert model.config._attn_implementation == "sdpa"
    assert model.calls == [{"": "sdpa"}, {"": "flash_attention_2"}]
    sdpa = StandIn()
    sdpa.config._attn_implementation = "sdpa"
    with _mask_capable_attention(sdpa):
        pass
    assert sdpa.calls == []


def test_tree_attention_hand_built():
    """Main tokens causal; a branch token sees the main sequence before its phone, its ancestors, itself."""
    from pronlm.evaluation.phone_scores import PhoneTree

    # main: 4 tokens, the phone starts at 3; branch 4 continues row 2 (the token before the phone), 5 continues 4
    tree = PhoneTree([1, 2, 3, 4, 5, 6], [0, 1, 2, 3, 3, 4], [-1, -1, -1, -1, 2, 4], [3], [], [], 4)
    assert tree.attention().int().tolist() == [[1, 0, 0, 0, 0, 0],
                                               [1, 1, 0, 0, 0, 0],
                                               [1, 1, 1, 0, 0, 0],
                                               [1, 1, 1, 1, 0, 0],
                                               [1, 1, 1, 0, 1, 0],
                                               [1, 1, 1, 0, 1, 1]]
