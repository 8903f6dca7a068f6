import pytest
import torch

from lorap_dist.prompt import GPFPlus


def test_untrained_prompt_is_the_identity() -> None:
    gpf = GPFPlus(5, k=3)
    assert torch.all(gpf.bases == 0) and gpf.weight.abs().sum() > 0
    x = torch.randn(7, 5)
    torch.testing.assert_close(gpf(x), x)


@pytest.mark.parametrize("shape", [(1, 1, 1), (6, 5, 3), (9, 12, 7)])
def test_matches_hand_formula(shape) -> None:
    n, d, k = shape
    gpf = GPFPlus(d, k)
    torch.nn.init.normal_(gpf.bases)
    x = torch.randn(n, d)
    scores = torch.exp(x @ gpf.weight)
    rms = (x**2).mean().sqrt()
    expected = x + rms * (scores / scores.sum(dim=1, keepdim=True)) @ gpf.bases
    torch.testing.assert_close(gpf(x), expected)


def test_prompt_is_counted_in_units_of_the_input_scale() -> None:
    # The same scores on features 1000x smaller give a prompt 1000x smaller: the bases'
    # Adam steps move the prompt relative to the features, not by a fixed amount.
    gpf = GPFPlus(6, k=4)
    torch.nn.init.normal_(gpf.bases)
    x = torch.randn(5, 6)
    small = GPFPlus(6, k=4)
    small.load_state_dict({"weight": gpf.weight * 1000, "bases": gpf.bases})
    torch.testing.assert_close(small(x / 1000) - x / 1000, (gpf(x) - x) / 1000)


def test_scale_takes_no_gradient() -> None:
    gpf = GPFPlus(3, k=2)
    torch.nn.init.normal_(gpf.bases)
    x = torch.randn(4, 3, requires_grad=True)
    gpf(x).sum().backward()
    rms = (x.detach() ** 2).mean().sqrt()
    expected = torch.autograd.functional.jacobian(
        lambda v: (v + rms * torch.softmax(v @ gpf.weight, dim=-1) @ gpf.bases).sum(), x.detach()
    )
    torch.testing.assert_close(x.grad, expected)


def test_empty_input_passes_through() -> None:
    gpf = GPFPlus(3, k=2)
    x = torch.empty(0, 3)
    assert gpf(x).shape == (0, 3)


def test_gradient_reaches_the_bases_at_init() -> None:
    gpf = GPFPlus(4, k=3)
    x = torch.randn(6, 4)
    (gpf(x) * torch.randn(6, 4)).sum().backward()
    assert gpf.bases.grad.abs().sum() > 0


@pytest.mark.parametrize("d, k", [(4, 3), (17, 8)])
def test_parameter_count_and_repr(d: int, k: int) -> None:
    gpf = GPFPlus(d, k)
    assert sum(p.numel() for p in gpf.parameters()) == 2 * d * k
    assert repr(gpf) == f"GPFPlus({d}, k={k})"


def test_invalid_sizes_are_rejected() -> None:
    with pytest.raises(ValueError, match="k=0"):
        GPFPlus(4, k=0)


def test_default_prompt_keeps_the_inputs_zeros() -> None:
    # A sparse input stays sparse: the prompt goes only to the non-zero entries.
    torch.manual_seed(0)
    x = torch.randn(6, 8) * (torch.rand(6, 8) < 0.3)
    nonzero, everywhere = GPFPlus(8, k=3), GPFPlus(8, k=3, support="all")
    torch.nn.init.normal_(nonzero.bases)
    everywhere.load_state_dict(nonzero.state_dict())
    full = everywhere(x)
    assert torch.all(full[x == 0] != 0)  # the paper's form fills the zeros
    kept = nonzero(x)
    assert torch.all(kept[x == 0] == 0)
    torch.testing.assert_close(kept[x != 0], full[x != 0])


def test_unknown_support_is_rejected() -> None:
    with pytest.raises(ValueError, match="support='dense'.*'nonzero'.*'all'"):
        GPFPlus(4, support="dense")
    assert repr(GPFPlus(4, k=2, support="all")) == "GPFPlus(4, k=2, support='all')"


def test_in_a_batch_of_graphs_each_graph_is_scaled_by_its_own_rms() -> None:
    torch.manual_seed(0)
    prompt = GPFPlus(4, k=3)
    with torch.no_grad():
        prompt.bases.normal_()
    small, large = torch.randn(5, 4), 100 * torch.randn(7, 4)
    graph = torch.tensor([0] * 5 + [1] * 7)
    together = prompt(torch.cat([small, large]), graph)
    torch.testing.assert_close(together[:5], prompt(small))
    torch.testing.assert_close(together[5:], prompt(large))
    assert not torch.allclose(prompt(torch.cat([small, large]))[:5], prompt(small))
