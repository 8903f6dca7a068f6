"""Seed balancing: every rank runs exactly the same number of steps per epoch.

Each rank trains on the training nodes its part owns. Parts rarely own equally many, and a
rank that runs out of batches early leaves the others waiting in DDP's gradient all-reduce
forever (PyG issue 9959, DGL issue 2539). :class:`SeedSchedule` fixes the step count from
every part's seed count before training starts:

- ``pad`` (default): ``steps = max_r ceil(n_r / B)``. Each rank walks a random permutation
  of its own seeds in batches of ``B`` (the last one may be short), then fills the missing
  steps with batches of ``min(B, n_r)`` seeds, each the head of a fresh permutation. Every
  own seed is seen at least once per epoch, no batch repeats a seed (the sampler refuses
  repeats), and ranks with fewer seeds see some of theirs more than once.
- ``cap``: ``steps = min_r ceil(n_r / B)``. Each rank takes the first ``steps * B`` seeds of
  its permutation and drops the rest for this epoch (a different subset every epoch).
  Cheaper per epoch, and no seed is weighted twice; the smallest part's last batch may be
  short.

``B`` is the per-rank batch size (the global batch is at most ``P * B``). Where the ranks'
batches of a step differ in size (a short last batch, or a small part's padding), each rank
weighs its mean loss by its share of the step's seeds (:meth:`SeedSchedule.loss_weights`), so
that DDP's mean of the ranks' gradients is the gradient of the mean loss over every seed.

The permutations come from :func:`epoch_generator` seeded by ``(seed, epoch, rank)``: an
epoch's order depends on nothing but those three numbers, so a run resumed at an epoch
boundary replays it exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from lorap_dist.config import SEED_POLICIES

POLICIES = SEED_POLICIES  # how ranks get equal step counts (validated in DistConfig)


#: The :func:`stream_seed` stream of a rank's global torch generator in training.
TRAINING_STREAM = 3


def stream_seed(seed: int, epoch: int, rank: int, stream: int = 0) -> int:
    """A 63-bit seed determined by ``(seed, epoch, rank, stream)`` alone.

    The four numbers are mixed with NumPy's ``SeedSequence``, so neighbouring epochs or
    ranks get unrelated streams (``stream`` separates uses, e.g. seed order vs sampling).
    """
    state = np.random.SeedSequence([seed, epoch, rank, stream]).generate_state(2, np.uint64)
    return int(state[0] >> np.uint64(1))


def epoch_generator(seed: int, epoch: int, rank: int, stream: int = 0) -> torch.Generator:
    """A CPU generator seeded by :func:`stream_seed`."""
    return torch.Generator().manual_seed(stream_seed(seed, epoch, rank, stream))


def seed_rank(seed: int, rank: int) -> None:
    """Seed this rank's global torch generators (CPU and CUDA) for training.

    The model is built from ``torch.manual_seed(seed)`` on every rank, so the ranks start
    from the same weights; training then draws dropout masks (and any other global draws)
    from here. Each rank gets its own stream: with one shared seed every rank would draw the
    same masks by position on different batches, correlating the ranks' gradients.
    """
    torch.manual_seed(stream_seed(seed, 0, rank, TRAINING_STREAM))


@dataclass(frozen=True)
class SeedSchedule:
    """How many steps every rank runs per epoch, and which seeds go into each.

    Args:
        counts: number of training seeds each rank owns, indexed by rank.
        batch_size: seeds per step on each rank.
        policy: ``pad`` or ``cap`` (see the module docstring).
    """

    counts: tuple[int, ...]
    batch_size: int
    policy: str = "pad"

    def __post_init__(self) -> None:
        object.__setattr__(self, "counts", tuple(int(c) for c in self.counts))
        if self.policy not in POLICIES:
            raise ValueError(f"seed policy {self.policy!r} is not known; use one of {POLICIES}.")
        if self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size} must be >= 1.")
        empty = [r for r, c in enumerate(self.counts) if c == 0]
        if empty:
            raise ValueError(
                f"part(s) {empty} own no training nodes, so their workers would have nothing "
                "to train on; partition the graph into fewer parts or with a partitioner that "
                "spreads the training nodes (e.g. random)."
            )

    @property
    def steps_per_epoch(self) -> int:
        per_rank = [math.ceil(c / self.batch_size) for c in self.counts]
        return max(per_rank) if self.policy == "pad" else min(per_rank)

    def batch_sizes(self, rank: int) -> list[int]:
        """The seed count of each of ``rank``'s batches; the same in every epoch (what
        :meth:`batches` returns, without drawing the seeds)."""
        n, steps, b = self.counts[rank], self.steps_per_epoch, self.batch_size
        first_pass = min(n, steps * b)
        sizes = [b] * (first_pass // b) + ([first_pass % b] if first_pass % b else [])
        return sizes + [min(n, b)] * (steps - len(sizes))

    def loss_weights(self, rank: int) -> list[float]:
        """Per step, ``world_size * n_rank / sum_r n_r`` for the ranks' batch sizes ``n_r``:
        the factor on ``rank``'s mean loss under which DDP's mean of the ranks' gradients is
        the gradient of the mean loss over every seed of the step. Without it a rank's short
        last batch would count as much as a full one, each of its seeds several times over."""
        per_rank = [self.batch_sizes(r) for r in range(len(self.counts))]
        return [len(sizes) * sizes[rank] / sum(sizes) for sizes in zip(*per_rank, strict=True)]

    def batches(self, own_seeds: Tensor, rank: int, epoch: int, seed: int) -> list[Tensor]:
        """Exactly :attr:`steps_per_epoch` batches of this rank's seeds for ``epoch``, none
        with a repeated seed."""
        own_seeds = own_seeds.reshape(-1)
        if own_seeds.numel() != self.counts[rank]:
            raise ValueError(
                f"rank {rank} was given {own_seeds.numel()} seeds but the schedule was built "
                f"for {self.counts[rank]}."
            )
        generator = epoch_generator(seed, epoch, rank)
        n, steps = own_seeds.numel(), self.steps_per_epoch
        first_pass = own_seeds[torch.randperm(n, generator=generator)]
        batches = list(first_pass[: steps * self.batch_size].split(self.batch_size))
        while len(batches) < steps:  # pad: heads of fresh permutations
            order = torch.randperm(n, generator=generator)[: self.batch_size]
            batches.append(own_seeds[order])
        return batches
