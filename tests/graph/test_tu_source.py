"""TU datasets of many graphs, read by PyG's own TUDataset from tiny raw files written in
the real layout: what is read, the node features, and every malformed file named."""

from __future__ import annotations

import pytest
import torch

from lorap_dist.graph.errors import DatasetError
from lorap_dist.graph.tu_source import (
    DEGREE_ONE_HOT_LIMIT,
    check_tu_raw,
    load_tu_dataset,
    tu_graph_set,
)
from lorap_dist.testing.tu_layout import TUGraph, edge_count_targets, two_shapes, write_tu_dataset


def small(tmp_path, name="TOY", graphs=None):
    graphs = graphs or [
        TUGraph(3, [(0, 1), (1, 2)], label=1, node_labels=[0, 2, 1]),
        TUGraph(2, [(0, 1)], label=3, node_labels=[1, 1]),
        TUGraph(4, [(0, 1), (2, 3), (1, 2)], label=1, node_labels=[2, 0, 0, 1]),
    ]
    return write_tu_dataset(tmp_path, name, graphs)


def test_pyg_reads_the_written_graphs_as_they_were_written(tmp_path):
    small(tmp_path)
    graphs = tu_graph_set("TOY", tmp_path)
    assert len(graphs) == 3 and graphs.task == "classification"
    assert graphs.num_outputs == 2  # labels 1 and 3 become classes 0 and 1
    assert graphs.labels.tolist() == [0, 1, 0]
    first = graphs.dataset[0]
    assert first.num_nodes == 3 and first.x.dtype == torch.float32
    assert first.x.tolist() == [[1, 0, 0], [0, 0, 1], [0, 1, 0]]  # one-hot node labels
    pairs = sorted(map(tuple, first.edge_index.t().tolist()))
    assert pairs == [(0, 1), (1, 0), (1, 2), (2, 1)]
    third = graphs.dataset[2]
    assert third.num_nodes == 4 and third.edge_index.size(1) == 6


def test_graph_attributes_make_a_regression_dataset(tmp_path):
    write_tu_dataset(tmp_path, "EDGES", edge_count_targets(12))
    graphs = tu_graph_set("EDGES", tmp_path)
    assert graphs.task == "regression" and graphs.num_outputs == 1
    first = graphs.dataset[0]
    assert first.y.dtype == torch.float32
    assert first.y.item() == pytest.approx(first.edge_index.size(1) / 2 / 10)


def test_a_dataset_without_node_features_gets_one_hot_degrees_below_the_limit(tmp_path):
    graphs = two_shapes(8, node_labels=False)
    write_tu_dataset(tmp_path, "BARE", graphs)
    data = tu_graph_set("BARE", tmp_path)
    star = data.dataset[1]  # graph 1 is a star: one hub of degree n - 1
    largest = max(g.num_nodes - 1 for g in graphs if g.label == 1)
    assert data.num_features == largest + 1 < DEGREE_ONE_HOT_LIMIT
    assert star.x[0].argmax().item() == star.num_nodes - 1
    assert star.x[1:].argmax(-1).tolist() == [1] * (star.num_nodes - 1)


def test_standardized_degree_is_one_feature_with_zero_mean_and_unit_std(tmp_path):
    write_tu_dataset(tmp_path, "BARE", two_shapes(10, node_labels=False))
    data = tu_graph_set("BARE", tmp_path, transform="standardized_degree")
    x = torch.cat([g.x for g in data.dataset])
    assert data.num_features == 1
    assert x.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert x.std().item() == pytest.approx(1.0, abs=1e-5)


def test_a_processed_dataset_loads_from_pyg_cache_without_reading_the_raw_files(tmp_path):
    raw = small(tmp_path)
    tu_graph_set("TOY", tmp_path)
    (raw / "TOY_A.txt").write_text("not, an, edge\n")  # PyG checks that it exists, no more
    again = tu_graph_set("TOY", tmp_path)  # PyG's processed/data.pt
    assert len(again) == 3 and again.dataset[2].edge_index.size(1) == 6


def test_a_missing_raw_file_is_named_with_where_to_get_it(tmp_path):
    raw = small(tmp_path)
    (raw / "TOY_graph_indicator.txt").unlink()
    with pytest.raises(DatasetError, match="missing: TOY_graph_indicator.txt.*never downloads"):
        load_tu_dataset("TOY", tmp_path)


def test_a_dataset_without_labels_or_attributes_names_both(tmp_path):
    raw = small(tmp_path)
    (raw / "TOY_graph_labels.txt").unlink()
    with pytest.raises(DatasetError, match="TOY_graph_labels.txt \\(or TOY_graph_attributes"):
        check_tu_raw(tmp_path, "TOY")


@pytest.mark.parametrize(
    "file, lines, message",
    [
        ("A", ["1, 2", "2, 1", "2, x"], "TOY_A.txt line 3: '2, x' is not comma-separated integers"),
        ("A", ["1, 2", "2, 1, 3"], "TOY_A.txt line 2: .* has 3 value\\(s\\), expected 2"),
        ("A", ["1, 2", "2, 10"], "TOY_A.txt line 2: edge 2, 10 names a node outside 1..9"),
        ("A", ["1, 2", "3, 4"], "TOY_A.txt line 2: edge 3, 4 joins graph 1 to graph 2"),
        ("A", ["1, 2", "", "2, 1"], "TOY_A.txt line 2: '' is not comma-separated integers"),
        (
            "graph_indicator",
            ["1", "1", "1", "2", "2", "1", "3", "3", "3"],
            "TOY_graph_indicator.txt line 6: graph IDs must start at 1 and go up by 0 or 1",
        ),
        (
            "graph_indicator",
            ["1", "1", "1", "3", "3", "4", "4", "4", "4"],
            "TOY_graph_indicator.txt line 4",
        ),
        ("graph_labels", ["1", "3"], "TOY_graph_labels.txt has 2 lines, but .* has 3 graphs"),
        (
            "node_labels",
            ["0"] * 8,
            "TOY_node_labels.txt has 8 lines, but the dataset has 9 nodes",
        ),
    ],
)
def test_a_malformed_file_is_named_with_its_line(tmp_path, file, lines, message):
    raw = small(tmp_path)
    (raw / f"TOY_{file}.txt").write_text("".join(line + "\n" for line in lines))
    with pytest.raises(DatasetError, match=message):
        load_tu_dataset("TOY", tmp_path)


def test_trailing_blank_lines_are_harmless(tmp_path):
    raw = small(tmp_path)
    path = raw / "TOY_A.txt"
    path.write_text(path.read_text() + "\n\n")
    check_tu_raw(tmp_path, "TOY")


def test_config_reads_tu_sources_and_checks_folds():
    from lorap_dist.config import ConfigError, DataConfig

    data = DataConfig(source="tu:PROTEINS")
    assert (data.source, data.name, data.spec, data.graph_level) == (
        "tu",
        "PROTEINS",
        "tu:PROTEINS",
        True,
    )
    with pytest.raises(ConfigError, match="data.source='tu' needs data.name, e.g. 'PROTEINS'"):
        DataConfig(source="tu")
    with pytest.raises(ConfigError, match="data.fold=10 must be an integer in \\[0, data"):
        DataConfig(source="tu", name="X", fold=10)
    with pytest.raises(ConfigError, match="data.folds=2 must be an integer >= 3"):
        DataConfig(source="tu", name="X", folds=2, fold=0)
    with pytest.raises(ConfigError, match="'one_hot_degree' makes node features from degrees"):
        DataConfig(source="planetoid", name="Cora", transform="one_hot_degree")


def _load_after_barrier(args):
    root, barrier, log = args
    from torch_geometric.datasets import TUDataset

    original = TUDataset.process

    def counted(self):
        with open(log, "a") as handle:
            handle.write("processed\n")
        original(self)

    TUDataset.process = counted
    barrier.wait()
    return load_tu_dataset("RACE", root)._data.edge_index.tolist()


def test_processes_opening_a_fresh_dataset_at_once_process_it_once(tmp_path):
    """Four processes open one unprocessed dataset at the same moment (a benchmark's worker
    pool): one processes it, the others wait and read what it wrote, and none fails on a
    half-written file."""
    import multiprocessing

    write_tu_dataset(tmp_path, "RACE", two_shapes(40))
    context = multiprocessing.get_context("fork")
    barrier = context.Manager().Barrier(4)
    log = tmp_path / "process_calls.txt"
    with context.Pool(4) as pool:
        edges = pool.map(_load_after_barrier, [(tmp_path, barrier, log)] * 4)
    assert log.read_text().splitlines() == ["processed"]
    assert all(e == edges[0] for e in edges) and edges[0]
