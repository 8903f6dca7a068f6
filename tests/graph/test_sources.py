"""Sources: OGB's real loader on OGB-layout files, own directories, the chunked generator."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lorap_dist.config import SyntheticConfig
from lorap_dist.graph.errors import DatasetError
from lorap_dist.graph.preprocess import build_csr
from lorap_dist.graph.sources import FEATURE_CHUNK, open_source, synthetic_source
from lorap_dist.graph.synthetic import generate_synthetic, symmetrize
from lorap_dist.testing.ogb_layout import write_ogb_dataset

CFG = SyntheticConfig(num_nodes=300, num_classes=40, num_features=6, seed=3)


@pytest.fixture(scope="module")
def graph():
    return generate_synthetic(CFG)


@pytest.fixture
def no_download(monkeypatch):
    """Fail the test if OGB's loader tries to download anything."""
    import ogb.nodeproppred.dataset as ogb_dataset

    def refuse(*args, **kwargs):
        raise AssertionError("OGB tried to download although the files are present")

    monkeypatch.setattr(ogb_dataset, "download_url", refuse)
    monkeypatch.setattr(ogb_dataset, "decide_download", refuse)


def edges_of(source) -> np.ndarray:
    return np.concatenate(list(source.edge_chunks()), axis=1)


@pytest.mark.parametrize("name", ["ogbn-arxiv", "ogbn-products"])
def test_ogb_loader_reads_the_generated_layout(tmp_path, graph, no_download, name):
    directory = write_ogb_dataset(tmp_path, name, graph)
    assert not any((directory / "processed").iterdir())
    for _attempt in range(2):  # 1st: raw csv files; 2nd: OGB's torch.load'ed cache
        source = open_source(name, root=tmp_path)
        assert (directory / "processed" / "data_processed").is_file()
        assert source.num_nodes == graph.num_nodes
        np.testing.assert_array_equal(source.feature_rows(0, source.num_nodes), graph.x.numpy())
        np.testing.assert_array_equal(source.labels, graph.y.numpy())
        np.testing.assert_array_equal(source.splits["valid"], graph.valid_idx.numpy())
        # Either way (arxiv lists both directions, products gets them from OGB) the
        # symmetrized CSR is the graph's.
        csr = build_csr(source)
        np.testing.assert_array_equal(csr.rows(), graph.edge_index[1].numpy())
        np.testing.assert_array_equal(csr.indices, graph.edge_index[0].numpy())
    assert source.num_classes == (40 if name == "ogbn-arxiv" else 47)
    assert source.undirected == (name == "ogbn-products")


def test_own_directory_in_ogb_layout(tmp_path, graph):
    directory = write_ogb_dataset(tmp_path, "ogbn-arxiv", graph)
    source = open_source(f"dir:{directory}")
    np.testing.assert_array_equal(edges_of(source), graph.edge_index.numpy())
    np.testing.assert_array_equal(source.labels, graph.y.numpy())
    assert source.num_classes == int(graph.y.max()) + 1
    assert "edge.csv.gz line 3" in source.where_edge(2)


def test_synthetic_source_matches_in_memory_generator(graph):
    source = synthetic_source(CFG)
    np.testing.assert_array_equal(source.feature_rows(0, CFG.num_nodes), graph.x.numpy())
    np.testing.assert_array_equal(source.labels, graph.y.numpy())
    csr = build_csr(source)
    np.testing.assert_array_equal(csr.indices, graph.edge_index[0].numpy())


def test_synthetic_feature_rows_agree_across_chunk_boundaries():
    cfg = SyntheticConfig(num_nodes=FEATURE_CHUNK + 500, num_features=2, avg_degree=1.0)
    source = synthetic_source(cfg)
    whole = source.feature_rows(0, cfg.num_nodes)
    middle = source.feature_rows(FEATURE_CHUNK - 7, FEATURE_CHUNK + 9)
    np.testing.assert_array_equal(middle, whole[FEATURE_CHUNK - 7 : FEATURE_CHUNK + 9])


@pytest.mark.parametrize("spill", [False, True])
def test_csr_is_symmetric_sorted_unique_without_self_loops(tmp_path, spill):
    cfg = SyntheticConfig(num_nodes=400, avg_degree=30.0, seed=1)  # hubs: many repeats
    source = synthetic_source(cfg)
    raw = torch.from_numpy(edges_of(source))
    csr = build_csr(source, workdir=tmp_path if spill else None)
    expected = symmetrize(raw, cfg.num_nodes)
    np.testing.assert_array_equal(csr.rows(), expected[1].numpy())
    np.testing.assert_array_equal(csr.indices, expected[0].numpy())
    assert csr.indices.dtype == np.int32


def test_csr_options_keep_direction_and_self_loops():
    cfg = SyntheticConfig(num_nodes=50, avg_degree=40.0, seed=2)
    source = synthetic_source(cfg)
    raw = edges_of(source)
    csr = build_csr(source, symmetrize=False, drop_self_loops=False)
    pairs = set(zip(raw[0].tolist(), raw[1].tolist(), strict=True))
    got = list(zip(csr.indices.tolist(), csr.rows().tolist(), strict=True))
    assert set(got) == pairs and len(got) == len(pairs)
    assert any(u == v for u, v in pairs)


def test_unknown_sources_are_refused(tmp_path):
    with pytest.raises(DatasetError, match="not known"):
        open_source("cora")
    with pytest.raises(DatasetError, match="not an OGB node-property dataset"):
        open_source("ogbn-nonexistent", root=tmp_path)
    with pytest.raises(DatasetError, match="heterogeneous"):
        open_source("ogbn-mag", root=tmp_path)
