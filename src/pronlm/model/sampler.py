"""The training order: shuffled every epoch, batches of similar lengths, reproducible from `seed + epoch`.

APA prompts are about three times as long as MDD's, so a batch that mixes the two is mostly padding.
The sampler draws a random permutation, cuts it into mega-batches of `megabatch` x `batch_size`
examples, sorts each mega-batch by length and cuts it into batches, then shuffles the batches:
which examples share a mega-batch, and the order of the batches, are random; only the grouping inside
a mega-batch follows length. The batch holding the longest example goes first, so a run that would
run out of memory does so at once. A resumed run sees the same order (the generator is seeded
from `seed + epoch` alone).
"""

from __future__ import annotations

import torch

MEGABATCH = 32  # batches per mega-batch: 256 examples at batch 8, about 20 per epoch of SpeechOcean762


def grouped_order(lengths: list[int], batch_size: int, generator: torch.Generator,
                  megabatch: int = MEGABATCH) -> list[int]:
    """Indices in batches of `batch_size` of similar lengths; only the last batch may be short."""
    perm = torch.randperm(len(lengths), generator=generator).tolist()
    span = megabatch * batch_size
    batches = []
    for start in range(0, len(perm), span):
        group = sorted(perm[start:start + span], key=lambda i: -lengths[i])
        batches += [group[i:i + batch_size] for i in range(0, len(group), batch_size)]
    short = [b for b in batches if len(b) < batch_size]  # the last mega-batch's remainder: it stays last
    full = [b for b in batches if len(b) == batch_size]
    full = [full[i] for i in torch.randperm(len(full), generator=generator).tolist()]
    if full:
        longest = max(range(len(full)), key=lambda k: lengths[full[k][0]])
        full.insert(0, full.pop(longest))
    return [i for b in full + short for i in b]


def padding_share(lengths: list[int], order: list[int], batch_size: int) -> float:
    """Share of the token positions in these batches (each padded to its longest) that are padding."""
    padded = real = 0
    for start in range(0, len(order), batch_size):
        batch = [lengths[i] for i in order[start:start + batch_size]]
        padded += max(batch) * len(batch)
        real += sum(batch)
    return 1 - real / padded if padded else 0.0


class EpochSampler(torch.utils.data.Sampler):
    """Shuffle (length-grouped or not) from `seed + epoch` alone, so a resumed run sees the same order."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int, group_by_length: bool,
                 megabatch: int = MEGABATCH):
        self.lengths, self.batch_size, self.seed, self.group = lengths, batch_size, seed, group_by_length
        self.megabatch = megabatch
        self.epoch = 0

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def __len__(self):
        return len(self.lengths)

    def order(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        if self.group:
            return grouped_order(self.lengths, self.batch_size, g, self.megabatch)
        return torch.randperm(len(self.lengths), generator=g).tolist()

    def __iter__(self):
        return iter(self.order())

    def padding_share(self) -> float:
        """The padding share of this epoch's batches."""
        return padding_share(self.lengths, self.order(), self.batch_size)
