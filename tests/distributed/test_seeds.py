"""Seed balancing: equal step counts, own seeds only, deterministic per (seed, epoch, rank)."""

from __future__ import annotations

import pytest
import torch
from torch.nn.parallel import DistributedDataParallel

from lorap_dist.config import ModelConfig, PromptConfig
from lorap_dist.distributed.seeds import SeedSchedule, epoch_generator
from lorap_dist.nn import build_model
from lorap_dist.testing.graphs import random_graph
from lorap_dist.testing.multiprocess import run_multiprocess
from lorap_dist.train import backward_loss

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


@pytest.mark.parametrize("policy", ["pad", "cap"])
@pytest.mark.parametrize("batch_size", [1, 4, 8, 23, 64])
def test_batch_sizes_are_those_the_batches_have(policy, batch_size):
    schedule = SeedSchedule(COUNTS, batch_size=batch_size, policy=policy)
    for rank, own in OWN.items():
        drawn = [len(b) for b in schedule.batches(own, rank, epoch=1, seed=2)]
        assert schedule.batch_sizes(rank) == drawn


def test_loss_weights_are_each_ranks_share_of_the_step():
    schedule = SeedSchedule(COUNTS, batch_size=8)  # 23, 5, 41 seeds: 6 steps
    sizes = [schedule.batch_sizes(r) for r in range(3)]
    assert [s[2] for s in sizes] == [7, 5, 8]  # rank 0's short last batch, rank 1's padding
    weights = [schedule.loss_weights(r)[2] for r in range(3)]
    assert weights == pytest.approx([3 * 7 / 20, 3 * 5 / 20, 3 * 8 / 20])
    assert sum(weights) == pytest.approx(3)
    first = [schedule.loss_weights(r)[0] for r in range(3)]  # 8, 5, 8 seeds
    assert first == pytest.approx([3 * 8 / 21, 3 * 5 / 21, 3 * 8 / 21])


N, IN, OUT = 30, 5, 3
SEEDS = (torch.arange(0, 9), torch.arange(9, 12))  # 9 and 3 seeds: unequal batches


def _model_and_data():
    torch.manual_seed(0)
    model = build_model(IN, OUT, ModelConfig(arch="gcn", hidden=8, dropout=0.0), PromptConfig())
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(N, IN, generator=g), torch.randint(OUT, (N,), generator=g)
    return model, x, random_graph(N, 90, seed=2), y


def _ddp_gradients(rank: int, world_size: int, weighted: bool) -> list[torch.Tensor]:
    model, x, edge_index, y = _model_and_data()
    ddp = DistributedDataParallel(model)
    seeds = SEEDS[rank]
    sizes = [len(s) for s in SEEDS]
    weight = world_size * sizes[rank] / sum(sizes) if weighted else 1.0
    backward_loss(model, ddp(x, edge_index)[seeds], y[seeds], weight)
    return [p.grad.clone() for p in model.parameters()]


def _ddp_body(rank: int, world_size: int) -> list[list[torch.Tensor]]:
    return [_ddp_gradients(rank, world_size, weighted) for weighted in (False, True)]


def test_weighted_ranks_give_the_gradient_of_the_whole_steps_mean_loss():
    """DDP averages the ranks' gradients; with each rank's loss weighted by its share of the
    step's seeds that average is the gradient of the mean loss over all of them."""
    model, x, edge_index, y = _model_and_data()
    backward_loss(model, model(x, edge_index)[torch.cat(SEEDS)], y[torch.cat(SEEDS)])
    expected = [p.grad for p in model.parameters()]
    (plain, weighted), _ = run_multiprocess(_ddp_body, 2)
    for got, want in zip(weighted, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    assert any(not torch.allclose(got, want) for got, want in zip(plain, expected, strict=True))


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
