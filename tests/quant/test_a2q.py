"""A2Q: config validation, quantizer values, local-error gradients against finite differences,
the memory penalty, the Nearest-Neighbour Strategy and per-node tables keyed by global ID."""

from __future__ import annotations

import math

import pytest
import torch

from lorap_dist.config import ConfigError, ModelConfig, PromptConfig
from lorap_dist.graph.block import NodeInfo
from lorap_dist.nn import build_model
from lorap_dist.quant import quantize_, quantizers_of
from lorap_dist.quant.schemes.a2q import A2QConfig, A2QNodeQuantizer, A2QWeightQuantizer
from lorap_dist.quant.schemes.a2q_functional import (
    A2QFakeQuantize,
    a2q_reference,
    local_error_gradients,
    nearest_pool_entry,
)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"init_bits": 0}, "A2QConfig.init_bits=0"),
        ({"max_bits": 9}, "A2QConfig.max_bits=9"),
        ({"min_bits": 5, "init_bits": 4}, "A2QConfig.init_bits=4"),
        ({"memory_budget": 9.0}, "A2QConfig.memory_budget=9.0"),
        ({"memory_budget": "4"}, "A2QConfig.memory_budget='4'"),
        ({"penalty": -1.0}, "A2QConfig.penalty=-1.0"),
        ({"pool_size": 0}, "A2QConfig.pool_size=0"),
        ({"weight_bits": 1}, "A2QConfig.weight_bits=1"),
        ({"reset_clipped": 0.0}, "A2QConfig.reset_clipped=0.0"),
        ({"reset_clipped": 1.5}, "A2QConfig.reset_clipped=1.5"),
    ],
)
def test_invalid_fields_are_named(options, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        A2QConfig(**options)


def test_num_nodes_is_required():
    model = build_model(4, 2, ModelConfig(arch="gcn", hidden=4), PromptConfig())
    with pytest.raises(ConfigError, match="num_nodes=N"):
        quantize_(model, A2QConfig())


def test_forward_is_the_symmetric_grid_with_rounded_bits():
    x = torch.tensor([[0.26, -0.74, 3.0, -3.0], [0.26, -0.74, 3.0, -3.0]])
    step = torch.tensor([0.5, 0.25])
    bits = torch.tensor([2.6, 2.4])  # rounds to 3 bits: grid [-4, 3]; and 2 bits: [-2, 1]
    out = A2QFakeQuantize.apply(x, step, bits, None, None)
    expected = torch.tensor([[0.5, -0.5, 1.5, -2.0], [0.25, -0.5, 0.25, -0.5]])
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(a2q_reference(x, step, bits), expected)


def _surrogate_error(x, step, bits, base_step):
    """E~(s, b) = sum |x - s clip(x/s + delta, -2^(b-1), 2^(b-1)-1)|, delta frozen at base_step,
    b continuous: the function whose exact derivative the STE gradients are."""
    delta = torch.round(x / base_step[:, None]) - x / base_step[:, None]
    half = 2.0 ** (bits[:, None] - 1)
    code = torch.clamp(x / step[:, None] + delta, -half, half - 1)
    return (x - step[:, None] * code).abs().sum()


def test_step_and_bits_gradients_match_finite_differences_and_ignore_the_task_gradient():
    torch.manual_seed(0)
    x = 2 * torch.randn(6, 9, dtype=torch.float64)
    step = torch.tensor([0.1, 0.3, 0.5, 0.2, 0.7, 0.05], dtype=torch.float64, requires_grad=True)
    bits = torch.tensor([2.2, 3.0, 3.8, 4.4, 2.0, 5.0], dtype=torch.float64, requires_grad=True)
    out = A2QFakeQuantize.apply(x, step, bits, None, None)
    (out * torch.randn_like(out)).sum().backward()  # any upstream gradient
    grad_step, grad_bits = step.grad.clone(), bits.grad.clone()
    step.grad = bits.grad = None
    A2QFakeQuantize.apply(x, step, bits, None, None).pow(3).sum().backward()
    torch.testing.assert_close(step.grad, grad_step)
    torch.testing.assert_close(bits.grad, grad_bits)

    # One-sided (right) differences: elements whose code sits on the grid's edge are on a
    # kink of E~, and the gradient counts them as inside, which is the side s + h, b + h.
    h = 1e-7
    base, b_int = step.detach(), torch.round(bits.detach())
    at_base = _surrogate_error(x, base, b_int, base)
    for i in range(6):
        e = torch.zeros(6, dtype=torch.float64)
        e[i] = h
        fd_step = (_surrogate_error(x, base + e, b_int, base) - at_base) / h
        fd_bits = (_surrogate_error(x, base, b_int + e, base) - at_base) / h
        torch.testing.assert_close(grad_step[i], fd_step, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(grad_bits[i], fd_bits, rtol=1e-4, atol=1e-4)
    assert (grad_bits != 0).any() and (grad_step != 0).all()


def test_local_gradients_of_mostly_zero_rows_skip_the_zeros_and_agree():
    """Bag-of-words-like input (5% non-zeros) takes the sparse sum; it equals the dense one."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(40, 50, generator=g, dtype=torch.float64)
    x = x * (torch.rand(40, 50, generator=g) < 0.05)
    x[7] = 0.0  # a row of zeros gets exactly zero gradients
    step = torch.rand(40, generator=g, dtype=torch.float64) * 0.3 + 0.05
    bits = torch.randint(2, 6, (40,), generator=g).double()
    ds, db = local_error_gradients(x, step, bits)
    dense_ds, dense_db = _error_terms_dense(x, step, bits)
    torch.testing.assert_close(ds, dense_ds)
    torch.testing.assert_close(db, dense_db)
    assert ds[7] == 0 and db[7] == 0 and (ds != 0).sum() > 20 and (db != 0).any()


def _error_terms_dense(x, step, bits):
    from lorap_dist.quant.schemes.a2q_functional import _error_terms

    ds, db = _error_terms(x, step.unsqueeze(1), bits.unsqueeze(1))
    return ds.sum(dim=1), db.sum(dim=1)


def test_input_gradient_is_straight_through_inside_the_grid_only():
    x = torch.tensor([[0.1, 0.9, 1.9, -2.1]], requires_grad=True)
    A2QFakeQuantize.apply(x, torch.tensor([0.5]), torch.tensor([3.0]), None, None).sum().backward()
    # grid [-4, 3] * 0.5 = [-2, 1.5]: round(1.9 / 0.5) = 4 > 3 and round(-4.2) = -4 inside
    torch.testing.assert_close(x.grad, torch.tensor([[1.0, 1.0, 0.0, 1.0]]))


def test_the_local_error_descends_under_its_own_gradient():
    torch.manual_seed(0)
    x = torch.randn(50, 16) * torch.rand(50, 1) * 4
    quantizer = A2QNodeQuantizer(50, init_bits=3, penalty=0.0).train()
    nodes = NodeInfo(ids=torch.arange(50))
    quantizer(x, nodes)
    with torch.no_grad():
        quantizer.log_step.add_(1.0)  # steps far too coarse
    optimizer = torch.optim.Adam(quantizer.parameters(), lr=0.05)

    def error() -> float:
        return float((x - quantizer(x, nodes)).abs().sum().detach())

    before = error()
    for _ in range(30):
        optimizer.zero_grad()
        quantizer(x, nodes).sum().backward()
        optimizer.step()
    assert error() < 0.7 * before


def test_penalty_alone_lowers_average_bits_toward_the_budget():
    quantizer = A2QNodeQuantizer(20, init_bits=6, memory_budget=4.0, penalty=1.0).train()
    quantizer(torch.randn(20, 3), NodeInfo(ids=torch.arange(20)))
    assert quantizer.average_bits() == 6.0
    optimizer = torch.optim.SGD(quantizer.parameters(), lr=0.25)
    for _ in range(4):
        optimizer.zero_grad()
        quantizer.regularization().backward()
        optimizer.step()
    assert quantizer.average_bits() == 4.0  # 6 -> 5 -> 4.5 (rounds to 4): stops at B
    with torch.no_grad():
        quantizer.bits.fill_(3.0)
    assert float(quantizer.regularization()) == 0.0


@pytest.mark.parametrize("rows", [20, 2000])
def test_the_pull_toward_the_budget_does_not_shrink_with_the_graph(rows):
    """Every row's bits get 2 * lambda * (mean - B) from the penalty, for any number of rows."""
    quantizer = A2QNodeQuantizer(rows, init_bits=6, memory_budget=4.0, penalty=0.5).train()
    quantizer(torch.randn(rows, 3), NodeInfo(ids=torch.arange(rows)))
    quantizer.regularization().backward()
    torch.testing.assert_close(quantizer.bits.grad, torch.full((rows,), 2 * 0.5 * 2.0))
    weight = A2QWeightQuantizer(torch.randn(rows, 4), 6, 2, 8, 4.0, 0.5, fixed_bits=False)
    weight.regularization().backward()
    torch.testing.assert_close(weight.bits.grad, torch.full((rows,), 2 * 0.5 * 2.0))


def test_nearest_pool_entry_on_a_hand_built_pool():
    step = torch.tensor([1.0, 0.1, 0.5, 0.25])
    bits = torch.tensor([3.0, 3.0, 3.0, 2.0])  # reach 2^(b-1) s = [4.0, 0.4, 2.0, 0.5]
    max_abs = torch.tensor([0.0, 0.44, 0.46, 1.3, 3.5, 10.0])
    assert nearest_pool_entry(max_abs, step, bits).tolist() == [1, 1, 3, 2, 0, 0]
    torch.manual_seed(0)
    step, bits, max_abs = (
        torch.rand(7) + 0.01,
        torch.randint(2, 8, (7,)).float(),
        9 * torch.rand(40),
    )
    brute = ((max_abs[:, None] - 2 ** (bits - 1) * step) ** 2).argmin(dim=1)
    assert torch.equal(nearest_pool_entry(max_abs, step, bits), brute)


def test_nodes_without_own_parameters_use_their_nearest_pool_pair():
    quantizer = A2QNodeQuantizer(10, init_bits=4, pool_size=3).eval()
    with torch.no_grad():
        quantizer.pool_log_step.copy_(torch.log(torch.tensor([0.1, 0.5, 1.0])))
        quantizer.pool_bits.copy_(torch.tensor([3.0, 3.0, 3.0]))  # reach 0.4, 2.0, 4.0
    x = torch.tensor([[0.3, -0.1], [1.5, 0.2], [-3.9, 1.0]])
    expected = a2q_reference(x, torch.tensor([0.1, 0.5, 1.0]), torch.full((3,), 3.0))
    for ids in (None, torch.tensor([10, 11, -1]), torch.tensor([1, 2, 3])):  # none/out/unseen
        torch.testing.assert_close(quantizer(x, NodeInfo(ids=ids)), expected)


def test_without_a_table_every_row_trains_on_its_pool_pair_and_the_pool_holds_the_budget():
    """num_nodes=0 (graph level): rows use the pool in training too, the pool's pairs get the
    local gradients, and the memory penalty and average bits are the pool's."""
    quantizer = A2QNodeQuantizer(0, init_bits=4, pool_size=3, memory_budget=3.0, penalty=0.1)
    x = torch.tensor([[0.3, -0.1], [1.5, 0.2], [-3.9, 1.0]], requires_grad=True)
    out = quantizer(x, NodeInfo(ids=torch.tensor([0, 1, 2])))  # ids are ignored: no table
    step, bits = quantizer.pool_log_step.exp().detach(), quantizer.pool_bits.detach()
    nearest = nearest_pool_entry(x.detach().abs().amax(1), step, bits)
    torch.testing.assert_close(out, a2q_reference(x.detach(), step[nearest], bits[nearest]))
    out.sum().backward()
    assert quantizer.pool_log_step.grad is not None
    assert quantizer.pool_log_step.grad[nearest].abs().sum() > 0
    assert quantizer.log_step.numel() == 0 and quantizer.average_bits() == 4.0
    penalty = quantizer.regularization()
    assert penalty is not None and penalty.item() == pytest.approx(0.1 * 3 * (4.0 - 3.0) ** 2)


def test_tables_are_keyed_by_global_id_and_get_gradients_only_there():
    quantizer = A2QNodeQuantizer(8, init_bits=4, penalty=0.0, pool_size=2).train()
    x = torch.tensor([[1.0, -0.3], [4.0, 2.0]])
    out = quantizer(x, NodeInfo(ids=torch.tensor([5, 2])))
    assert quantizer.initialized.tolist() == [False, False, True, False, False, True, False, False]
    torch.testing.assert_close(quantizer.log_step.exp()[[5, 2]], torch.tensor([1.0, 4.0]) / 7)
    (out * 3).sum().backward()
    touched = quantizer.log_step.grad != 0
    assert not touched[[0, 1, 3, 4, 6, 7]].any()
    assert quantizer.pool_log_step.grad is not None and quantizer.pool_log_step.grad.abs().sum() > 0
    with torch.no_grad():
        quantizer.log_step[2] = math.log(0.5)
    # a sampled block holding node 2 alone uses node 2's own step
    row = torch.tensor([[0.8, -1.3]])
    torch.testing.assert_close(
        quantizer.eval()(row, NodeInfo(ids=torch.tensor([2]))),
        a2q_reference(row, torch.tensor([0.5]), torch.tensor([4.0])),
    )


def test_weights_get_per_channel_steps_and_bits():
    model = build_model(4, 3, ModelConfig(arch="gcn", hidden=5), PromptConfig())
    quantize_(model, A2QConfig(init_bits=4), num_nodes=12)
    weights = {n: q for n, q in quantizers_of(model) if isinstance(q, A2QWeightQuantizer)}
    quantizer = weights["convs.0.lin.weight"]
    expected_step = model.convs[0].lin.weight.abs().amax(dim=1) / 7
    torch.testing.assert_close(quantizer.log_step.exp(), expected_step)
    assert isinstance(quantizer.bits, torch.nn.Parameter) and quantizer.bits.shape == (5,)
    fixed = quantize_(
        build_model(4, 3, ModelConfig(arch="gcn", hidden=5), PromptConfig()),
        A2QConfig(weight_bits=8),
        num_nodes=12,
    )
    fixed_quantizer = dict(quantizers_of(fixed))["convs.0.lin.weight"]
    assert fixed_quantizer.average_bits() == 8.0 and fixed_quantizer.regularization() is None


def test_rows_of_zeros_stay_on_the_pool_until_they_carry_a_value():
    quantizer = A2QNodeQuantizer(4, init_bits=4, pool_size=2).train()
    x = torch.tensor([[0.0, 0.0], [1.0, -2.0], [0.0, 0.0], [0.5, 0.1]])
    out = quantizer(x, NodeInfo(ids=torch.arange(4)))
    assert quantizer.initialized.tolist() == [False, True, False, True]
    assert torch.equal(out[[0, 2]], torch.zeros(2, 2))
    # the pool spans the non-zero rows' reach: 2^(b-1) s = max|x_i| for its two ends
    reach = 2.0 ** (quantizer.pool_bits.detach() - 1) * quantizer.pool_log_step.detach().exp()
    torch.testing.assert_close(reach, torch.tensor([0.5, 2.0]))


def test_a_row_that_outgrew_its_grid_gets_its_step_reset_in_training():
    """Values ten times those the steps were set from clip almost everywhere: with the
    default the rows' steps are reset to cover them; with ``reset_clipped=None`` (the
    paper's rule) they stay and the values clip."""
    x = torch.tensor([[0.7, -0.2, 0.1, 0.0], [0.05, 0.3, -0.1, 0.2]])
    ids = NodeInfo(ids=torch.tensor([1, 3]))
    grown = 10 * x
    for reset_clipped in (0.5, None):
        quantizer = A2QNodeQuantizer(4, init_bits=4, pool_size=2, reset_clipped=reset_clipped)
        quantizer.train()(x, ids)  # first sight: steps cover x
        first = quantizer.log_step.detach()[[1, 3]].exp().clone()
        out = quantizer(grown, ids)
        if reset_clipped is None:
            torch.testing.assert_close(quantizer.log_step.detach()[[1, 3]].exp(), first)
            torch.testing.assert_close(out, a2q_reference(grown, first, torch.full((2,), 4.0)))
            assert (out.abs() < grown.abs() - 1e-6).any()  # clipped
        else:
            step = grown.abs().amax(dim=1) / 7
            torch.testing.assert_close(quantizer.log_step.detach()[[1, 3]].exp(), step)
            torch.testing.assert_close(out, a2q_reference(grown, step, torch.full((2,), 4.0)))
            # once reset, the largest value sits on the grid's end
            torch.testing.assert_close(out.abs().amax(dim=1), grown.abs().amax(dim=1))


def test_a_row_with_a_few_clipped_values_keeps_its_learned_step():
    """One value in eight beyond the grid is below the default share (0.5): no reset, and
    evaluation never resets."""
    quantizer = A2QNodeQuantizer(2, init_bits=4, pool_size=2).train()
    row = torch.tensor([[0.1, 0.2, -0.3, 0.1, 0.05, -0.2, 0.3, 0.1]])
    ids = NodeInfo(ids=torch.tensor([0]))
    quantizer(row, ids)
    with torch.no_grad():
        quantizer.log_step[0] = math.log(0.04)  # grid reaches 7 * 0.04 = 0.28: 0.3 clips
    quantizer(row, ids)
    torch.testing.assert_close(quantizer.log_step.detach()[0].exp(), torch.tensor(0.04))
    with torch.no_grad():
        quantizer.log_step[0] = math.log(0.001)  # everything clips, but in evaluation
    quantizer.eval()(row, ids)
    torch.testing.assert_close(quantizer.log_step.detach()[0].exp(), torch.tensor(0.001))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_one_pass_gradients_equal_the_reference_for_the_pair_and_the_probe(dtype):
    """The forward's per-row sums equal :func:`local_error_gradients`, for both pairs."""
    g = torch.Generator().manual_seed(5)
    x = 3 * torch.randn(30, 17, generator=g, dtype=dtype)
    x[4] = 0.0
    pairs = []
    for _ in range(2):
        step = (torch.rand(30, generator=g, dtype=dtype) * 0.4 + 0.02).requires_grad_()
        bits = torch.randint(2, 7, (30,), generator=g).to(dtype).requires_grad_()
        pairs.append((step, bits))
    (step, bits), (probe_step, probe_bits) = pairs
    x.requires_grad_()
    out = A2QFakeQuantize.apply(x, step, bits, probe_step, probe_bits)
    torch.testing.assert_close(out, a2q_reference(x.detach(), step.detach(), bits.detach()))
    upstream = torch.randn(out.shape, generator=g, dtype=dtype)
    (out * upstream).sum().backward()
    for s, b in pairs:
        ds, db = local_error_gradients(x.detach(), s.detach(), b.detach())
        torch.testing.assert_close(s.grad, ds)
        torch.testing.assert_close(b.grad, db)
        assert (ds != 0).sum() > 20 and (db != 0).any()
    clipped = a2q_reference(x.detach(), step.detach(), bits.detach()).ne(
        a2q_reference(x.detach(), step.detach(), torch.full_like(bits, 16.0).detach())
    )
    torch.testing.assert_close(x.grad, upstream.masked_fill(clipped, 0.0))
    assert clipped.any() and (~clipped).any()
