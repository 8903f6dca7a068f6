"""PyG FeatureStore / GraphStore adapters over a prepared dataset, via PyG's public API."""

from __future__ import annotations

import pytest
import torch

from lorap_dist.config import SyntheticConfig
from lorap_dist.graph.prepare import PrepareOptions, prepare
from lorap_dist.graph.pyg_stores import DatasetFeatureStore, DatasetGraphStore
from lorap_dist.graph.storage import open_dataset


@pytest.fixture(scope="module", params=["fp32", "int8"])
def dataset(tmp_path_factory, request):
    out = tmp_path_factory.mktemp("pyg") / "ds"
    cfg = SyntheticConfig(num_nodes=400, num_features=6, seed=4)
    prepare(
        PrepareOptions(
            out=out,
            parts=3,
            partitioner="random",
            features=request.param,
            synthetic=cfg,
            use_ray=False,
            progress=False,
        )
    )
    return open_dataset(out)


def test_feature_store_reads_features_labels_and_splits(dataset):
    store = DatasetFeatureStore(dataset)
    index = torch.tensor([399, 0, 150, 150, 271])
    x = store.get_tensor(group_name=None, attr_name="x", index=index)
    assert torch.equal(x, dataset.features_of(index))
    assert torch.equal(store.get_tensor(None, "y", index), dataset.labels_of(index))
    split = store.get_tensor(None, "split", None)
    assert split.shape == (400,)
    assert torch.equal(torch.nonzero(split == 1).flatten(), dataset.split_ids("train"))
    assert store.get_tensor_size(None, "x", None) == (400, 6)
    assert {a.attr_name for a in store.get_all_tensor_attrs()} == {"x", "y", "split"}
    with pytest.raises(KeyError, match="'edge_weight' is not stored"):
        store.get_tensor(None, "edge_weight", None)


def test_graph_store_serves_csc_and_coo(dataset):
    store = DatasetGraphStore(dataset)
    (attr,) = store.get_all_edge_attrs()
    row, colptr = store.get_edge_index(edge_type=None, layout="csc", size=(400, 400))
    assert torch.equal(colptr, dataset.indptr)
    assert torch.equal(row, dataset.indices.long())
    src, dst = store.get_edge_index(edge_type=None, layout="coo")
    assert torch.equal(src, row)
    assert torch.equal(dst, torch.repeat_interleave(torch.arange(400), colptr.diff()))
    rowptr, col = store.get_edge_index(edge_type=None, layout="csr")
    assert rowptr[-1] == len(col) == dataset.num_edges
    # Symmetric graph: CSR by source equals CSC by destination.
    assert torch.equal(rowptr, colptr) and torch.equal(col, row)
    assert attr.layout.value == "csc" and attr.size == (400, 400)


def test_stores_are_read_only(dataset):
    features, graph = DatasetFeatureStore(dataset), DatasetGraphStore(dataset)
    assert (
        features.put_tensor(torch.zeros(400, 6), group_name=None, attr_name="x", index=None)
        is False
    )
    assert (
        graph.put_edge_index(
            (dataset.indices, dataset.indptr), edge_type=None, layout="csc", size=(400, 400)
        )
        is False
    )
    assert torch.equal(
        features.get_tensor(None, "x", torch.tensor([1])), dataset.features_of(torch.tensor([1]))
    )
