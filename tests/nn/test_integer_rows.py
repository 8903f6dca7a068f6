"""SAGE and GIN on integer feature rows: the fused ``quant_aggregate`` over the codes gives
the float path's result on ``rows.dequantize()`` with the ``input`` point bypassed, with the
same weight and prompt gradients, in a layer and in the model stack; with LoRAP on a grid a
kernel can take, one ``aggregate_lorap`` op gives what ``quant_aggregate`` then
``LoRAP.forward`` give, and other schemes keep those two steps; the layers and stacks that
cannot take integer rows say so."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable

import pytest
import torch
from lorap_dist.kernels._triton import triton_on_cpu
from torch import Tensor, nn

import lorap_dist.nn.conv as conv_module
import lorap_dist.prompt.lorap as lorap_module
from lorap_dist.config import ModelConfig, PromptConfig
from lorap_dist.graph import NodeInfo
from lorap_dist.nn import QGATConv, QGCNConv, QGINConv, QSAGEConv, build_model
from lorap_dist.nn.aggregate import MIN_WIDTH
from lorap_dist.nn.conv import QuantizedConv
from lorap_dist.quant import (
    A2QConfig,
    DegreeQuantConfig,
    IdentityQuantizer,
    MixQConfig,
    QuantizedRows,
    quantize_,
)
from lorap_dist.quant.schemes.qat import QATConfig
from lorap_dist.testing.graphs import GRAPH_FORMS, graph_form, in_neighbour_block, random_graph

N, OUT = 14, 6
#: Below MIN_WIDTH the float path scatters through PyG (another summation order); from it
#: on, it multiplies by the same CSR matrix as the op.
WIDTHS = (5, 40)
#: The float path's sums in another order: fp32 rounding of sums of a few unit-sized terms.
ATOL = RTOL = 1e-5


def make_layers(arch: str, width: int, lorap: bool, qat: bool) -> tuple[QuantizedConv, nn.Module]:
    """A layer and its reference: a copy whose ``input`` point is the identity."""
    torch.manual_seed(0)
    prompt = PromptConfig(kind="lorap", k=3, r=2) if lorap else None
    if arch == "sage":
        layer = QSAGEConv(width, OUT, prompt=prompt)
    else:
        layer = QGINConv(width, OUT, hidden_channels=7, eps=0.3, train_eps=True, prompt=prompt)
    if lorap:
        nn.init.normal_(layer.lorap.p_b)  # a non-zero prompt
    if qat:
        quantize_(layer, QATConfig(bits=4))
    reference = copy.deepcopy(layer)
    reference.quantizers["input"] = IdentityQuantizer()
    return layer, reference


def features(width: int, bits: int, seed: int = 0) -> QuantizedRows:
    x = torch.randn(N, width, generator=torch.Generator().manual_seed(seed))
    return QuantizedRows.from_float(x, bits)


def run_both(
    layer: nn.Module, reference: nn.Module, rows: QuantizedRows, graph: object
) -> tuple[Tensor, Tensor]:
    """Both outputs, after one backward of the same cotangent through each."""
    out, expected = layer(rows, graph), reference(rows.dequantize(), graph)
    cotangent = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    (out * cotangent).sum().backward()
    (expected * cotangent).sum().backward()
    return out, expected


def assert_same(out: Tensor, expected: Tensor, exact: bool) -> None:
    if exact:
        assert torch.equal(out, expected), (out - expected).abs().max()
    else:
        torch.testing.assert_close(out, expected, atol=ATOL, rtol=RTOL)


def assert_same_grads(layer: nn.Module, reference: nn.Module, exact: bool) -> None:
    theirs = dict(reference.named_parameters())
    for name, parameter in layer.named_parameters():
        if theirs[name].grad is None:
            assert parameter.grad is None, f"{name} got a gradient, the reference none"
            continue
        assert parameter.grad is not None, f"{name} got no gradient"
        assert_same(parameter.grad, theirs[name].grad, exact)


@pytest.fixture
def fused_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """``"<op> <reduce>"`` for every call the layers make to an op over the codes:
    ``quant_aggregate``, or ``aggregate_lorap`` (its range pass and its forward)."""
    calls: list[str] = []

    def spy(module: object, name: str, reduce_of: Callable) -> None:
        op = getattr(module, name)

        def counting(*args, **kwargs):
            calls.append(f"{name} {reduce_of(args, kwargs)}")
            return op(*args, **kwargs)

        monkeypatch.setattr(module, name, counting)

    spy(conv_module, "quant_aggregate", lambda args, kwargs: args[6])
    for name in ("aggregate_lorap_forward_range", "aggregate_lorap_forward"):
        spy(lorap_module, name, lambda args, kwargs: args[0].reduce)
    return calls


@pytest.mark.parametrize("arch", ["sage", "gin"])
@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("lorap", [False, True], ids=["plain", "lorap"])
@pytest.mark.parametrize("qat", [False, True], ids=["fp32", "qat4"])
@pytest.mark.parametrize("graph_kind", ["edge_index", "block", "no_edges"])
def test_integer_rows_match_the_float_path(arch, width, bits, lorap, qat, graph_kind, fused_calls):
    layer, reference = make_layers(arch, width, lorap, qat)
    rows = features(width, bits, seed=width + bits)
    edge_index = random_graph(N, 40, seed=width)
    if graph_kind == "block":
        graph, src_ids = in_neighbour_block(edge_index, torch.tensor([3, 9, 0, 12, 5]))
        rows = rows.rows(src_ids)
    elif graph_kind == "no_edges":
        graph = edge_index[:, :0]
    else:
        graph = edge_index
    out, expected = run_both(layer.train(), reference.train(), rows, graph)
    reduce = "mean" if arch == "sage" else "sum"
    if lorap and qat:  # the prompt point's grid goes to aggregate_lorap (tested below)
        ops = ["aggregate_lorap_forward_range", "aggregate_lorap_forward"]
    else:
        ops = ["quant_aggregate"]
    assert fused_calls == [f"{op} {reduce}" for op in ops]
    # From MIN_WIDTH on the op adds the same products in the same order as the float path.
    exact = width >= MIN_WIDTH or graph_kind == "no_edges"
    assert_same(out, expected, exact)
    assert_same_grads(layer, reference, exact)
    if lorap:
        assert layer.lorap.p_b.grad.abs().sum() > 0


@pytest.mark.parametrize("arch", ["sage", "gin"])
@pytest.mark.parametrize("form", GRAPH_FORMS)
def test_integer_rows_on_each_graph_form(arch, form):
    layer, reference = make_layers(arch, 40, lorap=True, qat=False)
    graph = graph_form(form, random_graph(N, 40, seed=2, duplicates=0), N, N)
    out, expected = run_both(layer, reference, features(40, 8), graph)
    assert_same(out, expected, exact=False)
    assert_same_grads(layer, reference, exact=False)


@pytest.mark.parametrize("arch", ["sage", "gin"])
def test_the_input_point_is_bypassed(arch):
    """At INT4 a per-tensor rounding of the rows would change the output: it is not made."""
    layer, reference = make_layers(arch, 40, lorap=False, qat=True)
    rows, graph = features(40, 8), random_graph(N, 40)
    layer.eval(), reference.eval()
    layer(rows, graph), reference(rows.dequantize(), graph)  # calibrate the other points
    rounded = copy.deepcopy(layer)(rows.dequantize(), graph)  # the input point applied
    out = layer(rows, graph)
    assert torch.equal(out, reference(rows.dequantize(), graph))
    assert not torch.allclose(out, rounded, atol=1e-3)


@pytest.mark.parametrize("arch", ["sage", "gin"])
def test_rows_take_no_gradient(arch):
    layer, _ = make_layers(arch, 8, lorap=True, qat=False)
    rows = features(8, 8)
    scales = rows.scales.clone().requires_grad_()
    out = layer(QuantizedRows(rows.codes, scales, 8), random_graph(N, 40))
    out.sum().backward()
    assert scales.grad is None
    assert layer.lorap.w_phi.grad is not None


@pytest.mark.parametrize("layer", [QGCNConv(4, 3), QGATConv(4, 3, heads=2)], ids=["gcn", "gat"])
def test_layers_without_integer_rows_say_what_to_pass(layer):
    rows = features(4, 8)
    name = type(layer).__name__
    with pytest.raises(TypeError, match=f"{name} takes float node features, got QuantizedRows"):
        layer(rows, random_graph(N, 40))
    with pytest.raises(TypeError, match=r"Pass rows.dequantize\(\)"):
        layer(rows, random_graph(N, 40))


def test_a_pair_of_integer_rows_is_refused():
    rows = features(4, 8)
    with pytest.raises(TypeError, match="QSAGEConv got QuantizedRows inside an"):
        QSAGEConv(4, 3)((rows, None), random_graph(N, 40))


@pytest.mark.parametrize("arch", [QSAGEConv, QGINConv])
def test_integer_rows_over_a_weighted_adjacency_are_refused(arch):
    """The fused op sums codes unweighted; scaling by the adjacency's values is the float
    path's, so the layer says to dequantize rather than drop the weights."""
    rows = features(4, 8)
    edges = random_graph(N, 40).unique(dim=1)  # one entry per edge
    e = edges.size(1)
    weighted = torch.sparse_coo_tensor(edges.flip(0), torch.full((e,), 2.0), (N, N)).coalesce()
    with pytest.raises(ValueError, match=r"values are not all 1; pass rows.dequantize\(\)"):
        arch(4, 3)(rows, weighted)
    ones = torch.sparse_coo_tensor(edges.flip(0), torch.ones(e), (N, N)).coalesce()
    assert arch(4, 3)(rows, ones).shape == (N, 3)


def test_a_float64_layer_says_how_to_take_integer_rows():
    rows = features(4, 8)
    with pytest.raises(TypeError, match=r"torch.float64 parameters .*\.float\(\)"):
        QGINConv(4, 3).double()(rows, random_graph(N, 40))


def test_malformed_rows_are_named():
    rows = features(4, 8)
    with pytest.raises(ValueError, match=r"QGINConv's x.scales must be float32 \[N\] = \[14\]"):
        QGINConv(4, 3)(QuantizedRows(rows.codes, rows.scales[:3]), random_graph(N, 40))
    with pytest.raises(ValueError, match="QSAGEConv got x with 14 rows"):
        QSAGEConv(4, 3)(rows, random_graph(N, 40), size=(13, 13))


# -- LoRAP fused into the aggregation ----------------------------------------------------


def make_prompted(
    arch: str, width: int, bits: int, rounding: str = "once", unit: str = "value"
) -> tuple[QuantizedConv, QuantizedConv]:
    """A QAT layer with LoRAP, and a copy that runs today's two steps on integer rows
    (``quant_aggregate``, then ``quantize_aggregate`` with :meth:`LoRAP.forward`)."""
    torch.manual_seed(0)
    prompt = PromptConfig(kind="lorap", k=4, r=2, rounding=rounding, unit=unit)
    if arch == "sage":
        layer = QSAGEConv(width, OUT, prompt=prompt)
    else:
        layer = QGINConv(width, OUT, hidden_channels=7, eps=0.3, train_eps=True, prompt=prompt)
    nn.init.normal_(layer.lorap.p_b)  # a non-zero prompt
    quantize_(layer, QATConfig(bits=bits))
    unfused = copy.deepcopy(layer)
    unfused.fuses_prompt = lambda nodes_dst: False
    return layer, unfused


def rows_and_graph(graph_kind: str, width: int, bits: int) -> tuple[QuantizedRows, object]:
    rows, edge_index = features(width, bits, seed=width + bits), random_graph(N, 40, seed=width)
    if graph_kind == "block":
        block, src_ids = in_neighbour_block(edge_index, torch.tensor([3, 9, 0, 12, 5]))
        return rows.rows(src_ids), block
    return rows, edge_index


def step(layer: nn.Module, rows: QuantizedRows, graph: object, training: bool) -> Tensor:
    """The output of one forward in the mode asked for, after a backward of a fixed
    cotangent through it."""
    out = layer.train(training)(rows, graph)
    cotangent = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    (out * cotangent).sum().backward()
    return out.detach()


def assert_same_state(layer: nn.Module, reference: nn.Module) -> None:
    """Every parameter and buffer bit for bit: the observers' ranges among them."""
    theirs = reference.state_dict()
    for name, value in layer.state_dict().items():
        assert torch.equal(value, theirs[name]), name


@pytest.mark.parametrize("arch", ["sage", "gin"])
@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("graph_kind", ["edge_index", "block"])
@pytest.mark.parametrize("unit", ["value", "step"])
def test_lorap_on_integer_rows_is_one_fused_op(arch, width, bits, graph_kind, unit, fused_calls):
    """One ``aggregate_lorap`` op where ``quant_aggregate`` and ``LoRAP.forward`` ran. On the
    CPU it runs the same fp32 operations in the same order (the aggregate of
    ``quant_aggregate``'s CPU path, the range pass and forward of ``lorap_fused``'s), so
    outputs, observed ranges and gradients equal the two steps' bit for bit; with the
    prompt counted in steps, both take the step of the grid held before the call."""
    layer, unfused = make_prompted(arch, width, bits, unit=unit)
    reduce = "mean" if arch == "sage" else "sum"
    fused_ops = [f"aggregate_lorap_forward_range {reduce}", f"aggregate_lorap_forward {reduce}"]
    rows, graph = rows_and_graph(graph_kind, width, bits)
    for growth, training in ((1, True), (2, True), (3, False)):  # the range folds in over steps
        rows = QuantizedRows.from_float(rows.dequantize() * growth, bits)
        fused_calls.clear()
        out = step(layer, rows, graph, training)
        assert fused_calls == (fused_ops if training else fused_ops[1:])
        expected = step(unfused, rows, graph, training)
        assert fused_calls[-1] == f"quant_aggregate {reduce}"
        assert torch.equal(out, expected), (out - expected).abs().max()
        prompt, theirs = layer.quantizers["prompt"].observer, unfused.quantizers["prompt"].observer
        assert torch.equal(prompt.min_val, theirs.min_val)
        assert torch.equal(prompt.max_val, theirs.max_val)
        assert_same_state(layer, unfused)
        assert_same_grads(layer, unfused, exact=True)
    assert layer.lorap.p_b.grad.abs().sum() > 0


@pytest.mark.parametrize("arch", ["sage", "gin"])
@pytest.mark.parametrize("bits", [8, 4])
def test_twice_rounding_fuses_in_evaluation(arch, bits, fused_calls):
    """With ``rounding="twice"`` the ``aggregate`` point observes the aggregate in training,
    before any op could take its grid: two steps. In evaluation its stored grid goes to the
    op, which rounds the aggregate on it with the same fake quantization."""
    layer, unfused = make_prompted(arch, 40, bits, rounding="twice")
    rows, graph = rows_and_graph("edge_index", 40, bits)
    reduce = "mean" if arch == "sage" else "sum"
    assert torch.equal(step(layer, rows, graph, True), step(unfused, rows, graph, True))
    assert fused_calls == [f"quant_aggregate {reduce}"] * 2
    fused_calls.clear()
    assert torch.equal(step(layer, rows, graph, False), step(unfused, rows, graph, False))
    assert fused_calls == [f"aggregate_lorap_forward {reduce}", f"quant_aggregate {reduce}"]
    assert_same_state(layer, unfused)
    assert_same_grads(layer, unfused, exact=True)


def test_twice_rounding_passes_the_aggregate_grid(monkeypatch):
    """The aggregate point's grid reaches the op: without it the result would differ."""
    layer, _ = make_prompted("sage", 40, 4, rounding="twice")
    rows, graph = rows_and_graph("edge_index", 40, 4)
    step(layer, rows, graph, True)  # the aggregate point observes a range
    grids = []
    forward = lorap_module.aggregate_lorap_forward

    def recording(*args, **kwargs):
        grids.append(kwargs["agg_grid"])
        return forward(*args, **kwargs)

    monkeypatch.setattr(lorap_module, "aggregate_lorap_forward", recording)
    out = layer.eval()(rows, graph)
    scale, zero_point, qmin, qmax = layer.quantizers["aggregate"].grid()
    assert len(grids) == 1 and grids[0][2:] == (qmin, qmax) == (0, 15)
    assert torch.equal(grids[0][0], scale) and torch.equal(grids[0][1], zero_point)
    layer.quantizers["aggregate"] = IdentityQuantizer()  # a layer that does not round h
    assert not torch.equal(layer.eval()(rows, graph), out)


def scheme_layer(arch: str, scheme: str) -> tuple[QuantizedConv, NodeInfo]:
    """A LoRAP layer under a scheme whose prompt point cannot hand its grid to a kernel,
    and the node facts it reads."""
    layer, _ = make_prompted(arch, 40, 4)
    nodes = NodeInfo(ids=torch.arange(N), degree=torch.arange(N) % 5 + 1)
    if scheme == "degree_quant":  # percentile ranges and protected rows
        layer.node_transform = None  # the hook a GNN has; its mask is drawn here instead
        quantize_(layer, DegreeQuantConfig(bits=4))
        nodes.protect = torch.arange(N) % 4 == 0
    elif scheme == "a2q":  # learned per-node steps
        quantize_(layer, A2QConfig(bits=4), num_nodes=N)
    elif scheme == "mixq":  # a learned mixture of bit widths
        quantize_(layer, MixQConfig(bits=4))
    elif scheme == "qat_protect":  # min/max per tensor, but with protected rows
        nodes.protect = torch.arange(N) % 4 == 0
    else:  # one range per row
        quantize_(layer, QATConfig(bits=4, per_row=True))
    return layer, nodes


@pytest.mark.parametrize("arch", ["sage", "gin"])
@pytest.mark.parametrize("scheme", ["degree_quant", "a2q", "mixq", "qat_protect", "qat_per_row"])
def test_other_schemes_keep_the_two_steps(arch, scheme, fused_calls):
    layer, nodes = scheme_layer(arch, scheme)
    rows, graph = features(40, 4), random_graph(N, 40)
    out = layer.train()(rows, graph, nodes=nodes)
    out.sum().backward()
    assert fused_calls == [f"quant_aggregate {'mean' if arch == 'sage' else 'sum'}"]
    assert bool(out.isfinite().all()) and layer.lorap.p_b.grad is not None


@pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1",
    reason="runs the Triton kernels on CPU tensors, in Triton's interpreter",
)
@pytest.mark.parametrize("arch", ["sage", "gin"])
def test_fused_lorap_through_the_triton_kernels_on_cpu(arch, fused_calls):
    """The layer's fused path through the Triton kernels under the interpreter, against the
    two steps on the CPU path. The kernels sum the aggregate in registers and the prompt's
    dot products in other orders, so ``y = h + p`` may move by ulps: the observed range by a
    relative 1e-6, a code by one step of the prompt grid where ``y`` sits at a rounding tie.
    The gradients of the prompt are the closed form's (another summation order than
    autograd's): within the kernel contract's 1e-5 of each tensor's largest entry (here
    3e-6 at most, against entries up to 11; the range and the codes came out equal)."""
    layer, unfused = make_prompted(arch, 24, 8)
    rows, graph = rows_and_graph("edge_index", 24, 8)
    reduce = "mean" if arch == "sage" else "sum"
    cotangent = torch.randn(N, 24, generator=torch.Generator().manual_seed(1))
    with triton_on_cpu():
        _, h, _ = layer.train().aggregate_input(rows, graph, None, None, reduce)
        (h * cotangent).sum().backward()
    _, expected, _ = unfused.train().aggregate_input(rows, graph, None, None, reduce)
    (expected * cotangent).sum().backward()
    assert fused_calls == [
        f"aggregate_lorap_forward_range {reduce}",
        f"aggregate_lorap_forward {reduce}",
        f"quant_aggregate {reduce}",
    ]
    prompt, theirs = layer.quantizers["prompt"].observer, unfused.quantizers["prompt"].observer
    torch.testing.assert_close(prompt.min_val, theirs.min_val, rtol=1e-6, atol=0)
    torch.testing.assert_close(prompt.max_val, theirs.max_val, rtol=1e-6, atol=0)
    grid_step = layer.quantizers["prompt"].qparams()[0]
    h, expected = h.detach(), expected.detach()
    assert float((h - expected).abs().max()) <= grid_step * 1.0001
    assert float((h != expected).float().mean()) < 0.01
    for name in ("w_phi", "p_a", "p_b"):
        a, b = getattr(layer.lorap, name).grad, getattr(unfused.lorap, name).grad
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * float(b.abs().max()))


# -- the model stack ---------------------------------------------------------------------


def make_models(arch: str, width: int, kind: str, qat: bool) -> tuple[nn.Module, nn.Module]:
    """A 2-layer stack and its reference, whose first layer's ``input`` point is bypassed."""
    torch.manual_seed(0)
    model = build_model(
        width, OUT, ModelConfig(arch=arch, hidden=8, layers=2, dropout=0.3), PromptConfig(kind)
    )
    for module in model.modules():
        if hasattr(module, "p_b"):
            nn.init.normal_(module.p_b)
        if hasattr(module, "bases"):
            nn.init.normal_(module.bases)
    if qat:
        quantize_(model, QATConfig(bits=4))
    reference = copy.deepcopy(model)
    reference.convs[0].quantizers["input"] = IdentityQuantizer()
    return model, reference


def stack_graph(graph_kind: str, rows: QuantizedRows) -> tuple[object, QuantizedRows]:
    edge_index = random_graph(N, 40, seed=7)
    if graph_kind == "edge_index":
        return edge_index, rows
    outer, hop1 = in_neighbour_block(edge_index, torch.tensor([2, 11, 7]))
    inner, hop2 = in_neighbour_block(edge_index, hop1)
    return [inner, outer], rows.rows(hop2)


@pytest.mark.parametrize("arch", ["sage", "gin"])
@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("kind", ["none", "lorap"])
@pytest.mark.parametrize("qat", [False, True], ids=["fp32", "qat4"])
@pytest.mark.parametrize("graph_kind", ["edge_index", "blocks"])
def test_model_on_integer_rows_matches_the_float_path(arch, width, kind, qat, graph_kind):
    model, reference = make_models(arch, width, kind, qat)
    graph, rows = stack_graph(graph_kind, features(width, 8, seed=3))
    exact = width >= MIN_WIDTH
    torch.manual_seed(5)  # dropout between the layers draws the same masks on both
    out = model.train()(rows, graph)
    torch.manual_seed(5)
    expected = reference.train()(rows.dequantize(), graph)
    assert_same(out, expected, exact)
    out.sum().backward(), expected.sum().backward()
    assert_same_grads(model, reference, exact)
    assert_same(model.eval()(rows, graph), reference.eval()(rows.dequantize(), graph), exact)


@pytest.mark.parametrize("arch", ["sage", "gin"])
@pytest.mark.parametrize("kind", ["gpf", "gpf_lorap"])
def test_gpf_dequantizes_the_rows_first(arch, kind, fused_calls):
    """GPF-plus prompts float features: the rows are dequantized and take the input point."""
    model, _ = make_models(arch, 40, kind, qat=True)
    rows, graph = features(40, 8), random_graph(N, 40, seed=7)
    model.eval()(rows.dequantize(), graph)  # a first pass sets the observers' ranges
    assert torch.equal(model(rows, graph), model(rows.dequantize(), graph))
    assert fused_calls == []


@pytest.mark.parametrize("arch", ["gcn", "gat"])
def test_stacks_without_integer_rows_say_what_to_pass(arch):
    model = build_model(4, OUT, ModelConfig(arch=arch, hidden=8, heads=2), PromptConfig())
    with pytest.raises(TypeError, match=rf"arch={arch} got QuantizedRows as x; only SAGE"):
        model(features(4, 8), random_graph(N, 40))
