"""Layer-wise full-neighbourhood inference equals a whole-graph forward pass, on float rows
and on integer rows (the first layer reading the training exchange's codes)."""

from __future__ import annotations

import pytest
import torch

from lorap_dist.config import ModelConfig, PromptConfig
from lorap_dist.distributed.exchange import FeatureExchange
from lorap_dist.distributed.inference import full_block, layerwise_inference, ordered_unique
from lorap_dist.graph.storage import open_dataset
from lorap_dist.nn.model import build_model
from lorap_dist.quant import quantize_
from lorap_dist.quant.schemes.qat import QATConfig
from lorap_dist.testing.multiprocess import run_multiprocess

ARCHS = ["gcn", "sage", "gat", "gin"]


def make_model(arch: str, in_channels: int, classes: int):
    torch.manual_seed(0)
    model = build_model(
        in_channels,
        classes,
        ModelConfig(arch=arch, hidden=8, layers=2, norm="batch"),
        PromptConfig(kind="gpf_lorap", k=3, r=2),
    )
    for norm in model.norms:  # non-trivial running statistics
        norm.running_mean.uniform_(-0.5, 0.5)
        norm.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _body(rank: int, world_size: int, path: str) -> dict:
    ds = open_dataset(path)
    degree = ds.indptr.diff()
    out = {}
    for arch in ARCHS:
        model = make_model(arch, ds.num_features, ds.num_classes)
        out[arch] = layerwise_inference(
            model,
            ds.part(rank).features_fp32(),
            ds.partition_book,
            ds.indptr,
            ds.indices,
            degree,
            batch_size=37,
        )
    return out


def test_ordered_unique_keeps_first_occurrence_order():
    values, index = ordered_unique(torch.tensor([5, 2, 5, 9, 2, 1]))
    assert values.tolist() == [5, 2, 9, 1]
    assert index.tolist() == [0, 1, 0, 2, 1, 3]


def test_full_block_puts_destinations_first():
    indptr = torch.tensor([0, 2, 3, 3, 5])
    indices = torch.tensor([1, 2, 0, 0, 1], dtype=torch.int32)
    block, src = full_block(torch.tensor([3, 0]), indptr, indices)
    assert src.tolist() == [3, 0, 1, 2]
    assert (block.num_src, block.num_dst) == (4, 2)
    edges = {(int(src[s]), int(torch.tensor([3, 0])[d])) for s, d in block.edge_index.t()}
    assert edges == {(0, 3), (1, 3), (1, 0), (2, 0)}


@pytest.fixture(scope="module")
def distributed_logits(tiny_dataset):
    return run_multiprocess(_body, 2, str(tiny_dataset))


@pytest.mark.parametrize("arch", ARCHS)
def test_layerwise_equals_full_graph_forward(tiny_dataset, distributed_logits, arch):
    ds = open_dataset(tiny_dataset)
    x = ds.features_of(torch.arange(ds.num_nodes))
    dst = torch.repeat_interleave(torch.arange(ds.num_nodes), ds.indptr.diff())
    edge_index = torch.stack([ds.indices.to(torch.int64), dst])
    model = make_model(arch, ds.num_features, ds.num_classes)
    with torch.no_grad():
        expected = model(x, edge_index)
    got = torch.cat([r[arch] for r in distributed_logits])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def whole_graph(ds) -> torch.Tensor:
    """``edge_index [2, E]`` of the dataset's in-edge CSR."""
    dst = torch.repeat_interleave(torch.arange(ds.num_nodes), ds.indptr.diff())
    return torch.stack([ds.indices.to(torch.int64), dst])


@pytest.mark.parametrize("arch", ["sage", "gin"])
@pytest.mark.parametrize("payload_bits", [None, 4], ids=["int8", "int4"])
def test_layerwise_on_codes_equals_the_full_graph_forward_on_them(
    one_rank_group, wide_datasets, arch, payload_bits
):
    ds = open_dataset(wide_datasets["int8"])
    part = ds.part(0)
    exchange = FeatureExchange(
        ds.partition_book, part.features, part.scales, payload_bits=payload_bits
    )
    rows, edge_index = exchange.fetch_rows(torch.arange(ds.num_nodes)), whole_graph(ds)
    torch.manual_seed(0)
    model = build_model(
        ds.num_features,
        ds.num_classes,
        ModelConfig(arch=arch, hidden=8, layers=2, norm="batch"),
        PromptConfig(kind="lorap", k=3, r=2),
    )
    quantize_(model, QATConfig(bits=4))
    with torch.no_grad():
        model.train()(rows, edge_index)  # the observers see a range (first input point aside)
        expected = model.eval()(rows, edge_index)
    args = (ds.partition_book, ds.indptr, ds.indices, ds.indptr.diff())
    got = layerwise_inference(model, exchange, *args, batch_size=37)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    on_floats = layerwise_inference(model, part.features_fp32(), *args, batch_size=37)
    assert not torch.allclose(on_floats, expected, atol=1e-3)  # the input point rounds them


def test_layerwise_on_codes_refuses_gpf(one_rank_group, wide_datasets):
    ds = open_dataset(wide_datasets["int8"])
    part = ds.part(0)
    exchange = FeatureExchange(ds.partition_book, part.features, part.scales)
    model = build_model(
        ds.num_features, ds.num_classes, ModelConfig(arch="sage"), PromptConfig(kind="gpf")
    )
    with pytest.raises(ValueError, match="integer rows for a model with GPF-plus"):
        layerwise_inference(
            model, exchange, ds.partition_book, ds.indptr, ds.indices, ds.indptr.diff()
        )
    assert model.training  # refused before it was put in eval mode
