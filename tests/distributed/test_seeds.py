"""Seed balancing: equal step counts, own seeds only, deterministic per (seed, epoch, rank)."""

from __future__ import annotations

import pytest
import torch

from lorap_dist.distributed.seeds import SeedSchedule, epoch_generator

OWN = {0: torch.arange(0, 23), 1: torch.arange(100, 105), 2: torch.arange(200, 241)}
COUNTS = tuple(len(OWN[r]) for r in range(3))


@pytest.mark.parametrize(("policy", "steps"), [("pad", 6), ("cap", 1)])
@pytest.mark.parametrize("epoch", [0, 3])
def test_every_rank_runs_the_same_steps(policy, steps, epoch):
    schedule = SeedSchedule(COUNTS, batch_size=8, policy=policy)
    assert schedule.steps_per_epoch == steps
    for rank, own in OWN.items():
        batches = schedule.batches(own, rank, epoch, seed=0)
        assert len(batches) == steps
        flat = torch.cat(batches)
        assert torch.isin(flat, own).all()
        assert all(len(torch.unique(b)) == len(b) for b in batches)  # no repeat in a batch
        if policy == "pad":
            assert all(len(b) == min(8, len(own)) for b in batches[len(own) // 8 + 1 :])
            assert torch.isin(own, flat).all()  # every own seed seen at least once
        else:
            assert len(flat) == min(len(own), steps * 8)
            assert len(torch.unique(flat)) == len(flat)  # no seed twice


def test_shuffle_depends_on_seed_epoch_and_rank_only():
    schedule = SeedSchedule(COUNTS, batch_size=4)

    def order(epoch: int, seed: int) -> torch.Tensor:
        return torch.cat(schedule.batches(OWN[0], 0, epoch=epoch, seed=seed))

    a = order(2, 7)
    torch.manual_seed(123)  # the global RNG must not matter
    assert torch.equal(a, order(2, 7))
    assert not torch.equal(a, order(3, 7))
    assert not torch.equal(a, order(2, 8))
    g1, g2 = epoch_generator(0, 0, 0), epoch_generator(0, 0, 1)
    assert not torch.equal(torch.rand(4, generator=g1), torch.rand(4, generator=g2))


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"part\(s\) \[1\] own no training nodes"):
        SeedSchedule((3, 0), batch_size=2)
    with pytest.raises(ValueError, match="policy 'drop' is not known"):
        SeedSchedule((3, 3), batch_size=2, policy="drop")
    with pytest.raises(ValueError, match="given 2 seeds but the schedule was built for 23"):
        SeedSchedule(COUNTS, batch_size=2).batches(torch.arange(2), 0, 0, 0)
