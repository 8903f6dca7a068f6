import math

import pytest
import torch

from lorap_dist.config import PromptConfig
from lorap_dist.graph import NodeInfo
from lorap_dist.prompt import LoRAP, lorap_prompt, lorap_sizes
from lorap_dist.quant import IdentityQuantizer
from lorap_dist.testing.fake_quant import GridQuantizer, RecordingQuantizer


def hand_prompt(h, w_phi, p_a, p_b):
    """Row by row, with the softmax written out."""
    rows = []
    for row in h:
        scores = [sum(row[c] * w_phi[c, j] for c in range(h.size(1))) for j in range(p_a.size(0))]
        top = max(scores)
        exps = [math.exp(s - top) for s in scores]
        weights = [e / sum(exps) for e in exps]
        bases = p_a @ p_b  # [k, d]
        rows.append(
            [
                row[c] + sum(weights[j] * bases[j, c] for j in range(len(weights)))
                for c in range(h.size(1))
            ]
        )
    return torch.tensor(rows, dtype=h.dtype)


def test_lorap_prompt_on_a_worked_example() -> None:
    h = torch.tensor([[1.0, 0.0]])
    w_phi = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]])  # softmax([ln 3, 0]) = [3/4, 1/4]
    p_a = torch.tensor([[1.0], [2.0]])  # w @ p_a = 3/4 + 2/4 = 5/4
    p_b = torch.tensor([[4.0, 8.0]])  # p = [5, 10]
    torch.testing.assert_close(lorap_prompt(h, w_phi, p_a, p_b), torch.tensor([[6.0, 10.0]]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (5, 3, 4, 2), (7, 10, 3, 5)])
def test_lorap_prompt_matches_hand_formula(shape, dtype) -> None:
    n, d, k, r = shape
    gen = torch.Generator().manual_seed(sum(shape))
    h, w_phi, p_a, p_b = (
        torch.randn(s, generator=gen, dtype=dtype) for s in ((n, d), (d, k), (k, r), (r, d))
    )
    torch.testing.assert_close(lorap_prompt(h, w_phi, p_a, p_b), hand_prompt(h, w_phi, p_a, p_b))


def test_lorap_prompt_gradients() -> None:
    gen = torch.Generator().manual_seed(0)
    args = tuple(
        torch.randn(s, generator=gen, dtype=torch.float64, requires_grad=True)
        for s in ((4, 3), (3, 5), (5, 2), (2, 3))
    )
    assert torch.autograd.gradcheck(lorap_prompt, args)


def test_untrained_prompt_is_zero_and_quantized_once() -> None:
    lorap = LoRAP(6, k=4, r=2)
    assert torch.all(lorap.p_b == 0)
    assert lorap.w_phi.abs().sum() > 0 and lorap.p_a.abs().sum() > 0
    h = torch.randn(5, 6)
    recorder, nodes = RecordingQuantizer(), NodeInfo(ids=torch.arange(5))
    torch.testing.assert_close(lorap(h, recorder, nodes), h)
    ((seen, info),) = recorder.calls
    torch.testing.assert_close(seen, h)
    assert info is nodes


def test_forward_requantizes_the_prompted_aggregate() -> None:
    lorap = LoRAP(6, k=4, r=2)
    torch.nn.init.normal_(lorap.p_b)
    h = torch.randn(5, 6)
    prompted = lorap_prompt(h, lorap.w_phi, lorap.p_a, lorap.p_b)
    assert not torch.allclose(prompted, h)
    torch.testing.assert_close(lorap(h, GridQuantizer(0.5)), torch.round(prompted / 0.5) * 0.5)


def test_gradient_reaches_p_b_and_one_step_makes_the_prompt_non_zero() -> None:
    torch.manual_seed(0)
    lorap = LoRAP(6, k=4, r=2)
    h = torch.randn(5, 6)
    target = torch.randn(5, 6)
    loss = (lorap(h, IdentityQuantizer()) - target).pow(2).sum()
    loss.backward()
    assert lorap.p_b.grad is not None and lorap.p_b.grad.abs().sum() > 0
    torch.optim.SGD(lorap.parameters(), lr=0.1).step()
    assert lorap.p_b.abs().sum() > 0
    assert not torch.allclose(lorap(h, IdentityQuantizer()), h)


@pytest.mark.parametrize("d, k, r", [(1, 1, 1), (16, 8, 4), (33, 5, 7)])
def test_parameter_count(d: int, k: int, r: int) -> None:
    lorap = LoRAP(d, k, r)
    assert sum(p.numel() for p in lorap.parameters()) == d * k + r * (k + d)
    assert repr(lorap) == f"LoRAP({d}, k={k}, r={r})"


def test_reset_parameters_zeroes_p_b() -> None:
    lorap = LoRAP(4, 3, 2)
    torch.nn.init.normal_(lorap.p_b)
    lorap.reset_parameters()
    assert torch.all(lorap.p_b == 0)


@pytest.mark.parametrize("bad", [{"channels": 0}, {"k": 0}, {"r": -1}, {"k": 2.5}])
def test_invalid_sizes_are_rejected(bad: dict) -> None:
    args = {"channels": 4, "k": 2, "r": 2} | bad
    name = next(iter(bad))
    with pytest.raises(ValueError, match=f"{name}="):
        LoRAP(**args)


def test_lorap_sizes() -> None:
    assert lorap_sizes(None, 4, None) is None
    assert lorap_sizes(6, 3, None) == (6, 3)
    assert lorap_sizes(None, 4, PromptConfig(kind="gpf_lorap", k=5, r=2)) == (5, 2)
    assert lorap_sizes(None, 4, PromptConfig(kind="gpf")) is None
    with pytest.raises(ValueError, match="both"):
        lorap_sizes(6, 4, PromptConfig(kind="lorap"))
