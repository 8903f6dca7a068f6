import copy
import math

import pytest
import torch
from lorap_dist.kernels._triton import triton_on_cpu

from lorap_dist.graph import NodeInfo
from lorap_dist.prompt import LoRAP, lorap_prompt
from lorap_dist.prompt import lorap as lorap_module
from lorap_dist.quant import EMAObserver, FakeQuantizer, IdentityQuantizer, PercentileObserver
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


def _trained_lorap(
    d: int = 12, k: int = 4, r: int = 3, seed: int = 0, unit: str = "value"
) -> LoRAP:
    torch.manual_seed(seed)
    lorap = LoRAP(d, k, r, unit=unit)
    torch.nn.init.normal_(lorap.p_b, std=0.5)
    return lorap


def _unfused(lorap: LoRAP, h, quantizer, nodes=None):
    """The prompt by autograd; in step units on the step held before ``quantizer``
    observes (the arguments are evaluated before the call)."""
    return quantizer(lorap_prompt(h, lorap.w_phi, lorap.p_a, lorap.scaled_p_b(quantizer, h)), nodes)


@pytest.fixture
def range_calls(monkeypatch):
    """Counts the fused module path's calls of the range op and of the forward op."""
    calls = {"range": 0, "forward": 0}
    for name, key in (("lorap_range", "range"), ("lorap_forward", "forward")):
        original = getattr(lorap_module, name)

        def counted(*args, _original=original, _key=key, **kwargs):
            calls[_key] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(lorap_module, name, counted)
    return calls


def _step(lorap, quantizer, fused: bool, h, target):
    """One SGD step on a regression; returns the output and the gradients it took."""
    optimizer = torch.optim.SGD(lorap.parameters(), lr=0.05)
    h = h.clone().requires_grad_(True)
    out = lorap(h, quantizer) if fused else _unfused(lorap, h, quantizer)
    optimizer.zero_grad()
    (out - target).pow(2).sum().backward()
    optimizer.step()
    return out.detach(), [h.grad] + [p.grad.clone() for p in lorap.parameters()]


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("observer", ["minmax", "ema"])
@pytest.mark.parametrize("unit", ["value", "step"])
def test_fused_path_equals_the_unfused_path_in_training_and_eval(bits, observer, unit, range_calls):
    def make_quantizer():
        return FakeQuantizer(bits=bits, observer=EMAObserver(0.3) if observer == "ema" else None)

    fused_lorap, fused_q = _trained_lorap(unit=unit), make_quantizer()
    plain_lorap, plain_q = _trained_lorap(unit=unit), make_quantizer()
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        # Each step starts both paths from the same state (the gradients agree to rounding,
        # so the parameters would drift apart by ulps over steps).
        plain_lorap.load_state_dict(fused_lorap.state_dict())
        plain_q.load_state_dict(fused_q.state_dict())
        h = torch.randn(23, fused_lorap.channels, generator=gen) * 2
        target = torch.randn(23, fused_lorap.channels, generator=gen)
        fused_out, fused_grads = _step(fused_lorap, fused_q, True, h, target)
        plain_out, plain_grads = _step(plain_lorap, plain_q, False, h, target)
        # On CPU the op's forward runs the same torch operations as the unfused path:
        # bit-equal, and so is the range the observer folds in.
        assert torch.equal(fused_out, plain_out)
        assert torch.equal(fused_q.observer.min_val, plain_q.observer.min_val)
        assert torch.equal(fused_q.observer.max_val, plain_q.observer.max_val)
        # Its backward is the closed form (softmax gradient written out, weight gradients as
        # transposed products, g_h by addmm): other summation orders, so the gradients agree
        # to the kernel contract's 1e-5, relative to each tensor's largest entry.
        for a, b in zip(fused_grads, plain_grads, strict=True):
            scale = max(float(b.abs().max()), 1.0)
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * scale)
    assert range_calls == {"range": 3, "forward": 3}

    plain_lorap.load_state_dict(fused_lorap.state_dict())
    plain_q.load_state_dict(fused_q.state_dict())
    fused_q.eval()
    plain_q.eval()
    h = torch.randn(9, 12, generator=torch.Generator().manual_seed(5)) * 4  # outside the range
    assert torch.equal(fused_lorap(h, fused_q), _unfused(plain_lorap, h, plain_q))
    assert range_calls == {"range": 3, "forward": 4}  # eval: no range pass
    assert torch.equal(fused_q.observer.max_val, plain_q.observer.max_val)


@pytest.mark.parametrize(
    "quantizer, nodes",
    [
        (FakeQuantizer(observer=PercentileObserver(0.01)), None),
        (FakeQuantizer(), NodeInfo(protect=torch.arange(7) % 3 == 0)),
        (FakeQuantizer(per_row=True), None),
        (FakeQuantizer().eval(), None),  # no range stored yet
        (IdentityQuantizer(), None),
    ],
    ids=["percentile", "protect", "per_row", "eval_untrained", "identity"],
)
def test_other_quantizers_take_the_unfused_path(quantizer, nodes, range_calls):
    lorap = _trained_lorap(d=5, k=3, r=2)
    h = torch.randn(7, 5, generator=torch.Generator().manual_seed(6))
    reference = copy.deepcopy(quantizer)
    torch.testing.assert_close(lorap(h, quantizer, nodes), _unfused(lorap, h, reference, nodes))
    assert range_calls == {"range": 0, "forward": 0}


def test_float64_input_takes_the_unfused_path(range_calls):
    lorap = _trained_lorap(d=5, k=3, r=2).double()
    h = torch.randn(7, 5, dtype=torch.float64)
    assert lorap(h, FakeQuantizer()).dtype == torch.float64
    assert range_calls == {"range": 0, "forward": 0}


def test_fused_path_through_the_triton_kernels_on_cpu(range_calls):
    """The module path through the Triton kernels under the interpreter: the kernel's dot
    products sum in another order, so y moves by ulps (codes may differ at rounding ties)."""
    fused_lorap, fused_q = _trained_lorap(d=20, k=5, r=3), FakeQuantizer(bits=8)
    plain_lorap, plain_q = _trained_lorap(d=20, k=5, r=3), FakeQuantizer(bits=8)
    h = torch.randn(37, 20, generator=torch.Generator().manual_seed(7)) * 2
    with triton_on_cpu():
        out = fused_lorap(h, fused_q)
        out.square().sum().backward()
    expected = _unfused(plain_lorap, h, plain_q)
    expected.square().sum().backward()
    out, expected = out.detach(), expected.detach()
    assert range_calls == {"range": 1, "forward": 1}
    torch.testing.assert_close(
        fused_q.observer.min_val, plain_q.observer.min_val, rtol=1e-6, atol=0
    )
    torch.testing.assert_close(
        fused_q.observer.max_val, plain_q.observer.max_val, rtol=1e-6, atol=0
    )
    step = fused_q.qparams()[0]
    assert float((out - expected).abs().max()) <= step * 1.0001
    assert float((out != expected).float().mean()) < 0.01
    for a, b in zip(fused_lorap.parameters(), plain_lorap.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-3, atol=1e-3)


def _ops_in(graphs) -> set:
    return {node.target for gm in graphs for node in gm.graph.nodes}


@pytest.mark.slow
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_torch_compile_fullgraph_traces_the_fused_op(training) -> None:
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    lorap, quantizer = _trained_lorap(d=16, k=4, r=2), FakeQuantizer(bits=8)
    twin, twin_q = _trained_lorap(d=16, k=4, r=2), FakeQuantizer(bits=8)
    h = torch.randn(25, 16, generator=torch.Generator().manual_seed(8))
    lorap(h, quantizer)  # store a range
    twin(h, twin_q)
    quantizer.train(training)
    twin_q.train(training)
    compiled = torch.compile(lambda x: lorap(x, quantizer), backend=backend, fullgraph=True)
    for scale in (1.5, 2.0):  # in training the second call sees the range the first widened
        assert torch.equal(compiled(h * scale), twin(h * scale, twin_q))
        assert torch.equal(quantizer.observer.max_val, twin_q.observer.max_val)
    # The grid reaches the op as tensors: the fused op is in the graph, not the unfused ops.
    ops = _ops_in(graphs)
    assert torch.ops.lorap_dist.lorap_fused.default in ops
    assert (torch.ops.lorap_dist.lorap_range.default in ops) == training


@pytest.mark.parametrize(
    "observer", [EMAObserver(0.5), PercentileObserver(0.01)], ids=["fused", "unfused"]
)
def test_in_step_units_the_prompt_moves_in_steps_of_the_grid_held_before_the_call(observer):
    lorap = _trained_lorap(d=6, k=3, r=2, unit="step")
    quantizer = FakeQuantizer(bits=4, observer=copy.deepcopy(observer))
    gen = torch.Generator().manual_seed(2)
    first, second = torch.randn(9, 6, generator=gen), 3 * torch.randn(9, 6, generator=gen)
    # Nothing observed yet: no step, so no prompt; the output is the aggregate's rounding.
    reference = copy.deepcopy(quantizer)
    assert torch.equal(lorap(first, quantizer), reference(first))
    # Then the prompt is P_B times the step of the range held before this call.
    lo, hi = quantizer.observer.min_val.clone(), quantizer.observer.max_val.clone()
    step = (hi - lo).item() / 15
    reference = copy.deepcopy(quantizer)
    prompted = lorap_prompt(second, lorap.w_phi, lorap.p_a, lorap.p_b * step)
    torch.testing.assert_close(lorap(second, quantizer), reference(prompted))
    assert not torch.allclose(reference(prompted), copy.deepcopy(reference)(second))


def test_in_step_units_quantizers_without_one_grid_count_in_the_aggregates_rms() -> None:
    lorap = _trained_lorap(d=5, k=3, r=2, unit="step")
    h = torch.randn(7, 5, generator=torch.Generator().manual_seed(3)) * 4
    rms = h.pow(2).mean().sqrt()
    for quantizer in (IdentityQuantizer(), FakeQuantizer(per_row=True)):
        reference = copy.deepcopy(quantizer)
        expected = reference(lorap_prompt(h, lorap.w_phi, lorap.p_a, lorap.p_b * rms))
        torch.testing.assert_close(lorap(h, quantizer), expected)
    with pytest.raises(ValueError, match="needs the aggregate h"):
        lorap.scaled_p_b(IdentityQuantizer())


def test_the_step_takes_no_gradient_and_p_b_gets_the_steps_multiple() -> None:
    value, step = _trained_lorap(d=5, k=3, r=2), _trained_lorap(d=5, k=3, r=2, unit="step")
    h = torch.randn(7, 5, generator=torch.Generator().manual_seed(4))
    rms = float(h.pow(2).mean().sqrt())
    with torch.no_grad():
        value.p_b.mul_(rms)  # the same prompt in value units
    cotangent = torch.randn(7, 5, generator=torch.Generator().manual_seed(5))
    (value(h, IdentityQuantizer()) * cotangent).sum().backward()
    (step(h, IdentityQuantizer()) * cotangent).sum().backward()
    # d/dP_B (P_B * s) = s, the chain rule through a constant step
    torch.testing.assert_close(step.p_b.grad, value.p_b.grad * rms)
    torch.testing.assert_close(step.w_phi.grad, value.w_phi.grad)


def test_an_unknown_unit_is_refused() -> None:
    with pytest.raises(ValueError, match="unit='bits'.*'value'.*'step'"):
        LoRAP(4, unit="bits")
