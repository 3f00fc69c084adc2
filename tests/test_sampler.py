"""The training order on the lengths it will meet: SpeechOcean762's clips with Phi-4's token counts.

The lengths are the shipped distribution (`pronlm.data.lengths`, recomputed from the 200 clips in
test_lengths) with the default templates' o200k prompt counts: APA ≈ 413 prompt tokens, MDD ≈ 125.
"""

from __future__ import annotations

import pytest
import torch
from transformers.trainer_pt_utils import get_length_grouped_indices

from pronlm.data.lengths import distribution_lengths
from pronlm.data.prompts import PAPER_TASKS, PromptSet
from pronlm.model.sampler import EpochSampler, grouped_order, padding_share

BATCH = 8  # the recipes' per-device batch


@pytest.fixture(scope="module")
def training_set():
    """SpeechOcean762's 2,500 training utterances as the shipped clips give them: (lengths, tasks)."""
    examples = distribution_lengths(PromptSet.from_templates(), PAPER_TASKS, 2500)
    return [e.total for e in examples], [e.task for e in examples]


def old_order(lengths, seed):
    """What EpochSampler did before: transformers' length grouping with batch x accumulation (64) as its unit."""
    return get_length_grouped_indices(lengths, BATCH * 8, generator=torch.Generator().manual_seed(seed))


def single_task_steps(order, tasks, step=BATCH * 8):
    steps = [order[i:i + step] for i in range(0, len(order) - step + 1, step)]
    return sum(len({tasks[i] for i in s}) == 1 for s in steps) / len(steps)


def test_padding_share_counts_positions_padded_to_each_batch_longest():
    # batches [10, 6] and [4, 4]: 2 x 10 + 2 x 4 = 28 positions, 24 real
    assert padding_share([10, 6, 4, 4], [0, 1, 2, 3], 2) == pytest.approx(4 / 28)
    assert padding_share([10, 6, 4, 4], [0, 2, 1, 3], 2) == pytest.approx(8 / 32)  # [10, 4] and [6, 4]


@pytest.mark.parametrize("seed", [0, 1, 42])
def test_training_batches_pad_under_5_percent_on_speechocean762_lengths(training_set, seed):
    lengths, tasks = training_set
    sampler = EpochSampler(lengths, BATCH, seed, group_by_length=True)
    assert sampler.padding_share() < 0.05  # measured: 2.0-2.2 %
    # ... and the optimizer's steps (8 batches) still mix the tasks: the old order gave all-APA, then all-MDD
    assert single_task_steps(sampler.order(), tasks) < 0.05
    assert single_task_steps(old_order(lengths, seed), tasks) > 0.9  # measured 0.94
    assert padding_share(lengths, torch.randperm(len(lengths)).tolist(), BATCH) > 0.3  # no grouping: 30.8 %


def test_the_old_sampler_pads_more_on_the_200_clips_as_a_training_set():
    lengths = [e.total for e in distribution_lengths(PromptSet.from_templates(), PAPER_TASKS, 200)]
    old = padding_share(lengths, old_order(lengths, 42), BATCH)
    new = EpochSampler(lengths, BATCH, 42, group_by_length=True).padding_share()
    assert old >= 0.06 and new < 0.05  # measured: 7.8 % and 2.3 %


def test_each_epoch_and_seed_is_a_new_order_of_length_homogeneous_batches(training_set):
    lengths, tasks = training_set
    sampler = EpochSampler(lengths, BATCH, 42, group_by_length=True)
    first = sampler.order()
    sampler.set_epoch(1)
    second = sampler.order()
    other_seed = EpochSampler(lengths, BATCH, 7, group_by_length=True).order()
    assert sorted(first) == sorted(second) == list(range(len(lengths)))
    assert first != second and first != other_seed
    batches = lambda order: {frozenset(order[i:i + BATCH]) for i in range(0, len(order), BATCH)}  # noqa: E731
    assert len(batches(first) & batches(second)) < 0.2 * len(lengths) / BATCH  # new groups, not only a new order
    sampler.set_epoch(0)
    assert sampler.order() == first  # a resumed run sees the same order
    same_task = sum(len({tasks[i] for i in first[k:k + BATCH]}) == 1 for k in range(0, len(first), BATCH))
    assert same_task >= 0.95 * len(first) / BATCH  # measured 605 of 625: one mixed batch per mega-batch or so


def test_only_the_last_batch_is_short_and_the_longest_batch_comes_first():
    lengths = [(i * 37) % 203 for i in range(203)]  # 0..202 in a scrambled order: 25 full batches of 8, 3 left
    order = grouped_order(lengths, BATCH, torch.Generator().manual_seed(0), megabatch=32)  # one mega-batch
    by_length = sorted(range(203), key=lambda i: -lengths[i])
    chunks = lambda o: [frozenset(o[k:k + BATCH]) for k in range(0, len(o), BATCH)]  # noqa: E731
    assert sorted(chunks(order), key=min) == sorted(chunks(by_length), key=min)  # the sorted runs, reordered
    assert {lengths[i] for i in order[-3:]} == {0, 1, 2}  # the short batch last: the others stay aligned
    assert {lengths[i] for i in order[:BATCH]} == set(range(195, 203))
    assert order[:BATCH * 25] != by_length[:BATCH * 25]  # and the batches are shuffled
