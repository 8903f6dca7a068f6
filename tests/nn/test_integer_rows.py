"""SAGE and GIN on integer feature rows: the fused ``quant_aggregate`` over the codes gives
the float path's result on ``rows.dequantize()`` with the ``input`` point bypassed, with the
same weight and prompt gradients, in a layer and in the model stack; the layers and stacks
that cannot take integer rows say so."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

import lorap_dist.nn.conv as conv_module
import lorap_dist.prompt.lorap as lorap_module
from lorap_dist.config import ModelConfig, PromptConfig
from lorap_dist.nn import QGATConv, QGCNConv, QGINConv, QSAGEConv, build_model
from lorap_dist.nn.aggregate import MIN_WIDTH
from lorap_dist.nn.conv import QuantizedConv
from lorap_dist.quant import IdentityQuantizer, QuantizedRows, quantize_
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
        spy(lorap_module, name, lambda args, kwargs: kwargs["reduce"])
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


def test_malformed_rows_are_named():
    rows = features(4, 8)
    with pytest.raises(ValueError, match=r"QGINConv's x.scales must be float32 \[N\] = \[14\]"):
        QGINConv(4, 3)(QuantizedRows(rows.codes, rows.scales[:3]), random_graph(N, 40))
    with pytest.raises(ValueError, match="QSAGEConv got x with 14 rows"):
        QSAGEConv(4, 3)(rows, random_graph(N, 40), size=(13, 13))


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
