"""Recipes load into one validated config; overrides are typed; mistakes are named."""

from __future__ import annotations

import pytest

from pronlm.config import Config, ConfigError, load_config


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
    ("strategy=full", "strategy must be one of"),
    ("accent_policy=star", "accent_policy must be"),
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
