"""CSR-matmul aggregation equals PyG's gather-then-scatter bit for bit, values and gradients."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch_geometric.utils import scatter

from lorap_dist.nn import QGINConv, QSAGEConv
from lorap_dist.nn.aggregate import MIN_WIDTH, CSRAggregation
from lorap_dist.testing.graphs import random_bipartite, random_graph


def pyg_aggregate(x: torch.Tensor, edge_index: torch.Tensor, num_dst: int, reduce: str):
    """What MessagePassing.propagate does with messages x_j: gather, then scatter."""
    return scatter(x[edge_index[0]], edge_index[1], 0, dim_size=num_dst, reduce=reduce)


def graph(num_src: int, num_dst: int, edges: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(num_src, (edges,), generator=g)
    dst = torch.randint(max(1, num_dst - 3), (edges,), generator=g)  # the last rows get none
    edge_index = torch.stack([src, dst])
    return torch.cat([edge_index, edge_index[:, :5]], 1)  # duplicate edges too


@pytest.fixture
def one_thread():
    """Bit-for-bit equality is a one-thread property: with several threads PyTorch's
    kernels may split a row's sum differently."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("reduce", ["sum", "mean"])
def test_with_several_threads_values_and_gradients_agree_to_rounding(reduce):
    threads = torch.get_num_threads()
    torch.set_num_threads(max(2, threads))
    try:
        edge_index = graph(300, 300, 3000, seed=9)
        x = torch.randn(300, 500, generator=torch.Generator().manual_seed(1))
        a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
        ours = CSRAggregation()(a, edge_index, 300, reduce)
        theirs = pyg_aggregate(b, edge_index, 300, reduce)
        torch.testing.assert_close(ours, theirs)
        ours.sum().backward()
        theirs.sum().backward()
        torch.testing.assert_close(a.grad, b.grad)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("reduce", ["sum", "mean"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("sizes", [(50, 50, 400), (60, 20, 300), (7, 7, 3)])
@pytest.mark.parametrize("width", [MIN_WIDTH, 33, 64, 500])
def test_values_and_gradients_equal_pygs_scatter(reduce, dtype, sizes, width):
    num_src, num_dst, edges = sizes
    edge_index = graph(num_src, num_dst, edges, seed=num_src)
    x = torch.randn(num_src, width, dtype=dtype, generator=torch.Generator().manual_seed(1))
    upstream = torch.randn(num_dst, width, dtype=dtype, generator=torch.Generator().manual_seed(2))
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours = CSRAggregation()(a, edge_index, num_dst, reduce)
    theirs = pyg_aggregate(b, edge_index, num_dst, reduce)
    assert torch.equal(ours, theirs)
    ours.backward(upstream)
    theirs.backward(upstream)
    assert torch.equal(a.grad, b.grad)
    assert (ours[-1] == 0).all() and ours.abs().sum() > 0  # a destination without edges


def test_the_adjacency_is_remembered_for_the_same_unchanged_edge_index_only():
    aggregate = CSRAggregation()
    edge_index = graph(30, 30, 100, seed=3)
    x = torch.randn(30, MIN_WIDTH)
    aggregate(x, edge_index, 30, "sum")
    first = aggregate._seen[-1]
    aggregate(x, edge_index, 30, "mean")
    assert aggregate._seen[-1] is first
    edge_index[0, 0] = (edge_index[0, 0] + 1) % 30  # changed in place: built again
    out = aggregate(x, edge_index, 30, "sum")
    assert aggregate._seen[-1] is not first
    assert torch.equal(out, pyg_aggregate(x, edge_index, 30, "sum"))
    other = graph(30, 30, 100, seed=4)
    assert torch.equal(aggregate(x, other, 30, "sum"), pyg_aggregate(x, other, 30, "sum"))


def test_what_it_does_not_handle_is_left_to_pyg_and_bad_input_is_named():
    aggregate = CSRAggregation()
    edge_index = graph(10, 10, 20, seed=5)
    wide = torch.ones(10, MIN_WIDTH)
    assert aggregate(wide.long(), edge_index, 10, "sum") is None
    assert aggregate(wide[:, : MIN_WIDTH - 1], edge_index, 10, "sum") is None  # too narrow
    assert aggregate(wide, edge_index[:, :0], 10, "sum") is None
    with pytest.raises(ValueError, match="below 10"):
        aggregate(wide, edge_index + 5, 10, "sum")
    with pytest.raises(ValueError, match="reduce='max'"):
        aggregate(wide, edge_index, 10, "max")


def test_the_remembered_adjacency_is_neither_saved_nor_copied():
    layer = QGINConv(MIN_WIDTH, 3)
    edge_index = random_graph(12, 30, 0)
    layer(torch.randn(12, MIN_WIDTH), edge_index)
    assert layer.csr_aggregation._seen is not None
    for clone in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
        assert clone.csr_aggregation._seen is None


class _Propagate:
    """Stands in for a layer's CSRAggregation where the matmul never applies."""

    def __call__(self, *args):
        return None

    def with_root(self, *args):
        return None


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("reduce", ["sum", "mean"])
@pytest.mark.parametrize("use", ["both", "aggregate", "root"])
def test_with_root_equals_matmul_and_slice_bit_for_bit(reduce, use):
    """One backward for the aggregate and the root rows gives the gradient autograd sums
    from the matmul and the slice, to the bit, whichever of the two the loss uses."""
    edge_index = random_bipartite(30, 12, 90, seed=2)  # destinations: the first 12 sources
    x = torch.randn(30, MIN_WIDTH)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    agg_a, root_a = CSRAggregation().with_root(a, edge_index, 12, reduce)
    agg_b, root_b = CSRAggregation()(b, edge_index, 12, reduce), b[:12]
    assert torch.equal(agg_a, agg_b) and torch.equal(root_a, root_b)
    c1, c2 = torch.randn(12, MIN_WIDTH), torch.randn(12, MIN_WIDTH)
    for agg, root, leaf in ((agg_a, root_a, a), (agg_b, root_b, b)):
        loss = {"both": (agg * c1).sum() + (root * c2).sum(), "aggregate": (agg * c1).sum()}
        loss["root"] = (root * c2).sum()
        loss[use].backward()
        assert leaf.grad is not None
    assert torch.equal(a.grad, b.grad)
    x.add_(1)  # the root rows are a copy, not a view of x
    assert not torch.equal(root_a, x[:12])
    # A full graph's root is all of x: no copy, the caller slices as before.
    assert CSRAggregation().with_root(x, random_graph(30, 90, 2), 30, reduce) is None


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize(
    "make", [lambda: QGINConv(MIN_WIDTH, 5, 8), lambda: QSAGEConv(MIN_WIDTH + 7, 5)]
)
def test_gin_and_sage_aggregate_through_it_with_their_earlier_results(make):
    """The oracle: the same layer aggregating through PyG's propagate."""
    torch.manual_seed(0)
    ours = make()
    theirs = copy.deepcopy(ours)
    theirs.csr_aggregation = _Propagate()  # propagate and slice, as before
    edge_index = random_graph(20, 70, 1)
    x = torch.randn(20, ours.in_channels)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_ours, out_theirs = ours(a, edge_index), theirs(b, edge_index)
    assert ours.csr_aggregation._seen is not None  # it went through the matmul
    assert torch.equal(out_ours, out_theirs)
    out_ours.sum().backward()
    out_theirs.sum().backward()
    assert torch.equal(a.grad, b.grad)
