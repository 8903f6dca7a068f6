"""Partitioners and relabelling on small community graphs."""

from __future__ import annotations

import numpy as np
import pytest

from lorap_dist.config import SyntheticConfig
from lorap_dist.graph.errors import DatasetError
from lorap_dist.graph.partition import (
    PARTITIONERS,
    StreamPartitioner,
    _place_under_quota,
    get_partitioner,
    relabel,
    relabel_csr,
)
from lorap_dist.graph.preprocess import build_csr, edge_cut
from lorap_dist.graph.sources import synthetic_source

P = 4


@pytest.fixture(scope="module")
def community():
    """4 planted communities, 95% of edges inside one; half the nodes are training seeds."""
    cfg = SyntheticConfig(num_nodes=6000, num_classes=P, homophily=0.95, avg_degree=12, seed=5)
    source = synthetic_source(cfg)
    train = np.zeros(cfg.num_nodes, dtype=bool)
    train[source.splits["train"]] = True
    return build_csr(source), train


@pytest.mark.parametrize("name", sorted(PARTITIONERS))
def test_every_node_in_exactly_one_part(community, name):
    csr, train = community
    parts = get_partitioner(name).partition(csr, P, train)
    assert parts.shape == (csr.num_nodes,) and parts.dtype == np.int32
    assert parts.min() == 0 and parts.max() == P - 1
    relabeling = relabel(parts, P)
    owned = np.concatenate([np.arange(a, b) for a, b in relabeling.book])
    np.testing.assert_array_equal(owned, np.arange(csr.num_nodes))  # disjoint, complete


@pytest.mark.parametrize("name", sorted(PARTITIONERS))
def test_nodes_and_training_seeds_are_balanced(community, name):
    csr, train = community
    parts = get_partitioner(name).partition(csr, P, train)
    nodes, seeds = np.bincount(parts, minlength=P), np.bincount(parts[train], minlength=P)
    assert nodes.max() <= 1.05 * csr.num_nodes / P
    assert seeds.max() <= 1.05 * train.sum() / P


def test_metis_cuts_far_fewer_edges_than_random(community):
    csr, train = community
    metis = edge_cut(csr, get_partitioner("metis").partition(csr, P, train))
    random = edge_cut(csr, get_partitioner("random").partition(csr, P, train))
    assert random > 0.7  # about 1 - 1/P
    assert metis < 0.25 * random


def test_streaming_cuts_fewer_edges_than_random_and_restreaming_helps(community):
    csr, train = community
    one = edge_cut(csr, StreamPartitioner(chunk_nodes=512, passes=1).partition(csr, P, train))
    three = edge_cut(csr, StreamPartitioner(chunk_nodes=512, passes=3).partition(csr, P, train))
    random = edge_cut(csr, get_partitioner("random").partition(csr, P, train))
    assert three < one < random
    assert three < 0.5 * random


def test_place_under_quota_respects_quota_and_preference():
    score = np.array([[5.0, 0.0], [4.0, 0.0], [3.0, 0.0], [0.0, 1.0]])
    placed = _place_under_quota(score, quota=2)
    np.testing.assert_array_equal(placed, [0, 0, 1, 1])  # row 2 loses column 0 to stronger rows


def test_relabelled_csr_maps_every_edge(community):
    csr, train = community
    parts = get_partitioner("stream").partition(csr, P, train)
    relabeling = relabel(parts, P)
    out = np.empty(csr.num_edges, dtype=csr.indices.dtype)
    indptr = relabel_csr(csr, relabeling, out, block_edges=1000)  # many blocks
    new_rows = np.repeat(np.arange(csr.num_nodes), np.diff(indptr))
    m = relabeling.node_map
    expected = sorted(zip(m[csr.indices].tolist(), m[csr.rows()].tolist(), strict=True))
    assert sorted(zip(out.tolist(), new_rows.tolist(), strict=True)) == expected
    # Rows stay sorted, every part's IDs are its own, and the map inverts.
    assert all(np.all(np.diff(out[indptr[v] : indptr[v + 1]]) > 0) for v in range(0, 6000, 97))
    np.testing.assert_array_equal(
        parts[relabeling.original],
        np.repeat(np.arange(P), np.diff(np.r_[0, relabeling.book[:, 1]])),
    )
    np.testing.assert_array_equal(relabeling.original[m], np.arange(csr.num_nodes))


def test_more_parts_than_nodes_is_refused(community):
    csr, train = community
    with pytest.raises(DatasetError, match="--parts 6001 is not possible"):
        get_partitioner("random").partition(csr, csr.num_nodes + 1, train)


def test_unknown_partitioner_is_refused():
    with pytest.raises(DatasetError, match="not known"):
        get_partitioner("kahip")
