"""`pronlm plan` on the real model's shape: the parameter counts, the arithmetic of each figure, the tokens,
and the README's recipe table, recomputed."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pronlm.cli import main
from pronlm.config import load_config
from pronlm.model.plan import README_RECIPES, plan, readme_table

README = Path(__file__).resolve().parents[1] / "README.md"
CORPUS = Path(__file__).resolve().parents[2] / "shared/data/speechocean762"
LORA_320 = 32 * 320 * ((3072 + 5120) + (3072 + 3072) + (3072 + 2 * 8192) + (8192 + 3072))  # A + B, 4 targets


@pytest.fixture(scope="module")
def plans():
    rows = []
    for name, overrides in README_RECIPES:
        cfg = load_config(name, overrides)
        rows.append((name, overrides, cfg, plan(cfg)))
    return rows


def by(plans, name, four_bit=False):
    return next(p for n, o, _, p in plans if n == name and bool(o) == four_bit)


def test_parameters_of_the_real_shape(plans):
    lora, unfreeze = by(plans, "paper-lora"), by(plans, "paper-unfreeze")
    assert LORA_320 == 461_373_440
    assert lora["parameters"]["trainable"] == LORA_320 + 2 * 3072  # + the two control-token rows
    assert lora["parameters"]["frozen_by_dtype"] == {"bfloat16": 4_743_988_032}  # 4.744 B: 9.49 GB in bf16
    assert unfreeze["parameters"]["trainable"] - lora["parameters"]["trainable"] == 453_827_200  # encoder + projector
    # 4-bit: the 4 linears of each of the 32 layers; the rest (embedding, towers, norms) stays bf16
    nf4 = 32 * (3072 * 5120 + 3072 * 3072 + 3072 * 16384 + 8192 * 3072)
    four = by(plans, "new-lora", four_bit=True)["parameters"]["frozen_by_dtype"]
    assert four == {"nf4": nf4, "bfloat16": 4_743_988_032 - nf4}
    assert by(plans, "new-lora")["parameters"]["trainable"] == LORA_320 // 5 + 2 * 3072  # r 64


def test_training_memory_adds_up(plans):
    p = by(plans, "paper-lora")
    mem, n = p["training_memory"], p["parameters"]["trainable"]
    assert mem["weights"] == 2 * 4_743_988_032 + 4 * n
    assert (mem["gradients"], mem["optimizer"]) == (4 * n, 8 * n)
    act = mem["activations"]
    # 16h + 4kv + 8i + 8r, + 3 bytes per LoRA input (dropout 0.01): 49,152 + 4,096 + 65,536 + 2,560 + 52,224
    assert act["per_layer_per_token"] == 173_568
    tokens = 8 * p["tokens_per_epoch"]["longest"]
    assert act["language_model"] == (32 * 2 * 3072 + 173_568) * tokens  # checkpointing: layer inputs + one layer
    # logits only at the answers: the longest answer (an MDD transcript + <|end|><|endoftext|>) x the batch
    assert act["logits"] == 12 * 200_064 * 8 * p["tokens_per_epoch"]["longest_answer"] and act["audio_encoder"] == 0
    assert act["logits"] * 5 < 12 * 200_064 * tokens  # at every position it was 13.4 GB
    assert mem["total"] == mem["weights"] + 12 * n + act["total"]
    four = by(plans, "new-lora", four_bit=True)["training_memory"]["weights"]
    assert four < by(plans, "new-lora")["training_memory"]["weights"] - 4.5e9  # 3.2 B params: 2 -> ~0.52 bytes


def test_tokens_per_epoch_on_speechocean762(plans):
    t = by(plans, "paper-lora")["tokens_per_epoch"]
    apa, mdd = t["per_task"]["apa"], t["per_task"]["mdd"]
    assert (apa["examples"], apa["prompt"], apa["answer"]) == (2500, 2500 * 413, 2500 * 29)
    assert (mdd["examples"], mdd["prompt"]) == (2500, 2500 * 125)
    assert apa["audio"] == mdd["audio"] == 127_938  # the 200 clips cycled: 12.5 x their 10,235 audio tokens
    assert t["tokens"] == sum(v for task in (apa, mdd) for k, v in task.items() if k != "examples")
    assert t["positions"] == pytest.approx(t["tokens"] / (1 - t["padding_share"]))


def test_flops_and_hours(plans):
    p = by(plans, "paper-lora")
    lm = 3_221_422_080 + LORA_320  # the 32 layers, LoRA
    positions = p["tokens_per_epoch"]["positions"]
    answers = sum(t["answer"] for t in p["tokens_per_epoch"]["per_task"].values())
    head = 6 * 200_064 * 3072 * answers  # lm_head at the answer tokens only
    assert p["flops_per_epoch"] > 6 * lm * positions + head  # + attention + the encoder's forward
    assert p["flops_per_epoch"] < 6.5 * lm * positions + head
    assert p["hours"]["A100 80GB"] == pytest.approx(4 * p["flops_per_epoch"] / (312e12 * 0.4) / 3600)


@pytest.mark.skipif(not CORPUS.is_dir(), reason="needs ../shared/data/speechocean762")
def test_a_local_corpus_is_counted_from_its_own_clips():
    import soundfile

    from pronlm.data.corpus import read_kaldi_dir
    from pronlm.model.collate import n_audio_tokens

    p = plan(load_config("paper-lora", {"corpus": str(CORPUS)}))
    audio = sum(n_audio_tokens(soundfile.info(u.audio).frames) for u in read_kaldi_dir(CORPUS, "train"))
    assert p["tokens_per_epoch"]["per_task"]["mdd"]["examples"] == 36
    assert p["tokens_per_epoch"]["per_task"]["apa"]["audio"] == audio
    assert "its own clips" in p["corpus"]


@pytest.mark.skipif(not CORPUS.is_dir(), reason="needs ../shared/data/speechocean762")
def test_a_three_task_plan_counts_the_word_task_example_by_example():
    """The word task's prompt holds each sentence's words: a local corpus's are counted whole, prompt by
    prompt, with its answers; the shipped distribution gives every task of the recipe too."""
    from pronlm.data.corpus import read_kaldi_dir
    from pronlm.data.lengths import END_TOKENS, o200k
    from pronlm.data.prompts import AUDIO_PLACEHOLDER, PromptSet, build_examples
    from pronlm.data.targets import AccentPolicy

    cfg = load_config("three-task", {"corpus": str(CORPUS)})
    wrd = plan(cfg)["tokens_per_epoch"]["per_task"]["wrd"]
    examples = [ex for u in read_kaldi_dir(CORPUS, "train") for ex in
                build_examples(u, PromptSet.from_config(cfg), AccentPolicy(cfg.accent_policy), cfg.word_boundaries,
                               ("wrd",))]
    counter = o200k()
    assert wrd["examples"] == len(examples) == 36
    assert wrd["prompt"] == sum(counter.count(ex.prompt.replace(AUDIO_PLACEHOLDER, "")) for ex in examples)
    assert wrd["answer"] == sum(counter.count(ex.target) + END_TOKENS for ex in examples)
    shipped = plan(load_config("three-task"))["tokens_per_epoch"]["per_task"]
    assert list(shipped) == ["apa", "mdd", "wrd"] and shipped["wrd"]["examples"] == 2500
    assert shipped["wrd"]["answer"] > 2 * shipped["mdd"]["answer"]  # a JSON entry of three scores per word


def test_the_readme_table_is_the_plan(plans):
    text = README.read_text()
    block = re.search(r"<!-- plan-table:[^\n]*-->\n(.*?)\n<!-- plan-table end -->", text, re.S).group(1)
    assert block == readme_table(plans)


def test_plan_command_prints_json(capsys):
    assert main(["plan", "--recipe", "new-lora", "--format", "json", "lora_r=8"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["recipe"]["lora_r"] == 8
    assert out["parameters"]["trainable"] == LORA_320 // 40 + 2 * 3072


def test_prefix_cache_shares_only_the_control_token_in_the_paper_layout(plans):
    cache = by(plans, "paper-lora")["prefix_cache"]
    # <|user|><|APA|> before the audio; instructions first: all but <|end|><|assistant|> (413 - 2, 125 - 2)
    assert cache["apa"] == {"shared_paper": 2, "shared_instructions_first": 411, "shared": 2,
                            "prefill_saved_per_1000_requests": 409_000}
    assert cache["mdd"]["shared_instructions_first"] == 123
    assert cache["mdd"]["prefill_saved_per_1000_requests"] == 121_000


def test_readme_gives_plan_s_prefix_cache_figures(plans):
    cache = by(plans, "paper-lora")["prefix_cache"]
    text = " ".join(README.read_text().split())
    apa, mdd = cache["apa"], cache["mdd"]
    assert (f"{apa['prefill_saved_per_1000_requests']:,} APA and {mdd['prefill_saved_per_1000_requests']:,} MDD "
            "prefill tokens per 1,000 requests (shared prefix "
            f"{apa['shared_paper']} → {apa['shared_instructions_first']} and "
            f"{mdd['shared_paper']} → {mdd['shared_instructions_first']} tokens)") in text


def test_prefix_cache_under_the_recipe_s_own_layout():
    from pronlm.model.plan import prefix_cache

    cache = prefix_cache(load_config("paper-lora", ["prompt_layout=instructions-first"]))
    assert (cache["apa"]["shared"], cache["mdd"]["shared"]) == (411, 123)  # all but <|end|><|assistant|>
    assert cache["apa"]["prefill_saved_per_1000_requests"] == 409_000  # the comparison does not depend on it


def test_memory_at_another_batch_shape_is_the_same_formula(plans):
    from pronlm.model.plan import training_memory_at

    for name, _, cfg, p in plans[:3]:
        tok = p["tokens_per_epoch"]
        longest_audio = 255  # the 20.4 s clip of the 200: (326,528 - 400) // 160 + 1 = 2,039 frames / 8
        at = (tok["longest"], longest_audio, tok["longest_answer"])
        assert training_memory_at(cfg, p, 8, *at) == p["training_memory"]["total"], name
        assert training_memory_at(cfg, p, 4, *at) < p["training_memory"]["total"]
