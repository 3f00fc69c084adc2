"""Recipes load into one validated config; overrides are typed; mistakes are named."""

from __future__ import annotations

import pytest

from pronlm.config import (
    Config,
    ConfigError,
    command_config,
    load_config,
)
from pronlm.run import Run


@pytest.mark.parametrize("name", ["paper-lora", "paper-unfreeze", "new-lora", "tiny-cpu"])
def test_every_packaged_recipe_loads(name):
    assert isinstance(load_config(name), Config)


def test_paper_recipe_has_the_papers_hyper_parameters():
    c = load_config("paper-lora")
    assert (c.strategy, c.learning_rate, c.per_device_train_batch_size, c.gradient_accumulation_steps) == \
        ("speech-lora", 2e-5, 8, 8)
    assert (c.num_train_epochs, c.save_strategy, c.lr_scheduler_type, c.warmup_ratio, c.weight_decay) == \
        (4, "epoch", "cosine", 0.03, 0.01)
    assert (c.dtype, c.max_grad_norm, c.revision, c.trust_remote_code) == ("bf16", 1.0, "refs/pr/70", False)
    assert load_config("paper-unfreeze").strategy == "unfreeze"


def test_overrides_are_parsed_by_type():
    c = load_config("tiny-cpu", ["learning_rate=1e-2", "num_train_epochs=2", "group_by_length=false",
                                 "limit=3", "output_dir=runs/x", "revision=null"])
    assert (c.learning_rate, c.num_train_epochs, c.group_by_length, c.limit, c.output_dir, c.revision) == \
        (0.01, 2.0, False, 3, "runs/x", None)


@pytest.mark.parametrize("override, message", [
    ("learning_rat=1", "known key"),
    ("learning_rate", "key=value"),
    ("learning_rate=fast", "takes a number"),
    ("group_by_length=maybe", "true or false"),
    ("strategy=full", "strategy takes one of speech-lora, unfreeze, new-lora, not 'full'"),
    ("accent_policy=star", "accent_policy takes one of unk, canonical, literal, not 'star'"),
    ("lora_r=abc", r"lora_r takes a whole number >= 1, not 'abc'"),
    ("limit=-3", r"limit takes a whole number >= 1, or null, not -3"),
    ("max_new_tokens=0", r"max_new_tokens takes a whole number >= 1, not 0"),
    ("lora_dropout=1", r"lora_dropout takes a number >= 0 and < 1, not 1.0"),
    ("split=dev", r"split takes one of train, test, or null, not 'dev'"),
    ("prompt_layout=audio-last", "prompt_layout takes one of paper, instructions-first, not 'audio-last'"),
])
def test_bad_overrides_are_named(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("tiny-cpu", [override])


def test_unknown_recipe_lists_the_known_ones():
    with pytest.raises(ConfigError, match="paper-lora"):
        load_config("paper-lora-typo")


def test_unknown_key_in_a_recipe_file(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("base: tiny\nlora_rank: 8\n")
    with pytest.raises(ConfigError, match="lora_rank"):
        load_config(str(recipe))


# ---- one config for every command: recipe or checkpoint, then flags and key=value overrides


def test_a_command_config_is_the_recipe_then_flags_and_overrides():
    cfg = command_config("tiny-cpu", ["split=test", "limit=3"], {"accent_policy": ("--accent-policy canonical",
                                                                                   "canonical")})
    assert (cfg.base, cfg.apa_template, cfg.split, cfg.limit, cfg.accent_policy) == ("tiny", "short", "test", 3,
                                                                                     "canonical")
    assert command_config(None, [], None, None, {"base": "tiny"}).base == "tiny"  # no recipe: the defaults given
    assert command_config().base == Config().base


def test_a_flag_and_an_override_that_disagree_name_both():
    flags = {"accent_policy": ("--accent-policy canonical", "canonical")}
    with pytest.raises(ConfigError, match="--accent-policy canonical disagrees with accent_policy=literal"):
        command_config("tiny-cpu", ["accent_policy=literal"], flags)
    assert command_config("tiny-cpu", ["accent_policy=canonical"], flags).accent_policy == "canonical"
    with pytest.raises(ConfigError, match="--limit 3 disagrees with limit=4"):
        command_config(None, ["limit=4"], {"limit": ("--limit 3", "3")})
    with pytest.raises(ConfigError, match="accent_policy takes one of unk, canonical, literal"):  # validated where a recipe is: Config
        command_config(None, [], {"accent_policy": ("--accent-policy star", "star")})


@pytest.fixture()
def checkpoint(tmp_path):
    """A checkpoint folder as training leaves it: config.yaml and the prompt texts (no weights needed here)."""
    folder = tmp_path / "run" / "checkpoint-2"
    Run(folder).describe(load_config("tiny-cpu", ["corpus=/data/so762", "limit=2", "word_boundaries=true"]))
    return folder


def test_with_an_adapter_the_checkpoints_config_is_the_start(checkpoint):
    cfg = command_config(adapter=str(checkpoint))
    assert (cfg.base, cfg.strategy, cfg.corpus, cfg.word_boundaries) == ("tiny", "new-lora", "/data/so762", True)
    assert cfg.apa_template == str(checkpoint / "prompts" / "apa.txt")  # its own copy, by content
    assert cfg.limit is None  # the run's limit counted its training utterances
    cfg = command_config(None, ["split=test", "limit=5", "corpus=/other", "max_audio_seconds=20",
                                "apa_template=short", "base=tiny"], adapter=str(checkpoint))
    assert (cfg.split, cfg.limit, cfg.corpus, cfg.max_audio_seconds) == ("test", 5, "/other", 20.0)


@pytest.mark.parametrize("given, message", [
    (["accent_policy=canonical"], "accent_policy=canonical disagrees with the checkpoint, which was trained with unk"),
    (["word_boundaries=false"], "word_boundaries=false disagrees with the checkpoint, which was trained with True"),
    (["strategy=speech-lora"], "strategy=speech-lora disagrees with the checkpoint, which was trained with new-lora"),
    (["revision=main"], "revision=main disagrees with the checkpoint, which was trained with refs/pr/70"),
    (["prompt_layout=instructions-first"], "prompt_layout=instructions-first disagrees with the checkpoint, which was "
                                           "trained with paper"),
    (["apa_template=default"], "apa_template=default disagrees with the checkpoint, which was trained with .*apa.txt"),
    (["base=microsoft/Phi-4-multimodal-instruct"], "base=microsoft/Phi-4-multimodal-instruct disagrees with the "
                                                   "checkpoint, which was trained with tiny"),
])
def test_an_override_that_changes_the_trained_model_is_an_error_naming_both(checkpoint, given, message):
    with pytest.raises(ConfigError, match=message):
        command_config(None, given, adapter=str(checkpoint))


def test_a_task_the_checkpoint_was_not_trained_on_is_refused_and_fewer_are_fine(checkpoint):
    with pytest.raises(ConfigError, match=r"tasks=apa,mdd,wrd asks for wrd, which the checkpoint was not trained on "
                                          r"\(its tasks: apa, mdd\)"):
        command_config(None, ["tasks=apa,mdd,wrd"], adapter=str(checkpoint))
    assert command_config(None, ["tasks=apa"], adapter=str(checkpoint)).tasks == ["apa"]


def test_a_recipe_beside_an_adapter_is_checked_against_the_checkpoint(checkpoint):
    with pytest.raises(ConfigError, match=r"recipe tiny-cpu \(word_boundaries: False\) disagrees with the "
                                          "checkpoint, which was trained with True"):
        command_config("tiny-cpu", [], adapter=str(checkpoint))
    cfg = command_config("tiny-cpu", ["split=test", "word_boundaries=true"], adapter=str(checkpoint))  # as trained
    assert (cfg.corpus, cfg.word_boundaries, cfg.split) == ("/data/so762", True, "test")  # the checkpoint's own
    with pytest.raises(ConfigError, match=r"recipe paper-lora \(base: microsoft/Phi-4-multimodal-instruct\) "
                                          "disagrees with the checkpoint, which was trained with tiny"):
        command_config("paper-lora", [], adapter=str(checkpoint))


def test_an_adapter_without_a_config_starts_from_the_recipe_or_defaults(tmp_path):
    assert command_config("paper-lora", [], adapter=str(tmp_path)).base == "microsoft/Phi-4-multimodal-instruct"
    assert command_config(None, [], adapter=str(tmp_path), defaults={"base": "tiny"}).base == "tiny"


def test_each_field_has_one_section_and_the_saved_config_is_sectioned(tmp_path):
    import dataclasses

    import yaml

    from pronlm.config import SECTIONS, DataConfig, ModelConfig

    names = [f.name for cls in SECTIONS.values() for f in dataclasses.fields(cls)]
    assert len(names) == len(set(names)) == len(dataclasses.fields(Config))
    assert isinstance(Config(), ModelConfig) and isinstance(Config(), DataConfig)
    cfg = load_config("tiny-cpu", ["seed=7", "accent_policy=literal"])
    cfg.to_yaml(tmp_path / "config.yaml")
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert list(saved) == ["model", "data", "training", "inference"]
    assert (saved["model"]["base"], saved["data"]["accent_policy"], saved["training"]["seed"]) == ("tiny", "literal", 7)
    assert load_config(str(tmp_path / "config.yaml")) == cfg  # sectioned reads back; flat recipes still load
    (tmp_path / "flat.yaml").write_text("base: tiny\nseed: 7\n")
    assert (load_config(str(tmp_path / "flat.yaml")).base, load_config(str(tmp_path / "flat.yaml")).seed) == ("tiny", 7)


def test_a_key_under_the_wrong_section_names_its_own(tmp_path):
    (tmp_path / "r.yaml").write_text("model:\n  seed: 3\n")
    with pytest.raises(ConfigError, match="seed belongs under training:, not model:"):
        load_config(str(tmp_path / "r.yaml"))


def test_a_recipe_file_is_checked_as_the_command_line_is(tmp_path):
    """Before: `lora_r: abc` in a file passed and failed inside peft (TypeError); on the command line it was refused."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model:\n  base: tiny\n  lora_r: abc\ntraining:\n  learning_rate: 2e-5\n")
    with pytest.raises(ConfigError, match=rf"^recipe {recipe}: lora_r takes a whole number >= 1, not 'abc'$"):
        load_config(str(recipe))
    recipe.write_text("model:\n  base: tiny\n  lora_r: 8.0\ntraining:\n  learning_rate: 2e-5\n")
    cfg = load_config(str(recipe))
    assert (cfg.lora_r, type(cfg.lora_r), cfg.learning_rate) == (8, int, 2e-5)  # YAML 1.1 reads 2e-5 as text
