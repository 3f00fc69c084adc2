"""Structured decoding and expected scores: random logits always give answers the parser reads, the
real training targets are accepted token by token, expected scores match hand-computed values."""

from __future__ import annotations

import dataclasses
import json
import math
import re

import pytest
import torch
from llguidance import LLMatcher
from transformers import LogitsProcessorList

from pronlm.data.audio import load_audio
from pronlm.data.parse import parse_answer
from pronlm.data.prompts import END, EOT, PromptSet
from pronlm.data.targets import AccentPolicy, apa_target, mdd_target, wrd_target
from pronlm.evaluation.grammar import (
    ASPECTS,
    AnswerGrammar,
    GrammarError,
    TokenSets,
    ValueLogits,
    answer_grammar,
    answer_schema,
    expected_scores,
    expected_word_scores,
    masked,
    pack,
    phone_pattern,
    score_token_ids,
    word_scores_from_logprobs,
    wrd_grammar,
)
from pronlm.evaluation.predict import Predictor

POLICIES = ("unk", "canonical", "literal")
VOCAB = 1088  # the tiny model's embedding rows (tiny_config rounds the tokenizer's 1026 up to 64s)


def stop_ids(tok):
    return [tok.convert_tokens_to_ids(END), tok.convert_tokens_to_ids(EOT)]


def grammar_for(tok, policy="unk", word_boundaries=False):
    return AnswerGrammar(tok, VOCAB, stop_ids(tok), policy, word_boundaries)


def run_decoder(grammar, tasks, logits_for_step, max_new_tokens, gen):
    """What `generate` does with the processor: greedy or sampled rows, finished rows padded, no model."""
    proc = grammar.processor(tasks, max_new_tokens)
    stops = torch.tensor(grammar.stop_ids)
    ids = torch.zeros(len(tasks), 3, dtype=torch.long)  # a stand-in prompt
    done = torch.zeros(len(tasks), dtype=torch.bool)
    for step in range(max_new_tokens):
        logits, sample = logits_for_step(step)
        masked = proc(ids, logits)
        nxt = torch.multinomial(torch.softmax(masked, -1), 1, generator=gen)[:, 0] if sample else masked.argmax(-1)
        nxt = torch.where(done, torch.full_like(nxt, stops[1]), nxt)
        done |= torch.isin(nxt, stops)
        ids = torch.cat([ids, nxt[:, None]], 1)
        if done.all():
            break
    return ids[:, 3:], done


def random_logits(gen, rows: int):
    """Flat, normal or peaked logits; or one token far above the rest (often one the grammar forbids)."""
    kind = int(torch.randint(4, (1,), generator=gen))
    if kind == 3:
        logits = torch.randn(rows, VOCAB, generator=gen)
        logits[torch.arange(rows), torch.randint(VOCAB, (rows,), generator=gen)] += 50
        return logits
    return torch.randn(rows, VOCAB, generator=gen) * (0.1, 1.0, 20.0)[kind]


@pytest.mark.parametrize("word_boundaries", [False, True])
@pytest.mark.parametrize("policy", POLICIES)
def test_random_logits_always_give_answers_the_parser_reads(tiny_tokenizer, policy, word_boundaries):
    """1,000 decodings in all (6 configurations x 168): APA and MDD rows side by side in each batch."""
    grammar = grammar_for(tiny_tokenizer, policy, word_boundaries)
    gen = torch.Generator().manual_seed(10 * POLICIES.index(policy) + word_boundaries)
    tasks = ["apa", "mdd"] * 12
    for batch in range(7):
        sample = batch % 2 == 1
        ids, done = run_decoder(grammar, tasks, lambda step: (random_logits(gen, len(tasks)), sample), 48, gen)
        assert done.all(), "every row ended with a stop token inside max_new_tokens"
        for task, row in zip(tasks, ids.tolist()):
            raw = tiny_tokenizer.decode(row)
            parsed = parse_answer(task, raw)
            assert parsed["ok"], (raw, parsed["error"])
            text = raw.split(END)[0].split(EOT)[0]
            assert json.dumps(json.loads(text)) == text  # the training targets' exact spacing
            if task == "apa":
                assert parsed["clamped"] == [] and all(0 <= v <= 10 for v in parsed["scores"].values())
            else:
                phones = parsed["phoneme_transcript"].split()
                assert ("|" in phones) <= word_boundaries
                assert any(p.endswith("*") for p in phones) <= (policy == "literal")
                assert re.fullmatch(phone_pattern(policy, word_boundaries), json.loads(text)["phoneme_transcript"])


@pytest.mark.parametrize("word_boundaries", [False, True])
@pytest.mark.parametrize("policy", POLICIES)
def test_every_training_target_is_accepted_token_by_token(tiny_tokenizer, train_utterances, policy, word_boundaries):
    """Training and constrained decoding agree: the tokenized target + <|end|> is a complete answer,
    for the local grammars and for the JSON schema a vLLM server would get."""
    grammar = grammar_for(tiny_tokenizer, policy, word_boundaries)
    schema_matchers = {t: LLMatcher(grammar.lltokenizer, LLMatcher.grammar_from_json_schema(
        answer_schema(t, policy, word_boundaries))) for t in ("apa", "mdd")}
    accent = AccentPolicy(policy)
    starred = 0
    for utt in train_utterances:
        for task, target in (("apa", apa_target(utt.scores)), ("mdd", mdd_target(utt, accent, word_boundaries))):
            ids = tiny_tokenizer(target, add_special_tokens=False).input_ids + [grammar.stop_ids[0]]
            for matcher in (grammar.matcher(task), schema_matchers[task].deep_copy()):
                assert matcher.consume_tokens(ids), (utt.id, target, matcher.get_error())
                assert matcher.is_stopped() and not matcher.is_error()
            starred += "*" in target
    assert starred == (1 if policy == "literal" else 0)  # 014350017 WHALE's L* really was tested


def test_the_grammar_refuses_what_the_targets_never_hold(tiny_tokenizer):
    def accepts(task, text, policy="unk", word_boundaries=False):
        matcher = grammar_for(tiny_tokenizer, policy, word_boundaries).matcher(task)
        return matcher.consume_tokens(tiny_tokenizer(text, add_special_tokens=False).input_ids)

    mdd = '{{"word_transcript": "THE CAT", "phoneme_transcript": "{}"}}'
    assert accepts("mdd", mdd.format("DH AH K AE T"))
    assert not accepts("mdd", mdd.format("DH AH0 K AE T"))  # stress digit
    assert not accepts("mdd", mdd.format("DH AH  K AE T"))  # two spaces
    assert not accepts("mdd", mdd.format("DH AH K AE* T"))  # accented phone, policy unk
    assert accepts("mdd", mdd.format("DH AH K AE* T"), "literal")
    assert not accepts("mdd", mdd.format("DH AH | K AE T"))  # word boundary, boundaries off
    assert accepts("mdd", mdd.format("DH AH | K AE T"), word_boundaries=True)
    assert not accepts("mdd", mdd.format("| DH AH K AE T"), word_boundaries=True)
    assert not accepts("mdd", '{"word_transcript": "the cat", "phoneme_transcript": ""}')
    assert not accepts("mdd", '{"phoneme_transcript": "", "word_transcript": ""}')  # key order
    assert accepts("apa", '{"accuracy": 10, "fluency": 0, "prosodic": 9, "total": 8}')
    assert not accepts("apa", '{"accuracy": 11, "fluency": 0, "prosodic": 9, "total": 8}')
    assert not accepts("apa", '{"accuracy":10, "fluency": 0, "prosodic": 9, "total": 8}')
    ten_as_two = tiny_tokenizer('{"accuracy": 1', add_special_tokens=False).input_ids + \
        tiny_tokenizer("0", add_special_tokens=False).input_ids
    assert not grammar_for(tiny_tokenizer).matcher("apa").consume_tokens(ten_as_two)  # "10" is one token


def test_the_schema_fixes_separators_and_key_order():
    schema = answer_schema("apa")
    assert list(schema["properties"]) == list(ASPECTS) and schema["required"] == list(ASPECTS)
    assert schema["properties"]["total"] == {"type": "integer", "minimum": 0, "maximum": 10}
    assert schema["x-guidance"] == {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
    assert schema["additionalProperties"] is False
    mdd = answer_schema("mdd", "literal", True)
    assert list(mdd["properties"]) == ["word_transcript", "phoneme_transcript"]
    phones = mdd["properties"]["phoneme_transcript"]["pattern"]
    assert re.fullmatch(phones, "DH AH* | <unk> T") and not re.fullmatch(phones, "DH AH |")
    assert re.fullmatch(mdd["properties"]["word_transcript"]["pattern"], "DON'T WELL-KNOWN <unk> A")
    with pytest.raises(GrammarError, match="unknown task"):
        answer_schema("asr")


def test_each_score_is_one_token_of_the_tiny_tokenizer(tiny_tokenizer):
    ids = score_token_ids(tiny_tokenizer)
    assert [tiny_tokenizer.decode([i]) for i in ids] == [str(v) for v in range(11)]
    assert tiny_tokenizer.tokenize('": 8,') == ['":', "Ġ", "8", ","]  # as o200k: `":`, ` `, `8`


def test_a_tokenizer_that_merges_the_space_into_a_score_is_refused(tiny_tokenizer):
    tiny_tokenizer.add_tokens([" 8"])  # " 8" now one token, as the old tiny BPE had it
    with pytest.raises(GrammarError, match="score 8 as one token"):
        score_token_ids(tiny_tokenizer)


def test_expected_scores_are_hand_computed_from_the_value_logits(tiny_tokenizer):
    answer = '{"accuracy": 8, "fluency": 10, "prosodic": 0, "total": 7}'
    ids = tiny_tokenizer(answer, add_special_tokens=False).input_ids
    pieces = [tiny_tokenizer.decode([i]) for i in ids]
    score_ids = score_token_ids(tiny_tokenizer)
    logits = torch.full((len(ids), 11), -1e9)
    at = [i for i, t in enumerate(ids) if t in score_ids]  # the four score positions
    logits[at[0], 7], logits[at[0], 8] = 0.0, math.log(3)  # p(7) = 1/4, p(8) = 3/4
    logits[at[1]] = 0.0  # uniform over 0..10
    logits[at[2], 0] = 30.0  # peaked: the greedy value
    logits[at[3], [2, 7, 9]] = torch.tensor([math.log(1), math.log(2), math.log(5)])
    expected = expected_scores(pieces, ids, logits, score_ids)
    assert expected == pytest.approx({"accuracy": 7.75, "fluency": 5.0, "prosodic": 0.0,
                                      "total": (2 + 14 + 45) / 8}, abs=1e-4)
    # free text in another shape: no score at one position after `"aspect": `
    other = '{"accuracy": "8", "fluency": 10, "prosodic": 0, "total": 7}'
    other_ids = tiny_tokenizer(other, add_special_tokens=False).input_ids
    assert expected_scores([tiny_tokenizer.decode([i]) for i in other_ids], other_ids,
                           torch.zeros(len(other_ids), 11), score_ids) is None


def _set_value_logits(model, tokenizer, boosts: dict[int, float]):
    """A model whose logits of the 11 score tokens are set at every step: 100 + a chosen log-weight for
    `boosts`, -100 for the others (so a boosted value beats every other token where a score is due)."""
    ids = score_token_ids(tokenizer)

    def hook(module, args, output):
        output[..., ids] = -100.0
        for value, log_weight in boosts.items():
            output[..., ids[value]] = 100 + log_weight
        return output

    return model.lm_head.register_forward_hook(hook)


def test_expected_scores_of_a_model_whose_score_distribution_is_set(tiny_model, tiny_tokenizer, train_utterances):
    clip = load_audio(train_utterances[0].audio)
    predictor = Predictor(tiny_model, tiny_tokenizer, PromptSet.from_templates(), max_new_tokens=40,
                          max_audio_seconds=None)
    handle = _set_value_logits(tiny_model, tiny_tokenizer, {7: 0.0, 8: math.log(3)})
    (spread,) = predictor.predict([("a", clip)], tasks=("apa",))
    handle.remove()
    assert spread["ok"] and spread["scores"] == dict.fromkeys(ASPECTS, 8)  # greedy: the likelier value
    assert spread["scores_expected"] == pytest.approx(dict.fromkeys(ASPECTS, 7.75), abs=1e-3)
    assert spread["scores_sd"] == pytest.approx(dict.fromkeys(ASPECTS, math.sqrt(0.25 * 0.75)), abs=1e-3)
    assert spread["scores_interval"] == dict.fromkeys(ASPECTS, [7, 8])  # 10th-90th percentiles
    handle = _set_value_logits(tiny_model, tiny_tokenizer, {3: 0.0})
    (peaked,) = predictor.predict([("a", clip)], tasks=("apa",))
    handle.remove()
    assert peaked["scores"] == dict.fromkeys(ASPECTS, 3)
    assert peaked["scores_expected"] == pytest.approx(dict.fromkeys(ASPECTS, 3.0), abs=1e-3)
    assert peaked["scores_interval"] == dict.fromkeys(ASPECTS, [3, 3])


def test_recorded_value_logits_are_the_raw_logits_of_generate(tiny_model, tiny_tokenizer, train_utterances):
    """`ValueLogits` keeps what `generate(output_logits=True)` gives at the 11 score ids."""
    predictor = Predictor(tiny_model, tiny_tokenizer, PromptSet.from_templates(), max_new_tokens=12,
                          max_audio_seconds=None)
    from pronlm.data.prompts import Example

    examples = [Example("a", t, None, predictor.prompts.for_task(t), None) for t in ("apa", "mdd")]
    clip = load_audio(train_utterances[0].audio)
    batch = predictor.collator(examples, [clip, clip])
    values = ValueLogits(predictor.score_ids)
    grammar = predictor.grammar.processor(["apa", "mdd"], 12)
    out = tiny_model.generate(**batch, max_new_tokens=12, do_sample=False, eos_token_id=predictor.stop_ids,
                              pad_token_id=predictor.collator.pad_id, return_dict_in_generate=True,
                              output_logits=True, output_scores=True,
                              logits_processor=LogitsProcessorList([values, grammar]))
    raw = torch.stack(out.logits, 1)[:, :, predictor.score_ids]
    assert torch.equal(torch.stack([values.row(0), values.row(1)]), raw)
    # every step's masked scores, kept by generate, still pick that step's token (none was recycled)
    new = out.sequences[:, batch["input_ids"].shape[1]:]
    first_stop = [next((i for i, t in enumerate(row) if t in predictor.stop_ids), len(row)) for row in new.tolist()]
    for step, scores in enumerate(out.scores):
        for row in range(2):
            if step <= first_stop[row]:
                assert scores[row].argmax() == new[row, step]


@pytest.mark.slow
def test_the_untrained_tiny_model_answers_in_the_grammar(tiny_model, tiny_tokenizer, train_utterances):
    items = [(u.id, load_audio(u.audio)) for u in train_utterances[:3]]
    constrained = Predictor(tiny_model, tiny_tokenizer, PromptSet.from_templates(), max_new_tokens=60,
                            max_audio_seconds=None)
    records = constrained.predict(items, batch_size=6)
    assert [r["ok"] for r in records] == [True] * 6, [r["error"] for r in records]
    for r in records[::2]:
        assert set(r["scores_expected"]) == set(ASPECTS)
        assert all(0 <= v <= 10 for v in r["scores_expected"].values())
    free = Predictor(tiny_model, tiny_tokenizer, PromptSet.from_templates(), max_new_tokens=60,
                     max_audio_seconds=None, constrained=False)
    assert not any(r["ok"] for r in free.predict(items[:1]))  # untrained, free text: nothing parses


def test_constrained_comes_from_the_config_and_false_is_the_free_text_path():
    from pronlm.cli import _config, parse_args
    from pronlm.config import INFERENCE_DEFAULTS

    cfg, given = _config(parse_args(["predict", "--out", "p.jsonl", "constrained=false"]), None, INFERENCE_DEFAULTS)
    assert cfg.constrained is False and "constrained" in given
    assert _config(parse_args(["predict", "--out", "p.jsonl"]), None, INFERENCE_DEFAULTS)[0].constrained is True
    assert Predictor.load(cfg).grammar is None
    assert Predictor.load(dataclasses.replace(cfg, constrained=True)).grammar is not None


def test_mask_words_are_read_as_llguidance_writes_them():
    """Bit b of int32 word w is token 32 w + b; a vocabulary that is not a multiple of 32 is cut."""
    allowed = torch.zeros(2, 40, dtype=torch.bool)
    allowed[0, [0, 31, 33]] = True
    allowed[1, 39] = True
    words = pack(allowed)
    assert words.tolist() == [[1 - 2**31, 2], [0, 2**7]]  # bits 0 and 31 of word 0: 0x80000001 as int32
    scores = torch.arange(80, dtype=torch.float32).view(2, 40)
    out = masked(scores, words, TokenSets(40))
    assert out[0, [0, 31, 33]].tolist() == [0.0, 31.0, 33.0] and out[1, 39] == 79.0
    assert torch.isinf(out).sum() == 80 - 4 and (out[torch.isinf(out)] < 0).all()
    assert scores[0, 5] == 5.0  # the logits passed in are left as they were (generate keeps them)


def test_the_grammars_are_built_once_per_process_and_say_so(tiny_tokenizer, caplog):
    """A second predictor with an equal tokenizer (a checkpoint's copy) reuses the grammars; the log says
    when they are built (seconds over a 200k vocabulary)."""
    import copy
    import logging

    tiny_tokenizer.add_tokens(["<|fix-cache-test|>"])  # a tokenizer no other test builds grammars for
    with caplog.at_level(logging.INFO, logger="pronlm.evaluation.grammar"):
        first = answer_grammar(tiny_tokenizer, VOCAB, stop_ids(tiny_tokenizer))
        again = answer_grammar(copy.deepcopy(tiny_tokenizer), VOCAB, stop_ids(tiny_tokenizer))
        literal = answer_grammar(tiny_tokenizer, VOCAB, stop_ids(tiny_tokenizer), "literal")
    assert again is first and literal is not first
    assert [r.getMessage().split(" over ")[0] for r in caplog.records if "building" in r.getMessage()] == [
        "building the answer grammars"] * 2


def decode_side_by_side(grammar, tasks, steps, gen, keep=None):
    """Greedy decoding of random logits with a `GrammarProcessor`, beside a twin processor whose masks
    are applied by `masked` with nothing remembered; yields (step, output, expected). `keep(out)` may
    hold on to outputs; finished rows are padded with a stop token, as generate does."""
    proc, twin = grammar.processor(tasks, steps), grammar.processor(tasks, steps)
    ids = torch.zeros(len(tasks), 3, dtype=torch.long)
    done = torch.zeros(len(tasks), dtype=torch.bool)
    for step in range(steps):
        logits = random_logits(gen, len(tasks))
        out = proc(ids, logits.clone())
        expected = masked(logits, twin._masks(ids), TokenSets(VOCAB))
        yield step, out, expected
        nxt = torch.where(done, torch.full_like(done, grammar.stop_ids[1], dtype=torch.long), out.argmax(-1))
        done |= torch.isin(nxt, torch.tensor(grammar.stop_ids))
        ids = torch.cat([ids, nxt[:, None]], 1)
        if keep is not None:
            keep(out)
        del out


@pytest.mark.parametrize("inference", [False, True])
def test_every_step_masks_exactly_the_bits_llguidance_wrote_and_recycles_what_nobody_holds(tiny_tokenizer,
                                                                                            inference):
    """The processor's recycled memory and its memory of each row's last mask give, step by step, what the
    masks give applied afresh: rows finishing at different steps, the closing steer near the budget; in
    inference mode (as `Predictor` generates) too."""
    grammar = grammar_for(tiny_tokenizer, "literal", True)
    gen = torch.Generator().manual_seed(3)
    places = []
    with torch.inference_mode(inference):
        for step, out, expected in decode_side_by_side(grammar, ["apa", "mdd", "mdd", "apa", "mdd"], 60, gen):
            assert torch.equal(out, expected), step
            places.append(out.data_ptr())
    assert len(set(places)) == 2  # two buffers served all 60 steps


@pytest.mark.parametrize("hold", ["reference", "view", "numpy", "written in place"])
def test_a_masked_tensor_someone_holds_or_changed_is_never_written_again(tiny_tokenizer, hold):
    """generate(output_scores=True) keeps every step's tensor; a view holds it as well; a processor after
    this one may write into it (seen outside inference mode). Each is left as it was handed out, and
    every step is still masked right."""
    grammar = grammar_for(tiny_tokenizer)
    gen = torch.Generator().manual_seed(4)
    kept = []

    def keep(out):
        if hold == "written in place":
            out[:, 0] = 1.0  # a recycled tensor would carry this 1.0 into a later step: the equality below fails
        held = {"reference": out, "numpy": out.numpy()}.get(hold, out[:, :7])
        kept.append((held, held.copy() if hold == "numpy" else held.clone()))

    for step, out, expected in decode_side_by_side(grammar, ["apa", "mdd"], 30, gen, keep):
        assert torch.equal(out, expected), step
        if hold == "written in place":
            kept = []  # let it go: only its version counter, not a reference, can keep it from reuse
    assert all((held == copy).all() for held, copy in kept)
    places = {held.ctypes.data if hold == "numpy" else held.data_ptr() for held, _ in kept}
    assert hold == "written in place" or len(places) == len(kept)


def test_masks_are_filled_alike_one_row_after_another_and_by_llguidance_s_thread_pool(tiny_tokenizer, monkeypatch):
    import pronlm.evaluation.grammar as grammar_module

    grammar = grammar_for(tiny_tokenizer, "literal", True)
    tasks = ["apa", "mdd"] * 3

    def decode():
        gen = torch.Generator().manual_seed(5)
        return run_decoder(grammar, tasks, lambda step: (random_logits(gen, len(tasks)), True), 48, gen)[0]

    sequential = decode()
    monkeypatch.setattr(grammar_module, "PARALLEL_ROWS", 1)
    monkeypatch.setattr(grammar_module, "_cores", lambda: 64)
    calls = []
    executor = grammar_module._executor()
    monkeypatch.setattr(grammar_module, "_executor", lambda: calls.append(1) or executor)
    assert torch.equal(decode(), sequential)
    assert len(calls) > 10  # the pool really filled them


def test_logits_of_another_width_than_the_masks_are_refused(tiny_tokenizer):
    grammar = grammar_for(tiny_tokenizer)
    proc = grammar.processor(["apa"])
    with pytest.raises(GrammarError, match=r"the logits are \[1, 1026\] but the grammar masks 1 rows of 1088"):
        proc(torch.zeros(1, 3, dtype=torch.long), torch.zeros(1, 1026))


def test_the_allowed_ids_are_made_on_the_logits_device(tiny_tokenizer):
    """Logits on the meta device: every index the processor uses must be there too (a CPU index would raise)."""
    grammar = grammar_for(tiny_tokenizer)
    proc = grammar.processor(["apa", "mdd"])
    answers = [tiny_tokenizer(json.dumps(a), add_special_tokens=False).input_ids for a in
               ({"accuracy": 8}, {"word_transcript": "A"})]
    ids = torch.zeros(2, 3, dtype=torch.long)
    for step in range(3):
        out = proc(ids, torch.zeros(2, VOCAB, device="meta"))
        assert out.device.type == "meta" and out.shape == (2, VOCAB)
        ids = torch.cat([ids, torch.tensor([[a[step]] for a in answers])], 1)
    assert {ids.device.type for _, _, ids in proc.rows} == {"meta"} and proc.flat.device.type == "meta"
