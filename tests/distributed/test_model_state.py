"""State that ranks change outside the gradient is the same on every rank (2-process gloo)."""

from __future__ import annotations

import pytest
import torch
from torch.nn.parallel import DistributedDataParallel

from lorap_dist.config import ModelConfig, PromptConfig
from lorap_dist.distributed.model_state import (
    broadcast_buffers,
    count_full_graph,
    share_quantizer_writes,
)
from lorap_dist.graph.block import NodeInfo
from lorap_dist.nn import build_model
from lorap_dist.quant import A2QConfig, DegreeQuantConfig, QATConfig, quantize_
from lorap_dist.testing.graphs import random_graph
from lorap_dist.testing.multiprocess import run_multiprocess

N, IN, OUT = 24, 6, 3


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _train_a2q(rank: int, world_size: int, share: bool) -> dict[str, torch.Tensor]:
    """Three steps in which each rank sees its own half of the nodes (rows first seen, and
    so initialised, on one rank only); returns the model's state."""
    torch.manual_seed(0)
    model = build_model(IN, OUT, ModelConfig(hidden=8, dropout=0.0), PromptConfig())
    quantize_(model, A2QConfig(init_bits=4, memory_budget=4.0), num_nodes=N)
    ddp = DistributedDataParallel(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    ids = torch.arange(N // 2) + rank * (N // 2)
    generator = torch.Generator().manual_seed(rank)
    edge_index = random_graph(N // 2, 30, seed=rank)
    for _ in range(3):
        x = torch.rand(N // 2, IN, generator=generator) * (1 + 3 * rank)
        logits = ddp(x, edge_index, NodeInfo(ids=ids))
        loss = torch.nn.functional.cross_entropy(logits, torch.zeros(N // 2, dtype=torch.long))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if share:
            share_quantizer_writes(model)
    return _state(model)


def _a2q_body(rank: int, world_size: int) -> list[dict[str, torch.Tensor]]:
    return [_train_a2q(rank, world_size, share=False), _train_a2q(rank, world_size, share=True)]


@pytest.fixture(scope="module")
def a2q_states():
    return run_multiprocess(_a2q_body, 2)


def test_without_sharing_a2q_tables_drift_apart_across_ranks(a2q_states):
    (alone0, _), (alone1, _) = a2q_states
    assert not torch.equal(alone0["convs.0.quantizers.input.log_step"],
                           alone1["convs.0.quantizers.input.log_step"])  # fmt: skip


def test_shared_a2q_tables_are_equal_and_hold_every_ranks_rows(a2q_states):
    (_, shared0), (_, shared1) = a2q_states
    assert shared0.keys() == shared1.keys()
    for name in shared0:
        torch.testing.assert_close(shared0[name], shared1[name], rtol=0, atol=0, msg=name)
    table = "convs.0.quantizers.input"
    assert bool(shared0[f"{table}.initialized"].all())  # both halves, on both ranks
    assert bool((shared0[f"{table}.log_step"] != 0).all())


def _degree_quant_body(rank: int, world_size: int) -> list[torch.Tensor]:
    torch.manual_seed(0)
    model = build_model(IN, OUT, ModelConfig(hidden=8), PromptConfig())
    quantize_(model, DegreeQuantConfig(bits=4), num_nodes=N)
    degree = torch.bincount(random_graph(N, 70, seed=5)[1], minlength=N)
    count_full_graph(model, degree)
    ddp = DistributedDataParallel(model)  # its buffer broadcast needs equal shapes
    ids = torch.arange(N // 2) + rank * (N // 2)
    edge_index = random_graph(N // 2, 30, seed=rank)
    x = torch.rand(N // 2, IN)
    ddp(x, edge_index, NodeInfo(ids=ids, degree=degree[ids])).sum().backward()
    return [model.node_transform.degree_counts.clone(), degree]


def test_degree_quant_counts_the_full_graph_on_every_rank():
    (counts0, degree), (counts1, _) = run_multiprocess(_degree_quant_body, 2)
    assert torch.equal(counts0, torch.bincount(degree))
    assert torch.equal(counts1, counts0)


def _buffers_body(rank: int, world_size: int) -> list[dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    model = build_model(IN, OUT, ModelConfig(hidden=8), PromptConfig())
    quantize_(model, QATConfig(bits=4))
    model(torch.randn(N, IN) * (1 + 5 * rank), random_graph(N, 60, seed=rank))
    before = _state(model)
    broadcast_buffers(model)
    return [before, _state(model)]


def test_broadcast_buffers_gives_every_rank_rank_zeros_ranges():
    (before0, after0), (before1, after1) = run_multiprocess(_buffers_body, 2)
    ranges = [k for k in before0 if k.endswith("max_val")]
    assert ranges and any(not torch.equal(before0[k], before1[k]) for k in ranges)
    for name in after0:
        assert torch.equal(after1[name], before0[name]) and torch.equal(after0[name], before0[name])


def _resume_body(rank: int, world_size: int) -> list[str]:
    """Every rank agreeing passes; then rank 1 claims another epoch, then another step."""
    from lorap_dist.distributed.model_state import check_same_resume_point

    outcomes = []
    for epoch, step in [(3, 30), (3 + rank, 30), (3, 30 + rank)]:
        try:
            check_same_resume_point(epoch, step)
            outcomes.append("ok")
        except RuntimeError as error:
            outcomes.append(str(error))
    return outcomes


def test_ranks_resuming_from_different_checkpoints_fail_on_every_rank():
    outcomes = run_multiprocess(_resume_body, 2)
    for rank_outcomes in outcomes:
        assert rank_outcomes[0] == "ok"
        assert "rank 0: epoch 3 step 30, rank 1: epoch 4 step 30" in rank_outcomes[1]
        assert "storage_path" in rank_outcomes[1]
        assert "rank 0: epoch 3 step 30, rank 1: epoch 3 step 31" in rank_outcomes[2]
